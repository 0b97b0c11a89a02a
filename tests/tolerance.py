"""Floating-point bounds scaled to the values compared.

An absolute bound such as ``1e-4`` means different things at different magnitudes: logits of a
random model reach ~200, where one float32 spacing (ulp) is already ~1.5e-5, so the rounding of
two correct implementations differs by more than 1e-4 on some CPUs and by less on others.

Every comparison here is stated in *spacings at the scale of the data*:

    |got - ref| <= ulps * eps(dtype) * scale,   scale = max(1, max|ref|)

``eps`` is the dtype's machine epsilon (2**-23 for float32, 2**-52 for float64). ``scale`` is the
largest magnitude of the reference tensor, floored at 1: an output near 0 comes from cancelling
terms of O(1) or larger (a dot product of unit-scale rows), so its error does not shrink with it.

Why this shape. The rounding error of a length-n float sum of products is a few units of
``eps * sum|x_i * y_i|`` in practice (errors of a random sign add like a random walk: ~sqrt(n)
spacings of the *terms*, not of the result; Higham & Mary, "A new approach to probabilistic
rounding error analysis", SIAM J. Sci. Comput. 2019). For a network whose layers renormalise
(LayerNorm/RMSNorm), those relative errors do not compound with depth; the largest output
bounds the terms' scale. So the error of a correct float32 forward pass is a small multiple of
``eps * scale``, independent of the CPU's summation order, and a real bug (a wrong weight, mask
or position) moves outputs by a fixed fraction of ``scale`` — far above any such multiple.

The constants are in units of ``eps * scale`` and were measured on both CPU kinds the project's
machines come in (see each constant); each keeps several times that headroom. Set
``KVGRAPH_TOL_REPORT=1`` to print every comparison's measured ratio at the end of a test run.
"""

from __future__ import annotations

import os

import numpy as np

#: A float32 pass (the NumPy reference, openai-whisper, a torch oracle) against a float64 truth.
#: Measured 1.8-2.6 on an AMD EPYC (AVX-512), and the 2026-11-30 report on another AVX-512 machine
#: implies ~4-7 for the difference of two float32 passes: 32 keeps >= 4x headroom.
F32_PASS = 32
#: Two float64 passes of the same maths (different summation orders). Measured 2.1-4.9.
F64_PASS = 64
#: MAX's float32 kernels against the NumPy reference or openai-whisper (float32 or float64):
#: two float32 passes plus MAX's vectorised exp/erf approximations, float16 weight copies read
#: as float32, fused attention. Measured on decoder logits (random specs and tiny.en) up to 28
#: (KVGRAPH_TOL_REPORT=1, AMD EPYC, 2026-11-30): 256 keeps 9x headroom.
MAX_VS_REF = 256
#: Whisper's encoder on MAX against openai-whisper: 4 layers over 1500 frames. On speech, MAX is
#: 26 spacings from a float64 run of openai's encoder (torch float32: 16); on near-silence one
#: padded frame is 410 (torch float32: 16): MAX's LayerNorm rounds more on frames whose channels
#: are nearly equal (the error is amplified by 1/std of the frame). 2048 keeps 5x headroom; a
#: 1e-3 relative error in any weight moves features by ~1e-2 at their scale (~12), still 4x
#: above the bound (2.9e-3).
MAX_ENCODER = 2048

_REPORT: list[tuple[str, float]] = []


def scale(ref) -> float:
    """``max(1, max|ref|)``: the magnitude the bound is relative to."""
    r = np.asarray(ref, dtype=np.float64)
    return max(1.0, float(np.max(np.abs(r)))) if r.size else 1.0


def bound(ref, ulps: float, dtype=np.float32) -> float:
    """The largest difference from ``ref`` allowed for a ``dtype`` computation of it."""
    return ulps * float(np.finfo(dtype).eps) * scale(ref)


def max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check(got, ref, ulps: float, dtype=np.float32, what: str = "") -> tuple[bool, str]:
    """``(ok, message)`` of ``|got - ref| <= bound(ref, ulps, dtype)``."""
    d, b = max_diff(got, ref), bound(ref, ulps, dtype)
    spacing = float(np.finfo(dtype).eps) * scale(ref)
    if what:  # unnamed checks (a test showing that a bound fails) stay out of the report
        _REPORT.append((what, d / spacing))
    msg = (
        f"{what}: max |diff| {d:.3g} > bound {b:.3g} ({d / spacing:.1f} vs {ulps} spacings of "
        f"{np.dtype(dtype).name} at scale {scale(ref):.3g})"
    )
    return d <= b, msg


def assert_close(got, ref, ulps: float, dtype=np.float32, what: str = "") -> float:
    """Assert ``got`` is within ``ulps`` spacings of ``ref`` at its scale; returns the max diff."""
    ok, msg = check(got, ref, ulps, dtype, what)
    assert ok, msg
    return max_diff(got, ref)


def report() -> list[str]:
    """Lines ``ratio  what`` of the comparisons made so far, worst first (for KVGRAPH_TOL_REPORT)."""
    worst: dict[str, float] = {}
    for what, r in _REPORT:
        worst[what] = max(r, worst.get(what, 0.0))
    return [f"{r:9.2f}  {w}" for w, r in sorted(worst.items(), key=lambda kv: -kv[1])]


def reporting() -> bool:
    return bool(os.environ.get("KVGRAPH_TOL_REPORT"))


def assert_probs_match_torch(ours, ref, tempered, spacings: float) -> None:
    """Sampling probabilities ``ours`` f32[rows, n] against torch's ``ref`` for the tempered
    float32 logits ``tempered`` (``logits / T``; -inf allowed). Two errors, bounded apart:

    * each probability's own rounding: the exps take float32 differences of ``z``, so a spacing
      of ``z``'s largest finite magnitude is their relative error: ``ours`` within ``spacings``
      of them of the float64 truth of the same ``z`` (kvgraph sums its normalisers in float64),
      and, once each row's common factor is taken out, of ``ref`` too;
    * that common factor, each row's normaliser: torch sums ``n`` exps in float32 in SIMD lanes
      (8 on AVX2, 16 on AVX-512: ATen's vectorised softmax reduction), a relative error up to
      ~``n / lanes`` float32 epsilons — 5.1e-5 measured on an AMD Zen 3 (AVX2) for a real JFK
      step at T = 1, 12 spacings of ``z``, where AVX-512 machines stayed within 2 — so the
      factor is held to the bound for 8 lanes (every x86 kind torch runs on)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    z = np.asarray(tempered, np.float64)
    eps = float(np.finfo(np.float32).eps)
    spacing = eps * max(1.0, float(np.abs(z[np.isfinite(z)]).max()))
    np.testing.assert_array_equal(ours == 0, ref == 0)
    with np.errstate(invalid="ignore", over="ignore"):
        truth = np.exp(z - z.max(axis=1, keepdims=True))
    truth /= truth.sum(axis=1, keepdims=True)
    big = truth > 1e-30
    np.testing.assert_allclose(ours[big], truth[big], rtol=spacings * spacing, atol=0)
    both = big & (ref > 0)
    ratio = np.where(both, ref / np.where(both, ours, 1.0), np.nan)
    factor = np.nanmedian(ratio, axis=1, keepdims=True)
    lanes = 8
    assert np.all(np.abs(factor - 1) <= (z.shape[1] / lanes + np.log2(lanes)) * eps), factor.ravel() - 1
    np.testing.assert_allclose((ours * factor)[both], ref[both], rtol=spacings * spacing)
