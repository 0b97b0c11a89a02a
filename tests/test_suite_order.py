"""The suite's own order (tests/conftest.py): the files that compile most first, so `make test`'s
processes start the long compiles side by side; the rest by test count; a file's tests kept
together and in their order."""

from __future__ import annotations

from pathlib import Path

import conftest

HERE = Path(__file__).parent


def test_every_file_named_first_exists():
    missing = [n for n in conftest.COMPILE_FIRST if not (HERE / n).is_file()]
    assert not missing, f"COMPILE_FIRST names files that are gone: {missing}"
    assert len(set(conftest.COMPILE_FIRST)) == len(conftest.COMPILE_FIRST)


class _Item:
    def __init__(self, nodeid):
        self.nodeid = nodeid


def test_compiling_files_first_then_by_count_each_file_whole():
    first, second = conftest.COMPILE_FIRST[:2]
    ids = [
        "tests/test_a.py::one",
        f"tests/{second}::x",
        "tests/test_b.py::one",
        "tests/test_b.py::two",
        f"tests/{first}::y[1]",
        "tests/test_a.py::two[p]",
        "tests/test_a.py::three",
        f"tests/{first}::y[0]",
        "tests/test_c.py::one",
    ]
    items = [_Item(i) for i in ids]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == [
        f"tests/{first}::y[1]",
        f"tests/{first}::y[0]",
        f"tests/{second}::x",
        "tests/test_a.py::one",
        "tests/test_a.py::two[p]",
        "tests/test_a.py::three",
        "tests/test_b.py::one",
        "tests/test_b.py::two",
        "tests/test_c.py::one",
    ]


def test_worker_summary_names_the_tail(tmp_path):
    log = tmp_path / "compiles.jsonl.workers"
    log.write_text('{"worker": "gw1", "start": 0, "end": 900}\n{"worker": "gw0", "start": 1, "end": 1000}\n')
    assert conftest.worker_summary(str(log)) == [
        "test processes busy: gw1 900 s, gw0 999 s (the last alone for 100 s)"
    ]
    assert conftest.worker_summary(str(tmp_path / "absent")) == []
