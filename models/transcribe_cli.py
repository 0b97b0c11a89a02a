"""``kvgraph transcribe``: openai-whisper's transcription on a kvgraph backend.

    kvgraph transcribe AUDIO [AUDIO ...] [--model tiny.en|base|PATH]
        [--output-format txt|vtt|srt|tsv|json|all] [--output-dir DIR]
        [--language LANG] [--task transcribe|translate] [--temperature T]
        [--best_of N] [--beam_size N] [--batch-size N] [--no-kv-cache] [--verbose] ...

Decoding options mirror openai-whisper's ``whisper`` command (same flag names,
``--snake_case`` and ``--kebab-case`` both accepted); decoding is greedy unless
``--beam_size`` is given (openai's CLI defaults to a beam of 5).  Word-level
timestamps (``--word_timestamps True``) and the writer's word options
(``--highlight_words``, ``--max_line_width``, ``--max_line_count``,
``--max_words_per_line``) are openai's, with its checks: a word option without
``--word_timestamps True`` is a usage error, and the two combinations openai
warns about warn here too.

Several files are decoded at once (``--batch-size``, default up to 8 when several files
are given): each file's transcription is openai-whisper's, its decoder steps batched with
the other files' into one MAX call (``models.batching``); results equal one-at-a-time
transcription. A progress bar across files shows files done, audio seconds and the
realtime factor.

Each audio file is processed independently: a failure prints one line
``kvgraph: error: <file>: <reason>`` on stderr and the remaining files are still
transcribed.  Output files are written to a temporary directory inside the
output directory and moved into place with ``os.replace``, so an error never
leaves a partial output file behind.  Exit status: 0 if every file succeeded,
1 if any failed (or the model could not be loaded), 2 for usage errors.

Importing this module is cheap (no torch / whisper / MAX); the heavy imports
happen once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence

PROG = "kvgraph transcribe"
OUTPUT_FORMATS = ("txt", "vtt", "srt", "tsv", "json", "all")

# Errors caused by the user's input: reported as one line, no traceback.
# (models.audio.AudioError and models.ct2.CT2FormatError are ValueErrors;
# models.weight_packages.WeightsNotInstalledError is an ImportError.)
USER_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, PermissionError)


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
#: openai's writer options (``get_writer(...)(result, path, **options)``); each needs word timestamps
WORD_OPTIONS = ("highlight_words", "max_line_count", "max_line_width", "max_words_per_line")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Transcribe audio files with Whisper (openai-whisper decoding, kvgraph backend).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
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

    add(
        "--task",
        default="transcribe",
        choices=["transcribe", "translate"],
        help="X->X speech recognition ('transcribe') or X->English translation ('translate')",
    )
    add("--language", default=None, help="language spoken in the audio (code or name); detected if not given")

    add("--temperature", type=float, default=0.0, help="temperature to use for sampling")
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

    add(
        "--temperature_increment_on_fallback",
        "--temperature-increment-on-fallback",
        dest="temperature_increment_on_fallback",
        type=optional_float,
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
    return p


# --------------------------------------------------------------------------


def _default_load_backend(model_name: str, kv_cache: bool):
    from models.whisper import defer_numba, load_backend  # lazy: imports MAX

    defer_numba()  # this process is ours: numba (word timestamps only) loads on first use
    return load_backend(model_name, kv_cache=kv_cache)


def _one_line(exc: BaseException, path: str | None = None) -> str:
    msg = " ".join(str(exc).split())
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)) and exc.strerror:
        msg = exc.strerror  # the file name is printed separately
    if path is not None:
        for prefix in (f"{path}: ", f"{os.path.normpath(path)}: "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
                break
    return msg or type(exc).__name__


def _error(msg: str) -> None:
    print(f"kvgraph: error: {msg}", file=sys.stderr, flush=True)


def write_outputs(
    result: dict, audio_path: str, output_format: str, output_dir: str, writer_args: dict | None = None
) -> list[str]:
    """Writes ``result`` with openai-whisper's writers, atomically; ``writer_args`` are
    openai's word options (:data:`WORD_OPTIONS`, all None/False by default).

    Everything is first written into a fresh temporary directory inside
    ``output_dir`` (same filesystem), then each file is moved into place with
    ``os.replace``; on any error the temporary directory is removed and no
    output of this audio file is touched.  Returns the written paths.
    """
    from whisper.utils import get_writer

    tmp = tempfile.mkdtemp(prefix=".kvgraph-transcribe-", dir=output_dir)
    try:
        args = {k: None for k in WORD_OPTIONS}
        args.update(writer_args or {})
        get_writer(output_format, tmp)(result, audio_path, **args)
        written = []
        for name in sorted(os.listdir(tmp)):
            dest = os.path.join(output_dir, name)
            os.replace(os.path.join(tmp, name), dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def render(result: dict, output_format: str, writer_args: dict | None = None) -> str:
    """``result`` in one of openai-whisper's writer formats (``txt``, ``vtt``, ``srt``, ``tsv``,
    ``json``) as a string: the text :func:`write_outputs` writes to a file (``kvgraph serve``
    answers with it). ``writer_args`` as there."""
    import io

    from whisper.utils import get_writer

    if output_format not in OUTPUT_FORMATS or output_format == "all":
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS[:-1]}, got {output_format!r}")
    args = {k: None for k in WORD_OPTIONS}
    args.update(writer_args or {})
    buf = io.StringIO()
    get_writer(output_format, ".").write_result(result, buf, **args)
    return buf.getvalue()


def _normalize_language(parser: argparse.ArgumentParser, language: str | None) -> str | None:
    if language is None or language == "None":
        return None
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    parser.error(f"argument --language: unknown language {language!r}")
    return None  # unreachable


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """``parser.error(message)`` (usage and message on stderr) as an exit status: 2."""
    try:
        parser.error(message)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return 2  # unreachable


def _format_timings(load_s: float, compile_s: float | None, t: dict, wall_s: float) -> str:
    decode_s = t["prefill_s"] + t["step_s"] + t["reorder_s"]
    tps = t["tokens_decoded"] / decode_s if decode_s > 0 else 0.0
    load = f"load {load_s:.2f} s"
    if compile_s is not None:
        load += f" (compile {compile_s:.2f} s)"
    return (
        f"kvgraph: timings: {load}, "
        f"encode {t['encode_s']:.2f} s ({t['encode_calls']} calls), "
        f"decode {decode_s:.2f} s (prefill {t['prefill_calls']} calls {t['prefill_s']:.2f} s, "
        f"step {t['step_calls']} calls {t['step_s']:.2f} s), "
        f"{t['tokens_decoded']} tokens, {tps:.1f} tokens/s, "
        f"transcribe total {t['total_s']:.2f} s, wall {wall_s:.2f} s"
    )


#: files decoded at once when several are given and --batch-size is not
DEFAULT_BATCH = 8


def _batchable(backend) -> bool:
    """Can ``backend`` run rows at different positions in one step (``models.batching``)?"""
    dec = getattr(backend, "decoder", None)
    return getattr(dec, "kv_cache", False) and getattr(dec, "capacity", None) is not None


class _Progress:
    """Progress across files: files done, audio seconds, realtime factor (tqdm)."""

    def __init__(self, paths: Sequence[str], enabled: bool):
        from models.batching import audio_seconds

        self.seconds = [audio_seconds(p) or 0.0 for p in paths]
        self.t0 = time.perf_counter()
        self.audio_done = 0.0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=len(paths), unit="file", file=sys.stderr, dynamic_ncols=True)

    def done(self, i: int, ok: bool) -> None:
        if ok:
            self.audio_done += self.seconds[i]
        if self.bar is not None:
            wall = time.perf_counter() - self.t0
            self.bar.set_postfix_str(
                f"audio {self.audio_done:.0f} s, {self.audio_done / wall if wall > 0 else 0:.1f}x realtime",
                refresh=False,
            )
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _transcribe_batched(args, backend, batch_size, decode_options, writer_args, progress, totals) -> bool:
    """Every file through one :class:`models.batching.BatchedTranscriber`; outputs written
    (atomically) as files finish, texts printed in the order given. True if any failed."""
    import concurrent.futures

    from models.batching import BatchedTranscriber

    options = dict(decode_options, verbose=None)  # one bar across files, not one per file
    bar = _Progress(args.audio, progress)
    failed = False
    # Files finish in any order; their outputs are written as they finish, but the
    # lines on stdout/stderr (text or error) come out in the order the files were given,
    # as in the one-at-a-time path.
    lines: dict[int, tuple[bool, str]] = {}  # index -> (is_error, line)
    next_print = 0
    engine = BatchedTranscriber(backend, batch_size=batch_size, **options)
    try:
        futures = {engine.submit(path): i for i, path in enumerate(args.audio)}
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            path = args.audio[i]
            try:
                result = fut.result()
                write_outputs(result, path, args.output_format, args.output_dir, writer_args)
            except KeyboardInterrupt:
                raise
            except USER_ERRORS as e:
                failed, lines[i] = True, (True, f"{path}: {_one_line(e, path)}")
            except Exception as e:  # noqa: BLE001 - internal failure: keep the traceback
                traceback.print_exception(e)
                failed, lines[i] = True, (True, f"{path}: {type(e).__name__}: {_one_line(e, path)}")
            else:
                lines[i] = (False, f"{path}: {result['text'].strip()}")
                for k, v in result.get("timings", {}).items():
                    totals[k] = totals.get(k, 0) + v
            bar.done(i, not lines[i][0])
            while next_print in lines:
                is_error, line = lines.pop(next_print)
                if is_error:
                    _error(line)
                else:
                    print(line, flush=True)
                next_print += 1
    except KeyboardInterrupt:
        engine.close(wait=False)
        bar.close()
        _error("interrupted")
        raise SystemExit(130) from None
    engine.close()
    bar.close()
    return failed


def main(
    argv: Sequence[str] | None = None,
    load_backend: Callable[..., object] | None = None,
) -> int:
    """Entry point of ``kvgraph transcribe``; ``argv`` excludes the subcommand.

    ``load_backend(model_name, kv_cache: bool) -> WhisperBackend`` defaults to
    ``models.whisper.load_backend``.  If the backend has a float attribute
    ``compile_s`` it is reported by ``--verbose``.
    """
    wall0 = time.perf_counter()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        language = _normalize_language(parser, args.language)
    except SystemExit as e:  # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)

    if not args.word_timestamps:  # openai's checks, in its order
        for option in WORD_OPTIONS:
            if getattr(args, option):
                return _usage_error(parser, f"--{option} requires --word_timestamps True")
    if args.max_line_count and not args.max_line_width:
        warnings.warn("--max_line_count has no effect without --max_line_width", stacklevel=2)
    if args.max_words_per_line and args.max_line_width:
        warnings.warn("--max_words_per_line has no effect with --max_line_width", stacklevel=2)
    writer_args = {k: getattr(args, k) for k in WORD_OPTIONS}

    model_name: str = args.model
    if model_name.endswith(".en") and language not in (None, "en"):
        print(
            f"kvgraph: warning: {model_name} is an English-only model; using English "
            f"instead of {args.language!r}",
            file=sys.stderr,
        )
        language = "en"

    temperature = args.temperature
    if args.temperature_increment_on_fallback is not None:
        import numpy as np

        temperatures = tuple(
            float(t) for t in np.arange(temperature, 1.0 + 1e-6, args.temperature_increment_on_fallback)
        ) or (temperature,)
    else:
        temperatures = (temperature,)

    progress = (args.verbose or sys.stderr.isatty()) and not args.no_progress
    # options passed through to whisper.transcribe under their own names
    decode_options = {k: getattr(args, k) for k in DECODE_OPTIONS}
    decode_options.update(
        temperature=temperatures, language=language, verbose=False if progress else None
    )  # False = tqdm progress bar

    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as e:
        _error(f"{args.output_dir}: cannot create output directory: {_one_line(e)}")
        return 1

    load_backend = load_backend or _default_load_backend
    if progress:
        print(
            f"{PROG}: loading {model_name} (its MAX programs come from the program store; "
            "the first run compiles them: minutes)",
            file=sys.stderr,
            flush=True,
        )
        import logging  # one line per compiled program, as it happens

        kv_log = logging.getLogger("kvgraph")
        if not any(getattr(h, "kvgraph_cli", False) for h in kv_log.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("kvgraph: %(message)s"))
            handler.kvgraph_cli = True
            kv_log.addHandler(handler)
        kv_log.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        backend = load_backend(model_name, kv_cache=not args.no_kv_cache)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except (*USER_ERRORS, ImportError) as e:
        _error(f"model {model_name!r}: {_one_line(e)}")
        return 1
    except Exception as e:  # noqa: BLE001 - internal failure: keep the traceback
        traceback.print_exc()
        _error(f"model {model_name!r}: {type(e).__name__}: {_one_line(e)}")
        return 1
    load_s = time.perf_counter() - t0
    compile_s = getattr(backend, "compile_s", None)

    from models.whisper_decode import DecodeTimings, transcribe

    totals = DecodeTimings().as_dict()
    failed = False
    multiple = len(args.audio) > 1
    batch_size = args.batch_size if args.batch_size is not None else min(DEFAULT_BATCH, len(args.audio))
    if batch_size < 1:
        return _usage_error(parser, f"--batch-size must be >= 1, got {batch_size}")
    if batch_size > 1 and multiple:
        if _batchable(backend):
            failed = _transcribe_batched(
                args, backend, batch_size, decode_options, writer_args, progress, totals
            )
            if args.verbose:
                print(
                    _format_timings(load_s, compile_s, totals, time.perf_counter() - wall0),
                    file=sys.stderr,
                    flush=True,
                )
            return 1 if failed else 0
        if args.batch_size is not None:
            print(
                f"kvgraph: warning: --batch-size {batch_size}: this backend cannot batch "
                "(it needs the KV cache); transcribing one file at a time",
                file=sys.stderr,
            )
    for path in args.audio:
        try:
            result = transcribe(backend, path, **dict(decode_options))
            write_outputs(result, path, args.output_format, args.output_dir, writer_args)
        except KeyboardInterrupt:
            _error("interrupted")
            return 130
        except USER_ERRORS as e:
            _error(f"{path}: {_one_line(e, path)}")
            failed = True
            continue
        except Exception as e:  # noqa: BLE001 - internal failure: keep the traceback
            traceback.print_exc()
            _error(f"{path}: {type(e).__name__}: {_one_line(e, path)}")
            failed = True
            continue
        text = result["text"].strip()
        print(f"{path}: {text}" if multiple else text, flush=True)
        for k, v in result.get("timings", {}).items():
            totals[k] = totals.get(k, 0) + v

    if args.verbose:
        print(
            _format_timings(load_s, compile_s, totals, time.perf_counter() - wall0),
            file=sys.stderr,
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
