"""``kvgraph.cli.exit_now``: the ``kvgraph`` program ends without the interpreter's teardown
once its work is done, yet loses nothing an exit must keep (status, buffered output,
``atexit`` functions), and exits normally where teardown may matter."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from kvgraph.cli import exit_now

out = Path(sys.argv[1])
mode = sys.argv[2]


class Finalized:  # finalized by the interpreter's teardown, never by os._exit
    def __del__(self):
        (out / "torn_down").write_text("yes")


keep = Finalized()
atexit.register(lambda: (out / "atexit").write_text("ran"))
if mode == "thread":  # a worker still busy when the program's work returns
    threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread").write_text("done"))).start()
if mode == "profiled":  # as under ``python -m cProfile``
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
sys.stdout.write("x" * 200_000)  # more than a pipe's buffer, never flushed by hand
sys.stderr.write("last words")
exit_now(3)
"""


def _run(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path), mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("mode", ["plain", "thread", "profiled"])
def test_exit_now_keeps_status_output_and_atexit(tmp_path, mode):
    p = _run(tmp_path, mode)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "x" * 200_000
    assert p.stderr == "last words"
    assert (tmp_path / "atexit").read_text() == "ran"
    if mode == "thread":
        assert (tmp_path / "thread").read_text() == "done"  # waited for, as a normal exit does
    # the interpreter's teardown is skipped only when nothing else runs or watches
    assert (tmp_path / "torn_down").exists() == (mode != "plain")


def test_python_dash_m_exits_with_the_commands_status(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "kvgraph", "list"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "llama-demo" in ok.stdout.split()
    bad = subprocess.run([sys.executable, "-m", "kvgraph", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
