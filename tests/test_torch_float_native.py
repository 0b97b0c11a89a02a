"""The Mojo twin of ``torch_float``'s exp, log and lane sums (``torch_float.mojo``, built by
``kvgraph.max.native``) equals the NumPy emulation bit for bit — the emulation that the
torch-oracle tests (test_filters_search.py, test_timing.py) hold equal to torch — on random
and edge inputs, in both lane widths; and the library is keyed by its source, compiler and
CPU, and falls back to NumPy when it cannot be built."""

from __future__ import annotations

import numpy as np
import pytest

from kvgraph.max import native
from models.whisper.decoding import torch_float as tf

F32 = np.float32


@pytest.fixture(scope="module")
def lib():
    lib = tf.native_library()
    assert lib is not None, "the Mojo twin of torch_float did not build (see the log)"
    return lib


def numpy_twin(monkeypatch):
    """Run torch_float's NumPy code from here on (the native library hidden)."""
    monkeypatch.setattr(tf, "native_library", lambda: None)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def exp_inputs(rng) -> np.ndarray:
    edge = [np.nan, np.inf, -np.inf, 0.0, -0.0, -104.0, -104.00001, -103.99999, 100.0, 100.00001]
    edge += [88.72, 88.73, -87.3, -88.0, -100.0, 1e-30, -1e-30, 1e-45, -1e-45, 2.0**-126]
    edge += [59.957233, -58.57094, -76.592766, -81.44479]  # d / ln 2 rounds to a half: rint ties
    parts = [
        np.array(edge, F32),
        (rng.standard_normal(200_000) * 30).astype(F32),
        (-rng.random(200_000) * 110).astype(F32),
        (rng.random(100_000) * 200 - 100).astype(F32),
        # every 7th float32 in [-1, 0): where logit gaps of a decoder's top tokens fall
        (np.arange(0xBF800000, 0x80000000, -7, dtype=np.int64).astype(np.uint32)).view(F32)[:1_500_000],
    ]
    return np.concatenate(parts)


def test_expf_equals_the_numpy_emulation(lib, monkeypatch):
    d = exp_inputs(np.random.default_rng(5))
    fast = tf.sleef_expf(d)
    numpy_twin(monkeypatch)
    slow = tf.sleef_expf(d)
    assert same_bits(fast, slow), d[fast.view(np.uint32) != slow.view(np.uint32)][:8]


@pytest.mark.parametrize("lanes", [16, 8])
def test_logf_equals_the_numpy_emulation_in_both_lane_widths(lib, monkeypatch, lanes):
    rng = np.random.default_rng(lanes)
    x = np.concatenate(
        [
            (rng.random(300_000) * 60_000 + 1).astype(F32),  # sums of a vocabulary's exps
            np.exp(rng.random(100_000) * 80 - 40).astype(F32),
            np.arange(0x3F800000, 0x40000000, 3, dtype=np.uint32).view(F32),  # [1, 2), every 3rd
            np.array([1.0, 1.5, 0.75, 2.0, 3.0, 1.4999999, 1.5000001, 2.0**-126, 2.0**126], F32),
        ]
    )
    monkeypatch.setattr(tf, "torch_lanes", lambda: lanes)
    fast = tf.sleef_logf(x)
    numpy_twin(monkeypatch)
    slow = tf.sleef_logf(x)
    assert same_bits(fast, slow), x[fast.view(np.uint32) != slow.view(np.uint32)][:8]


