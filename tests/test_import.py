"""Importing kvgraph (and models.whisper) is cheap: no MAX, no torch, no network.

Runs in a fresh interpreter that records every attempt to import ``max`` (even a guarded
``try: import max``, and even where MAX is not installed) and forbids sockets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib.abc, json, socket, sys, time
attempts = []
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "max" or name.startswith("max."):
            attempts.append(name)
        return None
sys.meta_path.insert(0, Spy())
def no_net(*a, **k):
    raise RuntimeError("network access during import")
socket.socket.connect = no_net
socket.create_connection = no_net
t0 = time.perf_counter()
import {module}
dt = time.perf_counter() - t0
print(json.dumps(dict(max_loaded="max" in sys.modules, attempts=attempts, seconds=dt)))
"""


def _probe(module: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", PROBE.replace("{module}", module)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    wall = time.perf_counter() - t0
    assert r.returncode == 0, f"import {module} failed:\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall"] = wall
    return out


def test_plain_import_does_not_load_max():
    r = subprocess.run(
        [sys.executable, "-c", "import kvgraph, sys; print('max' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize("module", ["kvgraph", "models.whisper"])
def test_import_is_cheap(module):
    out = _probe(module)
    assert not out["max_loaded"], f"import {module} loaded the 'max' module"
    assert out["attempts"] == [], f"import {module} tried to import {out['attempts']}"
    # Not a speed target: a MAX compile takes a minute or more, so this loose bound only
    # proves none happened (it tolerates a loaded CI machine).
    assert out["wall"] < 30.0, f"import {module} took {out['wall']:.1f}s: something heavy ran"
