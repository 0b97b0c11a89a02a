"""``kvgraph transcribe``: Whisper transcription on MAX with kvgraph's own decode loop.

    kvgraph transcribe AUDIO [AUDIO ...] [--model tiny.en|base|PATH]
        [--output-format txt|vtt|srt|tsv|json|all] [--output-dir DIR]
        [--language LANG] [--task transcribe|translate] [--temperature T]
        [--best_of N] [--beam_size N] [--batch-size N] [--no-kv-cache]
        [--compute_type float32|bfloat16] [--verbose] ...

Decoding options mirror openai-whisper's ``whisper`` command (same flag names,
``--snake_case`` and ``--kebab-case`` both accepted); decoding is greedy unless
``--beam_size`` is given (openai's CLI defaults to a beam of 5).  Word-level
timestamps (``--word_timestamps True``) and the writer's word options
(``--highlight_words``, ``--max_line_width``, ``--max_line_count``,
``--max_words_per_line``) are openai's, with its checks: a word option without
``--word_timestamps True`` is a usage error, and the two combinations openai
warns about warn here too.

Several files are decoded at once (``--batch-size``, default up to 8 when several files
are given): each file's transcription is the one-file result, its decoder steps batched with
the other files' into one MAX call (:mod:`models.whisper.engine`); results equal one-at-a-time
transcription. A progress bar across files shows files done, audio seconds and the
realtime factor.

Each audio file is processed independently: a failure prints one line
``kvgraph: error: <file>: <reason>`` on stderr and the remaining files are still
transcribed.  Output files are written to a temporary directory inside the
output directory and moved into place with ``os.replace``, so an error never
leaves a partial output file behind.  Exit status: 0 if every file succeeded,
1 if any failed (or the model could not be loaded), 2 for usage errors.

Importing this module is cheap (no MAX); MAX is imported once the arguments are parsed. torch
and openai-whisper are never imported (a ``.pt`` checkpoint aside).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from models.whisper.apps.cli.options import (
    PROG,
    build_parser,
    check_vad_options,
    check_word_options,
    decoding_options,
    normalize_language,
    usage_error,
)
from models.whisper.apps.errors import USER_ERRORS, error, one_line
from models.whisper.engine.protocol import DEFAULT_BATCH
from models.whisper.transcription.outputs import WORD_OPTIONS, write_outputs


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
        language = normalize_language(parser, args.language)
    except SystemExit as e:  # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    problem = check_word_options(args) or check_vad_options(args)
    if problem:
        return usage_error(parser, problem)
    progress = (args.verbose or sys.stderr.isatty()) and not args.no_progress
    decode_options = decoding_options(args, language, progress)
    writer_args = {k: getattr(args, k) for k in WORD_OPTIONS}
    # --vad: a file's speech chunks decode together, as separate streams of the batching engine
    batch_size = args.batch_size
    if batch_size is None:
        batch_size = DEFAULT_BATCH if args.vad_filter else min(DEFAULT_BATCH, len(args.audio))
    if batch_size < 1:
        return usage_error(parser, f"--batch-size must be >= 1, got {batch_size}")
    if decode_options.get("vad_filter") and not _vad_ready(decode_options.get("vad_model")):
        return 1
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as e:
        error(f"{args.output_dir}: cannot create output directory: {one_line(e)}")
        return 1

    try:
        t0 = time.perf_counter()
        backend = _load(load_backend or _default_load_backend, args, progress)
        if backend is None:
            return 1
        load_s = time.perf_counter() - t0
        from models.whisper.decoding.protocol import DecodeTimings
        from models.whisper.engine.batched import batchable

        totals = DecodeTimings().as_dict()
        several = len(args.audio) > 1 or args.vad_filter
        if batch_size > 1 and several and batchable(backend):
            failed = _transcribe_batched(
                args, backend, batch_size, decode_options, writer_args, progress, totals
            )
        else:
            if batch_size > 1 and several and args.batch_size is not None:
                print(
                    f"kvgraph: warning: --batch-size {batch_size}: this backend cannot batch "
                    "(it needs the KV cache); transcribing one file at a time",
                    file=sys.stderr,
                )
            failed = _transcribe_each(args, backend, decode_options, writer_args, totals)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    if args.verbose:
        compile_s = getattr(backend, "compile_s", None)
        wall = time.perf_counter() - wall0
        print(_format_timings(load_s, compile_s, totals, wall), file=sys.stderr, flush=True)
    return 1 if failed else 0


def _vad_ready(path: str | None) -> bool:
    """Loads the voice-activity detector once, before any file (a model that fails to load is
    one error naming it, not one per file)."""
    try:
        from models.whisper.vad.run import vad_model

        vad_model(path)
    except (ValueError, ImportError, OSError) as e:
        error(f"--vad: {one_line(e)}")
        return False
    return True


def _default_load_backend(model_name: str, kv_cache: bool, compute_type: str = "float32"):
    from models.whisper.model.backend import load_backend  # lazy: imports MAX

    return load_backend(model_name, kv_cache=kv_cache, compute_type=compute_type)


def _load(load_backend, args, progress: bool):
    """The backend of ``--model``, or None once its failure is reported."""
    if progress:
        print(
            f"{PROG}: loading {args.model} (its MAX programs come from the program store; "
            "the first run compiles them: minutes)",
            file=sys.stderr,
            flush=True,
        )
        _log_compiles()
    try:
        kwargs = {"kv_cache": not args.no_kv_cache}
        if args.compute_type != "float32":  # the default mode's loaders need not know the option
            kwargs["compute_type"] = args.compute_type
        return load_backend(args.model, **kwargs)
    except (*USER_ERRORS, ImportError) as e:
        error(f"model {args.model!r}: {one_line(e)}")
    except Exception as e:  # noqa: BLE001 - internal failure: keep the traceback
        traceback.print_exc()
        error(f"model {args.model!r}: {type(e).__name__}: {one_line(e)}")
    return None


def _log_compiles() -> None:
    """kvgraph's log on stderr: one line per compiled program, as it happens."""
    import logging

    kv_log = logging.getLogger("kvgraph")
    if not any(getattr(h, "kvgraph_cli", False) for h in kv_log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kvgraph: %(message)s"))
        handler.kvgraph_cli = True
        kv_log.addHandler(handler)
    kv_log.setLevel(logging.INFO)


def _transcribe_each(args, backend, decode_options, writer_args, totals) -> bool:
    """Every file in turn; outputs written (atomically), texts printed. True if any failed."""
    from models.whisper.transcription.transcribe import transcribe

    failed = False
    several = len(args.audio) > 1
    for path in args.audio:
        try:
            result = transcribe(backend, path, **dict(decode_options))
            write_outputs(result, path, args.output_format, args.output_dir, writer_args)
        except KeyboardInterrupt:
            raise
        except USER_ERRORS as e:
            error(f"{path}: {one_line(e, path)}")
            failed = True
            continue
        except Exception as e:  # noqa: BLE001 - internal failure: keep the traceback
            traceback.print_exc()
            error(f"{path}: {type(e).__name__}: {one_line(e, path)}")
            failed = True
            continue
        text = result["text"].strip()
        print(f"{path}: {text}" if several else text, flush=True)
        for k, v in result.get("timings", {}).items():
            totals[k] = totals.get(k, 0) + v
    return failed


def _transcribe_batched(args, backend, batch_size, decode_options, writer_args, progress, totals) -> bool:
    """Every file through one :class:`models.whisper.engine.batched.BatchedTranscriber`; outputs written
    (atomically) as files finish, texts printed in the order given. True if any failed."""
    import concurrent.futures

    from models.whisper.engine.batched import BatchedTranscriber

    options = dict(decode_options, verbose=None)  # one bar across files, not one per file
    bar = Progress(args.audio, progress)
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
                failed, lines[i] = True, (True, f"{path}: {one_line(e, path)}")
            except Exception as e:  # noqa: BLE001 - internal failure: keep the traceback
                traceback.print_exception(e)
                failed, lines[i] = True, (True, f"{path}: {type(e).__name__}: {one_line(e, path)}")
            else:
                text = result["text"].strip()
                lines[i] = (False, f"{path}: {text}" if len(args.audio) > 1 else text)
                for k, v in result.get("timings", {}).items():
                    totals[k] = totals.get(k, 0) + v
            bar.done(i, not lines[i][0])
            while next_print in lines:
                is_error, line = lines.pop(next_print)
                if is_error:
                    error(line)
                else:
                    print(line, flush=True)
                next_print += 1
    except KeyboardInterrupt:
        engine.close(wait=False)
        bar.close()
        raise
    engine.close()
    bar.close()
    return failed


class Progress:
    """Progress across files: files done, audio seconds, realtime factor (tqdm)."""

    def __init__(self, paths: Sequence[str], enabled: bool):
        from models.whisper.engine.batched import audio_seconds

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


if __name__ == "__main__":
    sys.exit(main())
