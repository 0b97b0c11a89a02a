"""``kvgraph prepare``: compile a model's MAX programs ahead of time into kvgraph's program
store (``kvgraph.store``), so that the first ``kvgraph transcribe`` starts in about a second.

For images and CI: run it once at build time (``KVGRAPH_CACHE_DIR`` picks the store's folder).
Importing this module is cheap; MAX is imported when a model is prepared.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

PROG = "kvgraph prepare"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Compile Whisper models' MAX programs ahead of time into kvgraph's "
        "program store (KVGRAPH_CACHE_DIR, default ~/.cache/kvgraph); later runs load them "
        "without compiling.",
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="a model to prepare (tiny.en, base, a CTranslate2 directory or a .pt file); "
        "repeat for several (default: tiny.en)",
    )
    p.add_argument(
        "--all-programs",
        action="store_true",
        help="also the programs compiled on first use, in the same compile: the GEMM step "
        "(more than 8 rows per step), the per-row step (--batch-size, the server), the "
        "full-sequence decoder (--no-kv-cache) and word timestamps' attention scores",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    log = logging.getLogger("kvgraph")
    if not args.quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kvgraph: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    from kvgraph.store import default_store
    from models.whisper.apps.errors import USER_ERRORS, one_line
    from models.whisper.model.backend import ALL_PROGRAMS, load_backend

    store = default_store()
    where = store.root if store.enabled else "nowhere: the store is off (KVGRAPH_CACHE_DIR)"
    print(f"{PROG}: programs are stored in {where}", file=sys.stderr, flush=True)
    print(f"{PROG}: custom kernels: {kernels_line()}", file=sys.stderr, flush=True)
    failed = False
    for name in args.model or ["tiny.en"]:
        t0 = time.perf_counter()
        try:
            backend = load_backend(name, preload=ALL_PROGRAMS if args.all_programs else ())
        except (*USER_ERRORS, ImportError) as e:
            print(f"{PROG}: error: model {name!r}: {one_line(e)}", file=sys.stderr, flush=True)
            failed = True
            continue
        progs = {"encoder": backend.encoder, **backend.decoder.loaded}
        how = ", ".join(f"{k} ({p.source})" for k, p in progs.items())
        print(f"{name}: {how} in {time.perf_counter() - t0:.1f} s", flush=True)
    from models.whisper.decoding.torch_float import native_library

    native = "built (Mojo)" if native_library() is not None else "unavailable: NumPy instead"
    print(f"{PROG}: the decode loop's float32 statistics library: {native}", file=sys.stderr, flush=True)
    s = store.stats
    print(
        f"{PROG}: store: {s.hits} read back, {s.writes} written, {s.bad} bad artifacts replaced, "
        f"{s.write_errors} failed writes",
        file=sys.stderr,
        flush=True,
    )
    return 1 if failed else 0


def kernels_line() -> str:
    """The custom kernels this machine's programs use: built or not, and the instruction-set
    class their tiles are shaped for."""
    from kvgraph.max import custom, isa

    if custom.kernel_package() is None:
        return "unavailable: MAX's own ops instead (same transcripts)"
    return f"built, tiles for {isa.host().describe()}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
