"""Shared pytest set-up: markers (also declared in pyproject.toml), and the ``models`` plugin.

The Whisper specs and ``kvgraph transcribe`` reach kvgraph through the ``kvgraph.plugins``
entry point, which exists only once this checkout is installed (``make``); applying the plugin
here lets the suite run against a checkout whose installed metadata is older. Applying it
twice (here and through the entry point) is a no-op.
"""

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import kvgraph.plugins
import models.whisper.plugin

kvgraph.plugins.use(models.whisper.plugin.register)


def pytest_configure(config):
    # every MAX compile of the run, subprocesses' included, appends a line here
    # (kvgraph.max.runtime.record_compile); the summary counts them
    if "KVGRAPH_COMPILE_LOG" not in os.environ:
        fd, path = tempfile.mkstemp(prefix="kvgraph-compiles-", suffix=".jsonl")
        os.close(fd)
        os.environ["KVGRAPH_COMPILE_LOG"] = path
    if not hasattr(config, "workerinput"):  # the controller (or the only process): a new run
        Path(os.environ["KVGRAPH_COMPILE_LOG"] + ".workers").unlink(missing_ok=True)
    config.addinivalue_line(
        "markers", "max: compiles and runs graphs on MAX (slow when MAX's compile cache is cold)"
    )
    config.addinivalue_line("markers", "slow: long-running parity tests")


#: Test files that compile MAX programs no earlier file has compiled, in the order that balanced
#: a cold run's two processes (the two largest first), each with its cold compile seconds beside
#: the other process's (AMD EPYC Zen 3, 25/1, benchmarks/cold_suite.sh at a79de17, 2026-12-08:
#: busy 2,500 and 2,522 s; they scale together on every CPU kind). ``make test``'s processes
#: take whole files in this order, then the rest by test count as pytest-xdist's own order has
#: them (``--no-loadscope-reorder``): the long compiles start first and side by side, and short
#: files fill the end, where xdist's count order left the few-test files that compile most for
#: last (one process did 2,256 s of a cold run's compiling, the other 1,434 s). The first files
#: compile what later ones share (the small specs and llama-demo: test_compile_max; tiny.en:
#: test_serve_stream), so later files (test_slots_max, test_store_max, test_examples) read it
#: from the program store or MAX's cache; the Whisper compute types follow tiny.en's float32
#: programs, which they use.
COMPILE_FIRST = (
    "test_compile_max.py",  # the small specs' Module (555 s) and llama-demo's (418 s)
    "test_serve_stream.py",  # tiny.en's programs, one Module: 362 s
    "test_max_kernels.py",  # one graph of every lowering helper: 483 s
    "test_compute_types_whisper.py",  # tiny.en's int8 decoders and bfloat16 encoder: 336 s
    "test_transcribe_max_cli.py",  # tiny.en without the custom kernels (a subprocess): 288 s
    "test_compute_types.py",  # int8 / exact-top / bfloat16 graphs, with and without kernels: 349 s
    "test_serve.py",  # base with its word-timestamp program: 357 s
    "test_custom_kernels.py",  # the kernel tests' graphs: four calls, 192 s
)


def pytest_collection_modifyitems(config, items):
    """Files in COMPILE_FIRST's order first, then by test count (most first), each file's tests
    together in their own order."""
    count, first = {}, {}
    for i, item in enumerate(items):
        f = item.nodeid.split("::", 1)[0]
        count[f] = count.get(f, 0) + 1
        first.setdefault(f, i)
    rank = {name: i for i, name in enumerate(COMPILE_FIRST)}

    def key(item):
        f = item.nodeid.split("::", 1)[0]
        return (rank.get(Path(f).name, len(rank)), -count[f], first[f])

    items.sort(key=key)  # stable: a file's tests keep their order


def pytest_sessionstart(session):
    session.config._kvgraph_t0 = time.time()


def pytest_sessionfinish(session):
    """Each xdist test process appends its busy span to the compile log's ``.workers`` file."""
    worker = getattr(session.config, "workerinput", {}).get("workerid")
    log = os.environ.get("KVGRAPH_COMPILE_LOG")
    if worker and log:
        row = {"worker": worker, "start": session.config._kvgraph_t0, "end": time.time()}
        with open(log + ".workers", "a") as f:
            f.write(json.dumps(row) + "\n")


def worker_summary(path: str) -> list[str]:
    """How long each test process was busy, and how long the last one ran alone."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    if len(rows) < 2:
        return []
    rows.sort(key=lambda r: r["end"])
    spans = ", ".join(f"{r['worker']} {r['end'] - r['start']:.0f} s" for r in rows)
    return [f"test processes busy: {spans} (the last alone for {rows[-1]['end'] - rows[-2]['end']:.0f} s)"]


def pytest_report_header(config):
    from decoder_fixtures import SEED

    return [
        f"KVGRAPH_TEST_SEED={SEED} (draws the sizes no compile cache holds: tests/test_custom_kernels.py)"
    ]


def compile_summary(path: str) -> list[str]:
    """The run's MAX compiles from the log: count, seconds, and the slowest."""
    try:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []
    total = sum(r["seconds"] for r in rows)
    cached = sum(r["seconds"] < 1.0 for r in rows)  # MAX's own cache held the program
    out = [
        f"MAX compiles this run: {len(rows)} calls ({len(rows) - cached} compiled, {cached} from "
        f"MAX's cache), {total:.0f} s compiling"
    ]
    for r in sorted(rows, key=lambda r: -r["seconds"])[:8]:
        out.append(f"  {r['seconds']:7.1f} s  {r['what']}")
    return out


def pytest_terminal_summary(terminalreporter):
    """The run's MAX compile count and seconds, the openai-whisper oracle's calls reused from
    its on-disk memo (tests/oracle.py); with KVGRAPH_TOL_REPORT=1 also each scaled
    comparison's worst measured ratio (tests/tolerance.py)."""
    import tolerance

    log = os.environ.get("KVGRAPH_COMPILE_LOG", "")
    for line in compile_summary(log) + worker_summary(log + ".workers"):
        terminalreporter.write_line(line)
    oracle = sys.modules.get("oracle")  # tests/oracle.py, once a test used it
    if oracle is not None and oracle.STATS.summary():
        terminalreporter.write_line(oracle.STATS.summary())
    for line in pytest_report_header(None):  # the draw, to replay a failure
        terminalreporter.write_line(line)

    if tolerance.reporting():
        terminalreporter.write_line("measured |diff| / (eps * scale), worst per comparison:")
        for line in tolerance.report():
            terminalreporter.write_line(line)
