"""Weights converted for a compute type are made once and kept beside the stored programs
(kvgraph.max.converted): read back, not converted again; refused entries converted anew.
The program store's hit path reading them: test_compute_types."""

import logging

import numpy as np
import pytest

import kvgraph.max.lower as lower
from kvgraph.max import converted
from kvgraph.store import ProgramStore


def _no_conversion(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(lower, "quantize_int8", refuse)
    monkeypatch.setattr(lower, "bf16_panels", refuse)


@pytest.mark.parametrize("layout", ["int8", "int8_scale", "int8_T", "bf16_panels", "bf16_T"])
def test_a_converted_weight_is_read_back_instead_of_converted(tmp_path, monkeypatch, layout):
    store = ProgramStore(tmp_path)
    w = np.random.default_rng(1).standard_normal((70, 96)).astype(np.float16)
    made = converted.weight_array(w, layout, False, store)
    assert np.array_equal(made, lower.weight_array(w, layout, False))
    assert len(list((tmp_path / "weights").rglob("*.kvp"))) == 1
    _no_conversion(monkeypatch)
    got = converted.weight_array(w.copy(), layout, False, store)  # another array, the same values
    assert got.dtype == made.dtype and got.shape == made.shape and np.array_equal(got, made)
    assert got.flags.c_contiguous and got.flags.writeable


def test_only_conversions_are_kept_and_a_store_turned_off_keeps_none(tmp_path):
    w = np.ones((8, 4), np.float32)
    converted.weight_array(w, "T", True, ProgramStore(tmp_path))  # a transpose and cast: made each time
    converted.weight_array(w, "int8", False, ProgramStore(tmp_path, enabled=False))
    converted.weight_array(w, "int8", False, None)
    assert not list(tmp_path.rglob("*.kvp"))


def test_the_key_follows_the_values_the_layout_and_the_dtype():
    w = np.random.default_rng(2).standard_normal((16, 8)).astype(np.float32)
    key = converted.converted_key(w, "int8", False)
    assert converted.converted_key(w.copy(), "int8", False) == key
    changed = w.copy()
    changed[3, 5] = np.nextafter(changed[3, 5], np.float32(np.inf))
    others = [
        converted.converted_key(changed, "int8", False),
        converted.converted_key(w, "int8_T", False),
        converted.converted_key(w.astype(np.float64), "int8", False),
        converted.converted_key(w.reshape(8, 16), "int8", False),
    ]
    assert key not in others and len(set(others)) == len(others)


def test_a_corrupt_entry_is_converted_again(tmp_path, caplog):
    store = ProgramStore(tmp_path)
    w = np.random.default_rng(3).standard_normal((40, 32)).astype(np.float32)
    want = converted.weight_array(w, "int8", False, store)
    (entry,) = (tmp_path / "weights").rglob("*.kvp")
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0xFF
    entry.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="kvgraph.store"):
        got = converted.weight_array(w, "int8", False, store)
    assert np.array_equal(got, want) and "ignoring" in caplog.text
    assert converted.weight_array(w, "int8", False, store) is not None  # stored anew, and read
    (again,) = (tmp_path / "weights").rglob("*.kvp")
    assert again.read_bytes() != bytes(data)
