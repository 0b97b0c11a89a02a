"""The ``kvgraph`` command line.

- ``kvgraph show SPEC [--stage NAME] [--program NAME]``: the printed IR of every stage of
  the default pass pipeline for a built-in spec (``kvgraph list`` names them).
  With ``--expose ATTN[:H,H...]`` (repeatable) the pipeline is ``ExposeAttention`` instead:
  the full-sequence program with those attentions' scores (heads ``H``, default all) as outputs.
  With ``--per-row`` the pipeline caches with ``KVCache(layout="buffer", per_row=True)``:
  the step takes a position per batch row (``past: i64[b]``, continuous batching).
- ``kvgraph list``: the built-in spec names.
- ``kvgraph COMMAND ...`` for a command a plugin registers (:mod:`kvgraph.plugins`; e.g.
  ``kvgraph transcribe`` from the ``models`` package): the arguments after ``COMMAND`` are
  forwarded untouched to the plugin's function. With no plugin providing ``COMMAND``, one line
  on stderr says so (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

PROG = "kvgraph"


def _parser() -> argparse.ArgumentParser:
    from . import plugins, specs
    from .numerics import COMPUTE_TYPES

    p = argparse.ArgumentParser(
        prog=PROG, description="Declare transformer decoders, rewrite them for KV caching, run them on MAX."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    show = sub.add_parser(
        "show",
        help="print the IR after every pass of the default pipeline",
        description="Print the IR of a built-in spec after every stage of the "
        "default pipeline (build, kv_cache, hoist_invariant, "
        "sink_take_last, dce).",
    )
    show.add_argument("spec", metavar="SPEC", help=f"a built-in spec: {', '.join(specs.BUILTIN)}")
    show.add_argument("--stage", metavar="NAME", help="show only this stage (a pass name, or 'build')")
    show.add_argument(
        "--program", choices=("full", "prefill", "step"), help="show only this program of each stage"
    )
    show.add_argument("--weights", action="store_true", help="list every parameter's type too")
    show.add_argument(
        "--expose",
        metavar="ATTN[:H,H]",
        action="append",
        help="instead of the default pipeline, run ExposeAttention: attention ATTN's scores "
        "(query heads H..., default all) as an output; repeatable (e.g. b1.cross:0)",
    )
    show.add_argument(
        "--per-row",
        action="store_true",
        help="cache with KVCache(layout='buffer', per_row=True): a step whose rows are at "
        "different positions (past: i64[b]), capacity the spec's max_seq_len",
    )
    show.add_argument(
        "--compute-type",
        "--compute_type",
        dest="compute_type",
        choices=COMPUTE_TYPES,
        default="float32",
        help="run ComputeType first: the weight products in this arithmetic (printed as "
        "{compute=...} on each; float32 prints nothing)",
    )
    sub.add_parser("list", help="list the built-in specs")
    for cmd in plugins.REGISTRY.commands().values():  # listed in --help; main() runs them
        sub.add_parser(cmd.name, help=cmd.help, add_help=False)
    return p


def _error(msg: str, code: int = 2) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def _show(args) -> int:
    from . import build, passes, run_passes, specs
    from .errors import KvgraphError
    from .printer import format_graph

    try:
        spec = specs.get(args.spec)
    except ValueError as e:
        return _error(str(e))
    try:
        pipeline = passes.default_pipeline()
        if args.per_row:
            pipeline = passes.default_pipeline("buffer", spec.max_seq_len, per_row=True)
        if args.expose:
            which = {}
            for item in args.expose:
                attn, _, heads = item.partition(":")
                try:
                    which[attn] = [int(h) for h in heads.split(",")] if heads else None
                except ValueError:
                    return _error(f"--expose {item!r}: heads must be comma-separated ints")
            pipeline = [passes.ExposeAttention(which)]
        if args.compute_type != "float32":
            pipeline = [passes.ComputeType(args.compute_type), *pipeline]
        result = run_passes(build(spec), pipeline)
    except KvgraphError as e:
        return _error(str(e).splitlines()[0], 1)
    stages = list(result.history)
    names = [s.name for s in stages]
    if args.stage is not None:
        if args.stage not in names:
            return _error(f"unknown stage {args.stage!r}; stages: {', '.join(names)}")
        stages = [s for s in stages if s.name == args.stage]
    blocks = []
    for s in stages:
        for k, g in s.programs.items():
            if args.program is None or k == args.program:
                blocks.append(f"// ---- after {s.name}: {k}\n{format_graph(g, weights=args.weights)}")
    if not blocks:
        where = f"stage {args.stage}" if args.stage else "any stage"
        return _error(f"{where} has no program {args.program!r}")
    sys.stdout.write("\n\n".join(blocks) + "\n")
    return 0


def _plugin_command(name: str, argv: list[str]) -> int:
    from .plugins import CORE_COMMANDS, GROUP, REGISTRY

    commands = REGISTRY.commands()
    if name not in commands:
        known = ", ".join([*CORE_COMMANDS, *commands])
        hint = "" if commands else f"; no installed plugin adds commands (entry point group {GROUP!r})"
        return _error(f"unknown command {name!r}; commands: {known}{hint}")
    rc = commands[name].run(argv)
    return rc if isinstance(rc, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    from .plugins import CORE_COMMANDS

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and argv[0] not in CORE_COMMANDS:
        return _plugin_command(argv[0], argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) and usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.command == "show":
            return _show(args)
        if args.command == "list":
            from . import specs

            print("\n".join(specs.BUILTIN))
            return 0
    except BrokenPipeError:  # `kvgraph show ... | head`: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return _error(f"unknown command {args.command!r}")  # pragma: no cover - argparse rejects it


def run() -> None:
    """The ``kvgraph`` program (console script and ``python -m kvgraph``): :func:`main`, then
    :func:`exit_now` with its status."""
    exit_now(main())


def exit_now(status: int | None) -> None:
    """End the process with ``status`` once its work is done, without the interpreter's
    object-by-object teardown: for a transcription that frees MAX's loaded programs and
    session, collects every module's objects and unloads the native libraries one by one —
    ~0.2 s of a ~1 s run (2-core Intel Xeon, 2026-12-06), all of it work the operating system
    does at once when the process ends. Before that, what an exit must still do is done:
    ``atexit`` functions (logging's flush among them) and the standard streams' flush. A
    normal exit where teardown may matter: another thread still alive, or a profiler or
    tracer watching (``python -m cProfile``, coverage)."""
    import atexit
    import threading

    status = 0 if status is None else status
    if threading.active_count() > 1 or sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    atexit._run_exitfuncs()  # noqa: SLF001 - CPython's own hook for what sys.exit would run
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
