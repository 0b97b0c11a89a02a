"""``kvgraph listen``: transcribe a live source, printing the text as it is spoken.

    arecord -q -f S16_LE -r 16000 -c 1 -t raw | kvgraph listen --model tiny.en
    kvgraph listen recording.wav            # a file, followed while it grows

Reads 16 kHz mono PCM (:mod:`models.whisper.streaming.source`: stdin or a file that may
still be growing, a WAV header skipped) and prints each batch of committed words as one line
on stdout, flushed, as soon as the policy commits it (LocalAgreement-2,
:mod:`models.whisper.streaming.agreement`), and the uncommitted rest at the end of the stream.
Loading, the source and a summary go to stderr (each transcription too with ``--verbose``).
Exit status: 0 at the end of the stream, 1 when the source or the model cannot be read, 2 for
usage errors, 130 when interrupted (the text so far is still printed). Importing this module is
cheap (no MAX): the model is loaded once the arguments are checked and the source is open.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

from models.whisper.apps.cli.options import normalize_language
from models.whisper.apps.errors import USER_ERRORS, error, one_line

PROG = "kvgraph listen"

EPILOG = """\
when the source ends:
  -     stdin: at end of file (when the writer closes the pipe); stdin redirected from a
        regular file is followed like FILE
  FILE  followed while it grows (like tail -f); it ends once it has not grown for
        --idle-timeout seconds (0: read what is there and stop), never with --follow
        (stop with Ctrl-C: the text so far is printed)
  WAV   a WAV header that declares its data size ends the stream after that many bytes
        (recorders that stream write an unknown size: read as above)

