"""``kvgraph transcribe-corpus``: a corpus transcribed as a Ray Data job, on this machine or a
Ray cluster.

    kvgraph transcribe-corpus INPUTS... --output-dir D [--address auto|HOST:PORT|ray://HOST:PORT]
        [--model tiny.en] [--output_format all] [--batch_size 8] [--num_workers N] ...

INPUTS are audio files, directories (searched recursively), globs and URIs of any filesystem
pyarrow reads (``s3://bucket/calls/``). Without ``--address`` a local Ray is started on this
machine, bound to 127.0.0.1, and stopped at the end. Each file's outputs are written atomically
under D (sub-directories kept), with ``manifest.jsonl`` (one row per file: status ok / error /
skipped, duration, language, error); a rerun skips the files whose outputs all exist. The
decoding options are ``kvgraph transcribe``'s (:mod:`models.whisper.apps.cli.options`).

Exit status: 0 when every file is ok or skipped, 1 when a file failed or the job could not run
(Ray missing: one line saying how to install it), 2 for usage errors. Importing this module is
cheap: Ray and MAX are imported once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from models.whisper.apps.cli.options import (
    build_parser,
    check_vad_options,
    check_word_options,
    decoding_options,
    normalize_language,
    usage_error,
)
from models.whisper.apps.errors import USER_ERRORS, error, one_line
from models.whisper.transcription.outputs import WORD_OPTIONS

PROG = "kvgraph transcribe-corpus"


def build_corpus_parser() -> argparse.ArgumentParser:
    """``kvgraph transcribe``'s options, its positional files as INPUTS, ``--output-dir``
    required, and the cluster's options."""
    p = build_parser()
    p.prog = PROG
    p.description = (
        "Transcribe a corpus (files, directories, globs, s3:// or other pyarrow URIs) with Whisper on "
        "MAX as a Ray Data job: a local Ray on 127.0.0.1, or an existing cluster with --address."
    )
    inputs = _action(p, "audio")
    inputs.metavar, inputs.help = "INPUTS", "audio files, directories, globs, or URIs (file://, s3://, ...)"
    out = _action(p, "output_dir")
    out.required, out.default = True, None
    out.help = "directory of the outputs and manifest.jsonl (every worker must see it at this path)"
    _action(p, "verbose").help = argparse.SUPPRESS  # Ray Data's bars and the summary say it
    _action(p, "no_progress").help = "no Ray Data progress bars"
    batch = _action(p, "batch_size")
    batch.default, batch.help = 8, "files each worker decodes at once (their decoder steps batched)"
    add = p.add_argument_group("Ray").add_argument
    add(
        "--address",
        default=None,
        help="Ray cluster: 'auto', HOST:PORT or ray://HOST:PORT (default: a local Ray)",
    )
    add(
        "--num-workers",
        "--num_workers",
        dest="num_workers",
        type=int,
        default=None,
        help="model actors (default: one per node)",
    )
    add(
        "--cpus-per-worker",
        "--cpus_per_worker",
        dest="cpus_per_worker",
        type=float,
        default=1.0,
        help="CPUs each actor reserves",
    )
    add(
        "--num-cpus",
        "--num_cpus",
        dest="num_cpus",
        type=int,
        default=None,
        help="CPUs of the local Ray (default: all)",
    )
    add(
        "--node-ip-address",
        "--node_ip_address",
        dest="node_ip_address",
        default=None,
        help="this driver's node address (default: 127.0.0.1 for a local Ray or a loopback --address)",
    )
    add("--manifest", default="manifest.jsonl", help="name of the manifest file in --output-dir")
    return p


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    """The parser's action storing ``dest`` (argparse keeps its actions in ``_actions``)."""
    return next(a for a in parser._actions if a.dest == dest)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``kvgraph transcribe-corpus``; ``argv`` excludes the subcommand."""
    parser = build_corpus_parser()
    try:
        args = parser.parse_args(argv)
        language = normalize_language(parser, args.language)
    except SystemExit as e:  # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    problem = check_word_options(args) or check_vad_options(args)
    for name in ("batch_size", "num_workers", "num_cpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            problem = problem or f"--{name.replace('_', '-')} must be >= 1, got {value}"
    if problem:
        return usage_error(parser, problem)
    options = decoding_options(args, language, progress=False)
    options.pop("verbose", None)
    t0 = time.perf_counter()
    try:
        from models.whisper.corpus.ray_job import transcribe_corpus  # lazy: Ray Data, MAX on workers

        rows = transcribe_corpus(
            args.audio,
            args.output_dir,
            address=args.address,
            model=args.model,
            output_format=args.output_format,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            cpus_per_worker=args.cpus_per_worker,
            num_cpus=args.num_cpus,
            node_ip_address=args.node_ip_address,
            manifest=args.manifest,
            writer_args={k: getattr(args, k) for k in WORD_OPTIONS},
            kv_cache=not args.no_kv_cache,
            progress=not args.no_progress,
            **options,
        )
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except (*USER_ERRORS, ImportError, ConnectionError) as e:
        error(one_line(e))
        return 1
    return _report(rows, args, time.perf_counter() - t0)


def _report(rows: list[dict], args, wall_s: float) -> int:
    """One line per failed file and a summary on stderr; the exit status."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "skipped", "error")}
    for r in rows:
        if r["status"] == "error":
            error(f"{r['file']}: {r['error']}")
    audio = sum(r["duration"] or 0.0 for r in rows if r["status"] == "ok")
    rate = f", {audio / wall_s:.1f}x realtime" if wall_s > 0 and audio else ""
    print(
        f"{PROG}: {len(rows)} files: {counts['ok']} ok, {counts['skipped']} skipped, "
        f"{counts['error']} failed; {audio:.0f} s of audio in {wall_s:.1f} s{rate}; "
        f"manifest: {args.output_dir}/{args.manifest}",
        file=sys.stderr,
        flush=True,
    )
    return 1 if counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
