"""``kvgraph serve``: the command that loads a model and serves it behind OpenAI's audio API
(:mod:`models.whisper.apps.server`). Importing this module is cheap (no MAX, torch or web
framework): the server's imports happen once the arguments are parsed."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence

from models.whisper.apps.cli.options import add_compute_type
from models.whisper.apps.errors import USER_ERRORS, one_line
from models.whisper.apps.server.app import PROG
from models.whisper.apps.server.protocol import DEFAULT_MAX_UPLOAD_MB, ServedModel
from models.whisper.engine.protocol import DEFAULT_BATCH, DEFAULT_MAX_QUEUE

#: the environment variable holding the API key (what ``--api-key`` defaults to)
API_KEY_ENV = "KVGRAPH_API_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Serve Whisper on MAX behind OpenAI's audio API (POST /v1/audio/transcriptions, "
        "/v1/audio/translations, GET /v1/models, /health).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = p.add_argument
    add("--model", default="tiny.en", help="'tiny.en', 'base', or a path to a checkpoint")
    add_compute_type(add)
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add("--port", type=int, default=8000, help="TCP port (0: a free one)")
    add(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=DEFAULT_BATCH,
        help="requests decoded together by the continuous-batching engine (1: the sequential "
        "engine, one request at a time)",
    )
    add(
        "--max-queue",
        "--max_queue",
        dest="max_queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests allowed to wait for the engine; more are answered 503",
    )
    add(
        "--max-upload-mb",
        "--max_upload_mb",
        dest="max_upload_mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="upload size limit in MiB; larger requests are answered 413",
    )
    add(
        "--api-key",
        "--api_key",
        dest="api_key",
        default=argparse.SUPPRESS,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (OpenAI clients' api_key) on every route but "
        f"/health (default: ${API_KEY_ENV} if set, else no key; prefer the variable: a command "
        "line is visible to other users of the machine)",
    )
    add(
        "--log-level",
        "--log_level",
        dest="log_level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level (info: one access line per request)",
    )
    return p


def api_key_of(args, parser: argparse.ArgumentParser) -> str | None:
    """``--api-key``, else ``$KVGRAPH_API_KEY`` (empty: unset), else None; an empty or
    space-padded ``--api-key`` is a usage error."""
    key = getattr(args, "api_key", None)
    if key is None:
        return os.environ.get(API_KEY_ENV, "").strip() or None
    if not key or key != key.strip():
        parser.error("argument --api-key: must be non-empty, without surrounding spaces")
    return key


def _default_load_model(name: str, compute_type: str = "float32"):
    from models.whisper.transcription.model import load_model  # lazy: imports MAX

    return load_model(name, compute_type=compute_type)


def main(
    argv: Sequence[str] | None = None,
    load_model: Callable[[str], object] | None = None,
    engine_factory: Callable[..., object] | None = None,
) -> int:
    """Entry point of ``kvgraph serve``; ``argv`` excludes the subcommand. ``load_model(name)``
    (``load_model(name, compute_type=...)`` with ``--compute_type`` other than float32) defaults to ``models.whisper.load_model``, ``engine_factory(model, batch_size=,
    max_queue=)`` to :func:`make_engine`. Exit status: 0 after a clean shutdown, 1 when the
    model cannot be loaded or the address is taken, 2 for usage errors."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.batch_size is not None and args.batch_size < 1:
            parser.error("argument --batch-size: must be at least 1")
        if args.max_queue < 1:
            parser.error("argument --max-queue: must be at least 1")
        if not args.max_upload_mb > 0:
            parser.error("argument --max-upload-mb: must be positive")
        if not 0 <= args.port <= 65535:
            parser.error("argument --port: must be in 0..65535")
        api_key = api_key_of(args, parser)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(
            f"kvgraph: error: {PROG} needs the 'serve' extra ({e.name} is missing): pip install -e '.[serve]'",
            file=sys.stderr,
        )
        return 1

    print(
        f"{PROG}: loading {args.model} (compiled programs come from the program store)",
        file=sys.stderr,
        flush=True,
    )
    t0 = time.perf_counter()
    try:
        load = load_model or _default_load_model
        # the default mode's loaders need not know the option
        model = (
            load(args.model)
            if args.compute_type == "float32"
            else load(args.model, compute_type=args.compute_type)
        )
    except KeyboardInterrupt:
        print("kvgraph: error: interrupted", file=sys.stderr)
        return 130
    except (*USER_ERRORS, ImportError) as e:
        print(f"kvgraph: error: model {args.model!r}: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"{PROG}: {args.model} loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    from models.whisper.apps.server.app import serve
    from models.whisper.engine.sequential import make_engine

    served = ServedModel.of(args.model, model)
    engine = (engine_factory or make_engine)(model, batch_size=args.batch_size, max_queue=args.max_queue)
    try:
        serve(
            engine,
            served,
            host=args.host,
            port=args.port,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            log_level=args.log_level,
            api_key=api_key,
        )
    except OSError as e:  # address in use, permission denied
        print(f"kvgraph: error: cannot listen on {args.host}:{args.port}: {one_line(e)}", file=sys.stderr)
        engine.close(wait=False)
        return 1
    finally:
        engine.close(wait=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
