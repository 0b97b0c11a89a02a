"""kvgraph.store: the on-disk program store under real conditions (no MAX here: the artifact
is plain bytes, the 'compiler' a function). The MAX-backed round trip is in test_store_max.py."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kvgraph import store as st


def _write_bytes(data: bytes):
    def write(obj, path):
        Path(path).write_bytes(data if obj is None else obj)

    return write


def _ident(b: bytes) -> bytes:
    return bytes(b)


def _made(value: bytes, calls: list):
    def make():
        calls.append(1)
        return value

    return make


def test_miss_then_hit(tmp_path):
    s = st.ProgramStore(tmp_path)
    key = st.make_key("program text", "opts", "max 26.7", "cpu")
    calls = []
    obj, hit = s.get_or_make(key, _ident, _made(b"ARTIFACT", calls), _write_bytes(None))
    assert (obj, hit, len(calls)) == (b"ARTIFACT", False, 1)
    assert (s.stats.misses, s.stats.writes, s.stats.hits) == (1, 1, 0)
    obj, hit = s.get_or_make(key, _ident, _made(b"OTHER", calls), _write_bytes(None))
    assert (obj, hit, len(calls)) == (b"ARTIFACT", True, 1)
    assert s.stats.hits == 1
    assert [p.name for p in s.path(key).parent.iterdir() if p.suffix == ".part"] == []


def test_a_payload_read_keeps_its_bytes_when_the_entry_is_replaced(tmp_path):
    """load_bytes maps the file: a reader holding the view sees the bytes it opened even when
    another process replaces the entry meanwhile (entries change only by rename)."""
    s = st.ProgramStore(tmp_path)
    key = st.make_key("program text", "opts", "max 26.7", "cpu")
    assert s.put(key, lambda path: Path(path).write_bytes(b"FIRST" * 1000))
    view = s.load_bytes(key)
    assert s.put(key, lambda path: Path(path).write_bytes(b"OTHER" * 3000))
    assert bytes(view) == b"FIRST" * 1000
    assert bytes(s.load_bytes(key)) == b"OTHER" * 3000


def test_a_link_finds_another_keys_artifact(tmp_path):
    """A Module's artifact is found under each of its programs' own keys through links; a
    link never replaces an artifact, dangles harmlessly when its target goes, and a key with
    an artifact of its own is served by that."""
    s = st.ProgramStore(tmp_path)
    module, a, b = (st.make_key(x) for x in ("module [a, b]", "a", "b"))
    assert s.target(a) is None
    assert s.link(a, module) and s.target(a) is None  # a link to nothing yet finds nothing
    assert s.put(module, lambda path: Path(path).write_bytes(b"two programs"))
    assert s.link(a, module) and s.link(b, module) and s.stats.links == 3
    assert (s.target(a), s.target(b), s.target(module)) == (module, module, module)
    assert s.get(s.target(a), _ident) == b"two programs"
    assert sorted(p.suffix for p in tmp_path.rglob("*.*")) == [".kvp", ".link", ".link"]
    assert not s.link(module, a)  # an artifact is never shadowed by a link
    assert s.put(a, lambda path: Path(path).write_bytes(b"a alone"))
    assert s.target(a) == a and s.get(a, _ident) == b"a alone"  # its own artifact first
    s.path(module).unlink()
    assert s.target(b) is None  # a dangling link is a miss
    s.link_path(b).write_text("not a key")
    assert s.target(b) is None
    assert st.ProgramStore(None).target(a) is None and not st.ProgramStore(None).link(a, module)


def test_keys_cover_every_part():
    assert st.make_key("ab", "c") != st.make_key("a", "bc")
    assert st.make_key("x", "cpu1") != st.make_key("x", "cpu2")
    assert st.make_key("x", b"y") == st.make_key("x", "y")


def _stored(tmp_path, payload=b"A" * 1000, program="p"):
    s = st.ProgramStore(tmp_path)
    key = st.make_key(program)
    assert s.put(key, lambda path: Path(path).write_bytes(payload))
    return s, key


@pytest.mark.parametrize(
    "damage", ["truncated_payload", "truncated_header", "flipped_byte", "foreign", "other_key", "empty"]
)
def test_bad_artifacts_are_misses_with_one_log_line(tmp_path, damage, caplog):
    s, key = _stored(tmp_path)
    p = s.path(key)
    data = p.read_bytes()
    if damage == "truncated_payload":
        p.write_bytes(data[:-10])
    elif damage == "truncated_header":
        p.write_bytes(data[:20])
    elif damage == "flipped_byte":
        p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "foreign":
        p.write_bytes(os.urandom(len(data)))
    elif damage == "other_key":
        s2, key2 = _stored(tmp_path / "other", b"B" * 1000, program="another program")
        p.write_bytes(s2.path(key2).read_bytes())
    else:
        p.write_bytes(b"")
    seen = []
    fresh = st.ProgramStore(tmp_path)
    with caplog.at_level("WARNING", logger="kvgraph.store"):
        assert fresh.get(key, lambda b: seen.append(b) or b) is None
    assert seen == []  # the reader never saw a damaged payload
    assert (fresh.stats.bad, fresh.stats.misses, fresh.stats.hits) == (1, 1, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and str(p) in lines[0], lines
    # recompiled and stored anew: the next process hits
    calls = []
    obj, hit = fresh.get_or_make(key, _ident, _made(b"NEW", calls), _write_bytes(None))
    assert (obj, hit, calls) == (b"NEW", False, [1])
    assert st.ProgramStore(tmp_path).get(key, _ident) == b"NEW"


def test_a_reader_that_refuses_the_payload_is_a_miss(tmp_path):
    s, key = _stored(tmp_path)

    def refuse(b):
        raise RuntimeError("cannot deserialize")

    fresh = st.ProgramStore(tmp_path)
    assert fresh.get(key, refuse) is None
    assert fresh.stats.bad == 1 and fresh.stats.misses == 1


def test_unwritable_folder_still_runs(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    s = st.ProgramStore(blocker / "store")  # mkdir under a file fails, even for root
    calls = []
    with caplog.at_level("WARNING", logger="kvgraph.store"):
        for _ in range(3):
            obj, hit = s.get_or_make(st.make_key("p"), _ident, _made(b"X", calls), _write_bytes(None))
            assert (obj, hit) == (b"X", False)
    assert len(calls) == 3 and s.stats.write_errors == 3 and s.stats.writes == 0
    assert len(caplog.records) == 1  # said once, not once per program


def test_full_disk_leaves_nothing_half_written(tmp_path):
    s = st.ProgramStore(tmp_path)
    key = st.make_key("p")

    def write_then_fail(path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    assert not s.put(key, write_then_fail)
    assert s.stats.write_errors == 1
    assert not s.path(key).exists()
    assert [p for p in s.path(key).parent.iterdir() if p.suffix != ".lock"] == []


def test_turned_off_by_environment(monkeypatch, tmp_path):
    for off in ("off", "0", "none"):
        monkeypatch.setenv("KVGRAPH_CACHE_DIR", off)
        assert st.default_root() is None
        s = st.ProgramStore.from_env()
        assert not s.enabled
        assert not s.put(st.make_key("p"), lambda p: Path(p).write_bytes(b"x"))
        assert s.get(st.make_key("p"), _ident) is None
    monkeypatch.setenv("KVGRAPH_CACHE_DIR", str(tmp_path / "here"))
    assert st.default_root() == tmp_path / "here"
    monkeypatch.delenv("KVGRAPH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert st.default_root() == tmp_path / "xdg" / "kvgraph"


_RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from kvgraph import store as st
    root, log = sys.argv[1], Path(sys.argv[2])
    s = st.ProgramStore(root)
    def make():
        with open(log, "a") as f:
            f.write("compiled\\n")
        time.sleep(1.0)  # a slow compile: the other process arrives meanwhile
        return b"ARTIFACT"
    obj, hit = s.get_or_make(st.make_key("same program"), bytes, make,
                             lambda o, p: Path(p).write_bytes(o))
    print(obj.decode(), hit)
""")


def test_concurrent_processes_compile_once(tmp_path):
    log = tmp_path / "compiles.log"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(tmp_path / "store"), str(log)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[1] for o in outs) == ["False", "True"]  # one compiled, one read it
    assert all(o[0] == "ARTIFACT" for o in outs)
    assert log.read_text().count("compiled") == 1
