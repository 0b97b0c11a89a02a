"""``kvgraph transcribe``'s command line: its options (openai-whisper's ``whisper`` command's,
``--snake_case`` and ``--kebab-case`` both accepted) and their checks. Cheap to import."""

from __future__ import annotations

import argparse
import math

from models.whisper.model.compute import COMPUTE_TYPES
from models.whisper.transcription.outputs import OUTPUT_FORMATS, WORD_OPTIONS

PROG = "kvgraph transcribe"


# --------------------------------------------------------------------------
# argparse helpers (same semantics as whisper.utils, without importing torch)


def str2bool(string: str) -> bool:
    values = {"True": True, "False": False, "true": True, "false": False}
    if string in values:
        return values[string]
    raise argparse.ArgumentTypeError(f"expected True or False, got {string!r}")


def optional_int(string: str) -> int | None:
    return None if string == "None" else int(string)


def optional_float(string: str) -> float | None:
    return None if string == "None" else float(string)


def temperature(string: str) -> float:
    """A sampling temperature: a finite number >= 0 (0: greedy, or beam search)."""
    t = float(string)
    if not (math.isfinite(t) and t >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {string!r}")
    return t


def optional_increment(string: str) -> float | None:
    """The fallback's temperature step: None (no fallback) or a finite number > 0."""
    step = optional_float(string)
    if step is not None and not (math.isfinite(step) and step > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0 or None, got {string!r}")
    return step


DECODE_OPTIONS = (
    "task",
    "best_of",
    "beam_size",
    "patience",
    "length_penalty",
    "suppress_tokens",
    "initial_prompt",
    "carry_initial_prompt",
    "condition_on_previous_text",
    "without_timestamps",
    "compression_ratio_threshold",
    "logprob_threshold",
    "no_speech_threshold",
    "clip_timestamps",
    "word_timestamps",
    "prepend_punctuations",
    "append_punctuations",
    "hallucination_silence_threshold",
)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except a ``None`` one (an option that is off unless given)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """``kvgraph transcribe``'s options: openai-whisper's ``whisper`` command's, both spellings."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Transcribe audio files with Whisper on MAX (kvgraph; openai-whisper's options and results).",
        formatter_class=_DefaultsHelp,
    )
    _add_files(p)
    _add_decoding(p)
    _add_fallback(p)
    _add_words(p)
    _add_vad(p)
    return p


def add_compute_type(add) -> None:
    """``--compute_type`` (``transcribe``'s and ``serve``'s), through ``add`` (a parser's or
    a group's ``add_argument``)."""
    add(
        "--compute-type",
        "--compute_type",
        dest="compute_type",
        default="float32",
        choices=COMPUTE_TYPES,
        help="arithmetic of the encoder and decoder (faster-whisper's option): float32 (default, "
        "exact: openai-whisper's float32 output); bfloat16: the encoder's products on bfloat16 "
        "operands, float32 sums (AMX tiles on Intel Xeon 4th gen and later, AVX512-BF16 on AMD Zen 4 "
        "and later, else emulated, "
        "slower); int8vocab: the vocabulary projection on int8 weights, its top logits "
        "recomputed in float32 (greedy tokens float32's); int8vocab_bfloat16: both; int8 "
        "(= int8_float32): every decoder linear on int8 weights; int8_bfloat16: int8 and "
        "bfloat16. Accuracy and speed: docs/compute_types.md",
    )


def _add_files(p: argparse.ArgumentParser) -> None:
    """The audio in, the outputs out, the model, progress and batching."""
    add = p.add_argument
    add("audio", nargs="+", help="audio file(s) to transcribe (WAV, FLAC, OGG, ...)")
    add("--model", default="tiny.en", help="'tiny.en', 'base', or a path to a checkpoint")
    add(
        "--output-dir",
        "--output_dir",
        "-o",
        dest="output_dir",
        default=".",
        help="directory to save the outputs",
    )
    add(
        "--output-format",
        "--output_format",
        "-f",
        dest="output_format",
        default="all",
        choices=OUTPUT_FORMATS,
        help="format of the output file(s)",
    )
    add(
        "--verbose",
        action="store_true",
        help="show a progress bar and print timings (load, compile, encode, decode, tokens/s)",
    )
    add(
        "--no-progress",
        "--no_progress",
        dest="no_progress",
        action="store_true",
        help="no progress bar (shown with --verbose or when stderr is a terminal)",
    )
    add(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=None,
        help="files decoded at once, their decoder steps batched into one call (continuous "
        "batching; each file's result is a sequential transcription's). Default: up to 8 when "
        "several files are given, 1 (one file at a time) otherwise",
    )
    add(
        "--no-kv-cache",
        "--no_kv_cache",
        dest="no_kv_cache",
        action="store_true",
        help="use the backend without a KV cache (recompute the prefix every step)",
    )
    add_compute_type(add)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    """openai-whisper's decoding options (its ``whisper`` command's names)."""
    add = p.add_argument_group("decoding (openai-whisper's options)").add_argument
    add(
        "--task",
        default="transcribe",
        choices=["transcribe", "translate"],
        help="X->X speech recognition ('transcribe') or X->English translation ('translate')",
    )
    add("--language", default=None, help="language spoken in the audio (code or name); detected if not given")

    add("--temperature", type=temperature, default=0.0, help="temperature to use for sampling")
    add(
        "--best_of",
        "--best-of",
        dest="best_of",
        type=optional_int,
        default=5,
        help="number of candidates when sampling with non-zero temperature",
    )
    add(
        "--beam_size",
        "--beam-size",
        dest="beam_size",
        type=optional_int,
        default=None,
        help="number of beams in beam search, only when temperature is zero (default: greedy)",
    )
    add("--patience", type=float, default=None, help="optional patience value for beam decoding")
    add(
        "--length_penalty",
        "--length-penalty",
        dest="length_penalty",
        type=float,
        default=None,
        help="optional token length penalty coefficient (alpha); simple length normalization by default",
    )

    add(
        "--suppress_tokens",
        "--suppress-tokens",
        dest="suppress_tokens",
        type=str,
        default="-1",
        help="comma-separated token ids to suppress; '-1' suppresses most special characters",
    )
    add(
        "--initial_prompt",
        "--initial-prompt",
        dest="initial_prompt",
        type=str,
        default=None,
        help="optional text to provide as a prompt for the first window",
    )
    add(
        "--carry_initial_prompt",
        "--carry-initial-prompt",
        dest="carry_initial_prompt",
        type=str2bool,
        default=False,
        help="prepend initial_prompt to every window's prompt",
    )
    add(
        "--condition_on_previous_text",
        "--condition-on-previous-text",
        dest="condition_on_previous_text",
        type=str2bool,
        default=True,
        help="provide the previous output as a prompt for the next window",
    )
    add(
        "--without_timestamps",
        "--without-timestamps",
        dest="without_timestamps",
        type=str2bool,
        default=False,
        help="sample text tokens only (one segment per window)",
    )


def _add_fallback(p: argparse.ArgumentParser) -> None:
    """Temperature fallback and its thresholds (openai-whisper's)."""
    add = p.add_argument_group("temperature fallback").add_argument
    add(
        "--temperature_increment_on_fallback",
        "--temperature-increment-on-fallback",
        dest="temperature_increment_on_fallback",
        type=optional_increment,
        default=0.2,
        help="temperature increase when falling back after failing the thresholds below",
    )
    add(
        "--compression_ratio_threshold",
        "--compression-ratio-threshold",
        dest="compression_ratio_threshold",
        type=optional_float,
        default=2.4,
        help="treat the decoding as failed if the gzip compression ratio is higher",
    )
    add(
        "--logprob_threshold",
        "--logprob-threshold",
        dest="logprob_threshold",
        type=optional_float,
        default=-1.0,
        help="treat the decoding as failed if the average log probability is lower",
    )
    add(
        "--no_speech_threshold",
        "--no-speech-threshold",
        dest="no_speech_threshold",
        type=optional_float,
        default=0.6,
        help="consider a window silent if P(<|nospeech|>) is higher and the decoding failed logprob_threshold",
    )
    add(
        "--clip_timestamps",
        "--clip-timestamps",
        dest="clip_timestamps",
        type=str,
        default="0",
        help="comma-separated start,end,start,end,... seconds of clips to process",
    )


def _add_words(p: argparse.ArgumentParser) -> None:
    """Word timestamps and the writers' word options (openai-whisper's)."""
    add = p.add_argument_group("word timestamps").add_argument
    add(
        "--word_timestamps",
        "--word-timestamps",
        dest="word_timestamps",
        type=str2bool,
        default=False,
        help="(experimental) extract word-level timestamps and refine the results based on them",
    )
    add(
        "--prepend_punctuations",
        "--prepend-punctuations",
        dest="prepend_punctuations",
        type=str,
        default="\"'“¿([{-",
        help="if word_timestamps is True, merge these punctuation symbols with the next word",
    )
    add(
        "--append_punctuations",
        "--append-punctuations",
        dest="append_punctuations",
        type=str,
        default="\"'.。,，!！?？:：”)]}、",
        help="if word_timestamps is True, merge these punctuation symbols with the previous word",
    )
    add(
        "--highlight_words",
        "--highlight-words",
        dest="highlight_words",
        type=str2bool,
        default=False,
        help="(requires --word_timestamps True) underline each word as it is spoken in srt and vtt",
    )
    add(
        "--max_line_width",
        "--max-line-width",
        dest="max_line_width",
        type=optional_int,
        default=None,
        help="(requires --word_timestamps True) the maximum number of characters in a line before "
        "breaking the line",
    )
    add(
        "--max_line_count",
        "--max-line-count",
        dest="max_line_count",
        type=optional_int,
        default=None,
        help="(requires --word_timestamps True) the maximum number of lines in a segment",
    )
    add(
        "--max_words_per_line",
        "--max-words-per-line",
        dest="max_words_per_line",
        type=optional_int,
        default=None,
        help="(requires --word_timestamps True, no effect with --max_line_width) "
        "the maximum number of words in a segment",
    )
    add(
        "--hallucination_silence_threshold",
        "--hallucination-silence-threshold",
        dest="hallucination_silence_threshold",
        type=optional_float,
        default=None,
        help="(requires --word_timestamps True) skip silent periods longer than this threshold (in seconds) "
        "when a possible hallucination is detected",
    )


#: ``--vad_*`` option -> (VadOptions field, type, faster-whisper's default for the help)
VAD_PARAMETERS = {
    "threshold": (float, "0.5", "speech probability at or above which a 32 ms window is speech"),
    "neg_threshold": (float, "threshold - 0.15", "probability below which speech ends"),
    "min_speech_duration_ms": (int, "0", "drop speech regions shorter than this"),
    "max_speech_duration_s": (float, "inf", "split speech regions longer than this"),
    "min_silence_duration_ms": (int, "2000", "silence that ends a speech region"),
    "speech_pad_ms": (int, "400", "audio kept on each side of a speech region"),
}


def _add_vad(p: argparse.ArgumentParser) -> None:
    """Voice activity detection (faster-whisper's ``vad_filter`` and ``vad_parameters``)."""
    g = p.add_argument_group(
        "voice activity detection",
        "transcribe only the speech Silero VAD finds (times stay the recording's); needs the 'vad' extra",
    )
    g.add_argument(
        "--vad",
        "--vad_filter",
        "--vad-filter",
        dest="vad_filter",
        nargs="?",
        const=True,
        default=False,
        type=str2bool,
        help="skip silence and noise with Silero VAD (--vad, or --vad_filter True)",
    )
    for name, (kind, default, text) in VAD_PARAMETERS.items():
        g.add_argument(
            f"--vad_{name}",
            f"--vad-{name.replace('_', '-')}",
            dest=f"vad_{name}",
            type=kind,
            default=None,
            help=f"{text} (default: {default}, faster-whisper's)",
        )
    g.add_argument(
        "--vad_model",
        "--vad-model",
        dest="vad_model",
        default=None,
        help="a Silero VAD ONNX file (default: the one the silero-vad package installs)",
    )


def vad_options(args) -> dict:
    """``transcribe``'s VAD keywords from the parsed options ({} when --vad is off; a
    ``--vad_*`` option without --vad is a usage error the caller reports)."""
    params = {k: getattr(args, f"vad_{k}") for k in VAD_PARAMETERS if getattr(args, f"vad_{k}") is not None}
    if not args.vad_filter:
        return {}
    out: dict = {"vad_filter": True}
    if params:
        out["vad_parameters"] = params
    if args.vad_model is not None:
        out["vad_model"] = args.vad_model
    return out


def check_vad_options(args) -> str | None:
    """A usage error's message when a ``--vad_*`` option is given without ``--vad``."""
    if args.vad_filter:
        return None
    for k in (*VAD_PARAMETERS, "model"):
        if getattr(args, f"vad_{k}") is not None:
            return f"--vad_{k} requires --vad"
    return None


def normalize_language(parser: argparse.ArgumentParser, language: str | None) -> str | None:
    if language is None or language == "None":
        return None
    from models.whisper.decoding.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    parser.error(f"argument --language: unknown language {language!r}")
    return None  # unreachable


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """``parser.error(message)`` (usage and message on stderr) as an exit status: 2."""
    try:
        parser.error(message)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return 2  # unreachable


def check_word_options(args) -> str | None:
    """openai's checks of the writers' word options, in its order: a usage error's message, or
    None (after warning about the two combinations openai warns about)."""
    import warnings

    if not args.word_timestamps:
        for option in WORD_OPTIONS:
            if getattr(args, option):
                return f"--{option} requires --word_timestamps True"
    if args.max_line_count and not args.max_line_width:
        warnings.warn("--max_line_count has no effect without --max_line_width", stacklevel=3)
    if args.max_words_per_line and args.max_line_width:
        warnings.warn("--max_words_per_line has no effect with --max_line_width", stacklevel=3)
    return None


def temperatures(args) -> tuple[float, ...]:
    """``--temperature`` and its fallback schedule (openai's: up to 1.0 by the increment)."""
    if args.temperature_increment_on_fallback is None:
        return (args.temperature,)
    import numpy as np

    steps = np.arange(args.temperature, 1.0 + 1e-6, args.temperature_increment_on_fallback)
    return tuple(float(t) for t in steps) or (args.temperature,)


def decoding_options(args, language: str | None, progress: bool) -> dict:
    """``transcribe``'s keyword arguments from the parsed options. An English-only model
    given another language decodes English (with a warning, as openai-whisper)."""
    import sys

    if args.model.endswith(".en") and language not in (None, "en"):
        print(
            f"kvgraph: warning: {args.model} is an English-only model; using English "
            f"instead of {args.language!r}",
            file=sys.stderr,
        )
        language = "en"
    options = {k: getattr(args, k) for k in DECODE_OPTIONS}  # whisper.transcribe's own names
    # verbose=False: openai's tqdm progress bar
    options.update(temperature=temperatures(args), language=language, verbose=False if progress else None)
    options.update(vad_options(args))
    return options