def logit_rows(rng, n: int) -> np.ndarray:
    rows = (rng.standard_normal((6, n)) * 4).astype(F32)
    rows[1, : n // 2] = -np.inf  # masked like a timestamp rule
    rows[2, ::3] = -np.inf
    rows[3] = -np.inf  # every token suppressed
    rows[4, n // 3] = np.nan
    rows[5] *= 40  # most exps underflow to 0
    return rows


@pytest.mark.parametrize("lanes", [16, 8])
@pytest.mark.parametrize("n", [51864, 51865, 1000, 13, 7, 1])
def test_log_normalizers_equal_the_numpy_emulation(lib, monkeypatch, lanes, n):
    x = logit_rows(np.random.default_rng(n + lanes), n)
    monkeypatch.setattr(tf, "torch_lanes", lambda: lanes)
    for view in (x, x[::-1], x[:, : max(1, n - 1)]):  # reversed rows; rows apart by a stride
        top, logs = tf.log_normalizers(view)
        with monkeypatch.context() as m:
            numpy_twin(m)
            ref_top, ref_logs = tf.log_normalizers(view)
        assert same_bits(top, ref_top) and same_bits(logs, ref_logs), (logs, ref_logs)


@pytest.mark.parametrize("lanes", [16, 8])
@pytest.mark.parametrize("n", [51864, 51865, 1000, 13, 2])
def test_split_log_normalizers_equal_the_numpy_twin(lib, monkeypatch, lanes, n):
    """The front part's maxima, the rows' maxima and their normalizers in one native call,
    equal to NumPy's maxima and normalizers: splits at both ends and inside a vector, NaN in
    either part, +inf, all -inf."""
    x = logit_rows(np.random.default_rng(n + 3 * lanes), n)
    x[0, -1] = np.nan  # in the back part
    x[2, n // 2] = np.inf
    monkeypatch.setattr(tf, "torch_lanes", lambda: lanes)
    for split in sorted({1, n // 2, n - 1, max(1, n - 1501), min(n - 1, 17)}):
        for view in (x, x[::-1], x[:, : max(2, n - 1)]):
            if not 0 < split < view.shape[1]:
                continue
            got = tf.split_log_normalizers(view, split)
            with monkeypatch.context() as m:
                numpy_twin(m)
                ref = tf.split_log_normalizers(view, split)
            for a, b in zip(got, ref):
                assert same_bits(a, b), (split, a, b)


@pytest.mark.parametrize("lanes", [16, 8])
@pytest.mark.parametrize("n", [51864, 51865, 1000, 13])
def test_timestamp_decisions_equal_the_numpy_twin(lib, monkeypatch, lanes, n):
    """The timestamp rule's decisions (the timestamps' logsumexp against the best text token)
    in one native call, equal to NumPy's row for row: random rows, best text tokens set on
    and beside each row's logsumexp, masked, NaN and -inf rows, timestamps all -inf."""
    rng = np.random.default_rng(n + lanes)
    monkeypatch.setattr(tf, "torch_lanes", lambda: lanes)
    x = logit_rows(rng, n)
    x = np.concatenate([x, (rng.standard_normal((6, n)) * 3).astype(F32)])
    split = max(1, n - 1501) if n > 20 else n // 2
    x[7, split:] = -np.inf  # no timestamp left
    front, top, logs = tf.split_log_normalizers(x, split)
    with np.errstate(invalid="ignore"):
        stamps = (x[:, split:] - top[:, None]) - logs[:, None]
    with monkeypatch.context() as m:
        numpy_twin(m)
        lse = tf.logsumexp(stamps)
    decided = 0
    for shift in (None, -1, 0, 1):  # the best text token as it is, and just below, on, above the lse
        f = front.copy()
        if shift is not None:  # front chosen so that (front - top) - logs lands at the lse
            with np.errstate(invalid="ignore", over="ignore"):
                f = (lse + logs) + top
                f = np.where(np.isfinite(f), f, front).astype(F32)
                for _ in range(abs(shift)):
                    f = np.nextafter(f, np.float32(np.inf) if shift > 0 else np.float32(-np.inf))
        got = tf.stamps_beat_text(x, split, f, top, logs)
        with monkeypatch.context() as m:
            numpy_twin(m)
            ref = tf.stamps_beat_text(x, split, f, top, logs)
        np.testing.assert_array_equal(got, ref, err_msg=f"shift {shift}")
        decided += int(got.sum())
    assert decided > 0  # some rows forced, some not


@pytest.mark.parametrize("n", [51864, 51865, 1000, 23, 7])
def test_sampling_weights_and_blocks_equal_the_numpy_twin(lib, monkeypatch, n):
    """The sampler's weights (its probabilities before the scaling) and the float64 sums of
    their CDF blocks, from the Mojo twin and from NumPy, bit for bit: rows with -inf, a NaN,
    all -inf, +inf, several temperatures; and the probabilities made from them."""
    from models.whisper.decoding import search

    rng = np.random.default_rng(n)
    x = (rng.standard_normal((6, n)) * 4).astype(F32)
    x[:, rng.integers(0, n, n // 3)] = -np.inf
    x[1, :] = -np.inf
    x[2, n // 2] = np.nan
    x[3] *= 30  # a wide range: exps below SLEEF's cutoff
    x[4, n // 3] = np.inf  # an infinite maximum: nothing subtracted
    wide = np.zeros((6, n + 5), F32)
    wide[:, :n] = x  # rows strided, as a view of a wider batch
    for t in (0.2, 0.5, 1.0, 1.3):
        fast = search._exps_and_blocks(wide[:, :n], t)
        probs = search.sampling_probs(wide[:, :n], t)
        with monkeypatch.context() as m:
            numpy_twin(m)
            slow = search._exps_and_blocks(wide[:, :n], t)
            assert same_bits(probs, search.sampling_probs(wide[:, :n], t)), t
        assert same_bits(fast[0], slow[0]), (
            t,
            np.flatnonzero((fast[0].view(np.uint32) != slow[0].view(np.uint32)).any(1)),
        )
        assert np.array_equal(fast[1].view(np.uint64), slow[1].view(np.uint64)), t


class Uniforms:
    """A generator whose draws are given (``random(n)``: the next n of them)."""

    def __init__(self, u):
        self.u = np.asarray(u, np.float64)

    def random(self, n):
        out, self.u = self.u[:n], self.u[n:]
        return out


@pytest.mark.parametrize("n", [51864, 1000, 300, 23])
def test_draws_equal_the_numpy_twin(lib, monkeypatch, n):
    """The sampler's draws, from the Mojo twin and from NumPy, token for token: random and
    edge uniforms (0, 1, a block's running total exactly, just below and above it), rows with
    -inf, peaked and flat rows; a row with nothing to draw is an error in both."""
    from models.whisper.decoding import search

    rng = np.random.default_rng(n)
    x = (rng.standard_normal((6, n)) * 4).astype(F32)
    x[:, rng.integers(0, n, n // 3)] = -np.inf
    x[1, : n - 1] = -np.inf  # one drawable token, the last
    x[1, n - 1] = 1.0
    x[2] = 0.0  # flat
    x[3] *= 30  # peaked
    for t in (0.2, 0.7, 1.0):
        _, blocks = search._exps_and_blocks(x, t)
        cum = np.cumsum(blocks, axis=1)
        edges = [0.0, 1.0, np.nextafter(1.0, 0.0)]
        if cum.shape[1] > 1:  # a draw on the first block's running total, and beside it
            at = cum[0, 0] / cum[0, -1]
            edges += [at, np.nextafter(at, 0.0), np.nextafter(at, 2.0)]
        draws = [rng.random(6) for _ in range(20)] + [np.full(6, e) for e in edges]
        for u in draws:
            fast = search.sample(x, t, Uniforms(u))
            with monkeypatch.context() as m:
                numpy_twin(m)
                slow = search.sample(x, t, Uniforms(u))
            assert fast.tolist() == slow.tolist(), (t, u)
            assert fast[1] == n - 1
    bad = x.copy()
    bad[4] = -np.inf
    for twin in (False, True):
        with monkeypatch.context() as m:
            if twin:
                numpy_twin(m)
            with pytest.raises(ValueError, match="no finite entry"):
                search.sample(bad, 0.5, np.random.default_rng(0))


def test_the_library_key_covers_source_compiler_and_cpu(monkeypatch, tmp_path):
    src = tmp_path / "k.mojo"
    src.write_text("# a\n")
    first = native.library_path(src)
    assert first is not None
    assert len(native.cpu_id().split("|")) >= 2  # the machine, then what /proc/cpuinfo says
    src.write_text("# b\n")
    assert native.library_path(src)[1] != first[1]  # the source
    src.write_text("# a\n")
    assert native.library_path(src)[1] == first[1]
    monkeypatch.setattr(native, "cpu_id", lambda: "x86_64|another CPU|avx2 fma")
    assert native.library_path(src)[1] != first[1]  # built on another kind: never loaded here


def test_off_or_unbuildable_means_numpy(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("KVGRAPH_KERNELS_DIR", str(tmp_path / "k"))
    broken = tmp_path / "broken.mojo"
    broken.write_text("def nope(:\n")
    with caplog.at_level("WARNING", logger="kvgraph"):
        assert native.library(broken) is None
    assert "broken.mojo did not build" in caplog.text
    assert not list((tmp_path / "k").rglob("*.so"))  # nothing half-written left behind
    ok = tmp_path / "ok.mojo"
    ok.write_text("@export\ndef kv_seven() -> Int:\n    return 7\n")
    built = native.library(ok)  # a cold build: an empty folder, the compiler run
    assert built is not None and built.kv_seven() == 7
    assert [p.name for p in (tmp_path / "k").rglob("*.so")] == ["libok.so"]
    native.library.cache_clear()
    monkeypatch.setenv("KVGRAPH_NATIVE", "off")
    assert native.library(ok) is None
