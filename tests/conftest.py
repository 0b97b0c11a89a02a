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
    config.addinivalue_line(
        "markers", "max: compiles and runs graphs on MAX (slow when MAX's compile cache is cold)"
    )
    config.addinivalue_line("markers", "slow: long-running parity tests")


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

    for line in compile_summary(os.environ.get("KVGRAPH_COMPILE_LOG", "")):
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