output (--output):
  text   one line per batch of committed words (the last one: the rest at the end)
  jsonl  one JSON object per batch: {"text", "start", "end", "final",
         "words": [{"word", "start", "end"}]} (times in seconds from the stream's start)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Transcribe a live source (16 kHz mono PCM from stdin or a growing file) with\n"
        "Whisper on MAX, printing the text while the audio arrives. LocalAgreement-2: the growing\n"
        "buffer is transcribed again every --min-chunk-size seconds, and a word is printed once two\n"
        "successive transcriptions agree on it.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    add = p.add_argument
    add("source", nargs="?", default="-", metavar="FILE|-", help="raw PCM or WAV file, or '-' for stdin")
    add("--model", default="tiny.en", help="'tiny.en', 'base', or a path to a checkpoint")
    add(
        "--format",
        default="s16le",
        choices=["s16le", "f32le"],
        help="sample format of raw PCM (16-bit integers or 32-bit floats, little-endian, 16 kHz "
        "mono); a WAV header, when there is one, decides instead",
    )
    add(
        "--min-chunk-size",
        "--min_chunk_size",
        dest="min_chunk_size",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="seconds of new audio to wait for before transcribing the buffer again (when a "
        "transcription takes longer, all audio that arrived meanwhile is taken)",
    )
    add("--language", default=None, help="language spoken (code or name); detected if not given")
    add("--output", default="text", choices=["text", "jsonl"], help="what stdout gets (see below)")
    add("--follow", action="store_true", help="keep following FILE after it stops growing")
    add(
        "--idle-timeout",
        "--idle_timeout",
        dest="idle_timeout",
        metavar="SECONDS",
        type=float,
        default=2.0,
        help="seconds FILE may stay the same size before its end is taken as the end of the stream",
    )
    add(
        "--buffer-trimming-sec",
        "--buffer_trimming_sec",
        dest="trim_s",
        metavar="SECONDS",
        type=float,
        default=15.0,
        help="trim the audio buffer (at a committed segment end) once it is longer than this",
    )
    add("--verbose", action="store_true", help="print each transcription's buffer and time on stderr")
    return p


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, the epilog's layout kept."""


def _check(parser: argparse.ArgumentParser, args) -> None:
    if not args.min_chunk_size > 0:
        parser.error("argument --min-chunk-size: must be positive")
    if args.idle_timeout < 0:
        parser.error("argument --idle-timeout: must be >= 0")
    if not 0 < args.trim_s < 30:
        parser.error("argument --buffer-trimming-sec: must be in (0, 30)")


def _default_load_backend(name: str):
    from models.whisper.model.backend import load_backend  # lazy: imports MAX

    return load_backend(name)


def main(argv: Sequence[str] | None = None, load_backend: Callable[[str], object] | None = None) -> int:
    """Entry point of ``kvgraph listen``; ``argv`` excludes the subcommand. ``load_backend(name)``
    defaults to ``models.whisper.load_backend``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check(parser, args)
        language = normalize_language(parser, args.language)
    except SystemExit as e:  # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    from models.whisper.streaming.source import open_source

    if args.source == "-" and sys.stdin.isatty():
        error(
            "stdin is a terminal: pipe 16 kHz mono PCM into it (arecord -f S16_LE -r 16000 -c 1 -t raw | ...)"
        )
        return 1
    try:
        source = open_source(args.source, fmt=args.format, follow=args.follow, idle_timeout=args.idle_timeout)
    except (*USER_ERRORS, OSError) as e:
        error(f"{args.source}: {one_line(e, args.source)}")
        return 1
    try:
        source.check()
    except USER_ERRORS as e:
        error(f"{args.source}: {one_line(e, args.source)}")
        source.close()
        return 1
    if args.model.endswith(".en") and language not in (None, "en"):
        _say(f"warning: {args.model} is an English-only model; using English instead of {args.language!r}")
        language = "en"
    try:
        backend = _load(load_backend or _default_load_backend, args.model, language)
        if backend is None:
            return 1
        return _run(args, backend, source, language)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    finally:
        source.close()


def _load(load_backend, model: str, language: str | None):
    """The backend, its first transcription's programs loaded; None after an error line."""
    from models.whisper.streaming.live import LiveTranscriber

    _say(f"loading {model} (compiled programs come from the program store)")
    t0 = time.perf_counter()
    try:
        backend = load_backend(model)
        LiveTranscriber(backend, language=language).warmup()
    except (*USER_ERRORS, ImportError) as e:
        error(f"model {model!r}: {one_line(e)}")
        return None
    _say(f"{model} ready in {time.perf_counter() - t0:.1f} s")
    return backend


def _run(args, backend, source, language: str | None) -> int:
    from models.whisper.streaming.live import listen

    _say(f"listening on {source.name} (raw {args.format} or WAV, 16 kHz mono)")
    write = _writer(args.output)
    try:
        result = listen(
            backend,
            source.chunks(),
            on_commit=write,
            on_step=_progress if args.verbose else None,
            min_chunk_s=args.min_chunk_size,
            language=language,
            trim_s=args.trim_s,
        )
    except USER_ERRORS as e:
        error(one_line(e))
        return 1
    except BrokenPipeError:  # stdout closed by its reader: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    mean = result.decode_s / max(result.decodes, 1)
    _say(
        f"{result.audio_s:.1f} s of audio, {len(result.words)} words, {result.decodes} transcriptions "
        f"({mean:.2f} s each){', interrupted' if result.interrupted else ''}"
    )
    return 130 if result.interrupted else 0


def _writer(output: str):
    """``on_commit`` for ``--output``: one line per batch on stdout, flushed."""

    def write(words, final: bool) -> None:
        from models.whisper.streaming.agreement import join

        if output == "jsonl":
            line = json.dumps(
                {
                    "text": join(words),
                    "start": round(words[0].start, 3),
                    "end": round(words[-1].end, 3),
                    "final": final,
                    "words": [
                        {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words
                    ],
                }
            )
        else:
            line = join(words)
        print(line, flush=True)

    return write


def _progress(live, seconds: float) -> None:
    _say(
        f"[{live.audio_s:7.2f} s] buffer {live.buffer_start:.2f}-{live.audio_s:.2f} s transcribed in "
        f"{seconds:.2f} s; committed {len(live.committed)} words, pending: {' '.join(w.text.strip() for w in live.pending)}"
    )


def _say(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
