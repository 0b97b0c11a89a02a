"""Compute types (``compute_type="bfloat16"``): the IR attribute and its pass, the NumPy
reference's bfloat16 emulation (against torch's rounding), the MAX lowering — the AMX kernels
where this CPU has them, the AVX512-BF16 ones and the float32 emulation everywhere — against the
reference, and the option on the Python API, the CLI and the server. On Whisper:
``test_compute_types_whisper.py``."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from kvgraph import ir, reference
from kvgraph.errors import InputError, IRTypeError, VerifyError
from kvgraph.ir import GraphBuilder
from kvgraph.numerics import bf16_bits, bf16_panels, from_bf16_bits, quantize_int8, round_bf16
from kvgraph.passes import ComputeType, Programs, compute_type
from kvgraph.printer import format_graph
from kvgraph.types import f32, sym
from kvgraph.verify import verify
from models.whisper.model.compute import COMPUTE_TYPES


def _graph(seq=37, keys=45, width=128, heads=4, kv_heads=2, out=70, causal=False):
    """A strided convolution, a linear (odd sizes: padding on every side of the tiles), an
    attention over another input's keys (grouped heads, keys not a multiple of 32) and a
    linear without bias."""
    g = GraphBuilder("mix")
    x = g.input("x", f32(sym("b"), seq, 100))
    kv = g.input("kv", f32(sym("b"), keys, kv_heads * (width // heads)))
    c = g.add(ir.Conv1d(x, g.weight("wc", (100, 100, 3)), g.weight("bc", (100,)), 2, 1), "c")
    q = g.add(ir.Linear(c, g.weight("wq", (width, 100)), g.weight("bq", (width,))), "q")
    a = g.add(ir.Attention(q, kv, kv, heads, kv_heads, causal, ir.scale_for(width // heads)), "a")
    y = g.add(ir.Linear(a, g.weight("wo", (out, width))), "y")
    return g.finish([("y", y)])


def _weights(rng, width=128, out=70):
    return {
        "wc": rng.standard_normal((100, 100, 3)).astype(np.float32) * 0.1,
        "bc": rng.standard_normal(100).astype(np.float32),
        "wq": rng.standard_normal((width, 100)).astype(np.float32) * 0.2,
        "bq": rng.standard_normal(width).astype(np.float32),
        "wo": rng.standard_normal((out, width)).astype(np.float32) * 0.2,
    }


# ------------------------------------------------------------------------------- IR and pass


def test_the_default_compute_type_prints_as_before_and_bfloat16_shows():
    g = _graph()
    text = format_graph(g)
    assert "compute" not in text  # float32 graphs print as they always did (store keys too)
    b = compute_type(g, "bfloat16", attention=True)
    lines = [
        ln for ln in format_graph(b).splitlines() if "{compute=bfloat16}" in ln or "compute=bfloat16" in ln
    ]
    assert len(lines) == 4, format_graph(b)
    assert format_graph(g) == text  # the pass is pure: the input graph is unchanged


def test_the_pass_takes_weight_linears_and_only_unmasked_attention_when_asked():
    g = _graph(causal=True)
    lin = compute_type(g, "bfloat16")
    kinds = {type(n.op).__name__: n.op.compute for n in lin.nodes}
    assert kinds == {"Conv1d": "bfloat16", "Linear": "bfloat16", "Attention": "float32"}
    causal = compute_type(g, "bfloat16", attention=True)
    assert [n.op.compute for n in causal.nodes if isinstance(n.op, ir.Attention)] == ["float32"]
    both = ComputeType("bfloat16", attention=True).apply(Programs.of(full=_graph()))["full"]
    assert all(n.op.compute == "bfloat16" for n in both.nodes)
    assert format_graph(compute_type(both, "float32", attention=True)) == format_graph(_graph())


def test_kvgraph_show_prints_a_mode(capsys):
    from kvgraph.cli import main

    assert (
        main(["show", "whisper-tiny.en", "--compute_type", "int8", "--stage", "dce", "--program", "step"])
        == 0
    )
    out = capsys.readouterr().out
    linears = [ln for ln in out.splitlines() if " = linear " in ln]
    assert linears and all(ln.endswith("} : " + ln.rsplit(" : ", 1)[1]) for ln in linears)
    # every decoder linear int8; the logits' (the program's output) with its exact top
    assert all("{compute=int8}" in ln for ln in linears if "%logits" not in ln)
    assert [ln for ln in linears if "{compute=int8, exact_top=16}" in ln] == [
        ln for ln in linears if "%logits = " in ln
    ]
    assert main(["show", "whisper-tiny.en", "--stage", "dce", "--program", "step"]) == 0
    assert "compute=" not in capsys.readouterr().out
    assert main(["show", "whisper-tiny.en", "--compute_type", "fp8"]) == 2


def test_unknown_compute_types_are_one_line_errors():
    with pytest.raises(InputError, match="fp8"):
        compute_type(_graph(), "fp8")
    g = GraphBuilder("bad")
    x = g.input("x", f32(2, 4))
    with pytest.raises(IRTypeError, match="compute 'fp8'"):
        g.add(ir.Linear(x, g.weight("w", (3, 4)), compute="fp8"), "y")


# ------------------------------------------------------------------- numerics and reference


def test_bfloat16_rounding_is_torchs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    bits[:2000] = (bits[:2000] & 0xFFFF0000) | 0x8000  # exact ties: to even
    x = bits.view(np.float32)
    x = x[np.isfinite(x)]
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_bits(x), want)
    np.testing.assert_array_equal(round_bf16(x), from_bf16_bits(want))


def test_panels_hold_every_weight_once_where_the_kernel_reads_it():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((70, 100)).astype(np.float32)
    p = bf16_panels(w)
    assert p.shape == (96 // 16, 128 // 2, 32) and p.dtype == np.uint16
    # [panel, pair, 2 c + e] = w[16 panel + c, 2 pair + e]
    back = p.reshape(6, 64, 16, 2).transpose(0, 2, 1, 3).reshape(96, 128)
    np.testing.assert_array_equal(back[:70, :100], bf16_bits(w).reshape(70, 100))
    assert not back[70:].any() and not back[:, 100:].any()


def test_the_reference_rounds_operands_and_numerators():
    rng = np.random.default_rng(2)
    g, w = compute_type(_graph(), "bfloat16", attention=True), _weights(rng)
    x = rng.standard_normal((2, 37, 100)).astype(np.float32)
    kv = rng.standard_normal((2, 45, 64)).astype(np.float32)
    got = reference.run(g, w, dtype=np.float64, x=x, kv=kv)["y"]
    # the definition, written out
    xp = np.pad(round_bf16(x).astype(np.float64), ((0, 0), (1, 1), (0, 0)))
    cols = np.concatenate([xp[:, j : j + 37 : 2] for j in range(3)], axis=2)  # [2, 19, 3 * 100]
    wc = round_bf16(w["wc"]).astype(np.float64).transpose(0, 2, 1).reshape(100, 300)
    c = cols @ wc.T + w["bc"]
    q = round_bf16(c).astype(np.float64) @ round_bf16(w["wq"]).T.astype(np.float64) + w["bq"]
    qh = round_bf16(q).reshape(2, 19, 4, 32).transpose(0, 2, 1, 3).astype(np.float64)
    kh = round_bf16(kv).reshape(2, 45, 2, 32).transpose(0, 2, 1, 3)[:, [0, 0, 1, 1]].astype(np.float64)
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(32)
    e = np.exp(s - s.max(-1, keepdims=True))
    a = (round_bf16(e).astype(np.float64) @ kh) / e.sum(-1, keepdims=True)
    a = a.transpose(0, 2, 1, 3).reshape(2, 19, 128)
    want = round_bf16(a).astype(np.float64) @ round_bf16(w["wo"]).T.astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    exact = reference.run(_graph(), w, dtype=np.float64, x=x, kv=kv)["y"]
    assert 1e-4 < np.abs(got - exact).max() < 0.1  # bfloat16 differs from float32, a little


def test_int8_quantizes_each_row_with_its_own_scale():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((50, 64)).astype(np.float32) * rng.uniform(0.01, 3, (50, 1)).astype(np.float32)
    w[7] = 0
    q, s = quantize_int8(w)
    assert q.dtype == np.int8 and s.dtype == np.float32 and np.abs(q).max() == 127
    assert (np.abs(q).max(axis=1)[np.arange(50) != 7] == 127).all() and s[7] == 1 and not q[7].any()
    # every weight within half a step of its row's scale
    assert (np.abs(q * s[:, None] - w) <= s[:, None] / 2 * (1 + 1e-6)).all()
    g = GraphBuilder("i8")
    x = g.input("x", f32(3, 64))
    y = g.add(ir.Linear(x, g.weight("w", (50, 64)), compute="int8"), "y")
    xs = rng.standard_normal((3, 64))
    got = reference.run(g.finish([("y", y)]), {"w": w}, dtype=np.float64, x=xs)["y"]
    np.testing.assert_allclose(got, (xs @ q.T.astype(np.float64)) * s, rtol=1e-12)


def _exact_top_graph(out=3001, din=96):
    """Two output linears (a bias and a float16-exact weight; no bias and a float32 one) after
    a hidden linear: ``compute_type(..., outputs="int8")`` makes both int8 with exact_top."""
    g = GraphBuilder("et")
    x = g.input("x", f32(sym("b"), 1, din))
    h = g.add(ir.Linear(x, g.weight("w1", (din, din)), g.weight("b1", (din,))), "h")
    ya = g.add(ir.Linear(h, g.weight("wa", (out, din)), g.weight("ba", (out,))), "ya")
    yb = g.add(ir.Linear(h, g.weight("wb", (out // 2, din))), "yb")
    return g.finish([("ya", ya), ("yb", yb)])


def _exact_top_weights(rng, out=3001, din=96):
    return {
        "w1": rng.standard_normal((din, din)).astype(np.float32) * 0.2,
        "b1": rng.standard_normal(din).astype(np.float32),
        "wa": rng.standard_normal((out, din)).astype(np.float16).astype(np.float32),
        "ba": rng.standard_normal(out).astype(np.float32),
        "wb": rng.standard_normal((out // 2, din)).astype(np.float32),
    }


def test_outputs_take_their_own_compute_type_and_int8_ones_an_exact_top():
    g = compute_type(_exact_top_graph(), "float32", outputs="int8")
    ops = {n.out.name: n.op for n in g.nodes if isinstance(n.op, ir.Linear)}
    assert ops["h"].compute == "float32" and ops["h"].exact_top == 0
    assert all(ops[k].compute == "int8" and ops[k].exact_top == 16 for k in ("ya", "yb"))
    assert "exact_top=16" in format_graph(g) and "exact_top" not in format_graph(_exact_top_graph())
    split = compute_type(_exact_top_graph(), "float32", outputs="int8", exact_top_splits=(1000,))
    assert "exact_top=16, exact_top_splits=[1000]" in format_graph(split)
    with pytest.raises(VerifyError, match="exact_top_splits"):
        verify(compute_type(_exact_top_graph(), "float32", outputs="int8", exact_top_splits=(2000,)))
    every = compute_type(_exact_top_graph(), "int8", exact_top=3)
    ops = {n.out.name: n.op for n in every.nodes if isinstance(n.op, ir.Linear)}
    assert ops["h"].compute == "int8" and ops["h"].exact_top == 0 and ops["ya"].exact_top == 3
    with pytest.raises(IRTypeError, match="exact_top"):
        ir.Linear(ops["h"].x, ops["h"].w, compute="float32", exact_top=4).infer_type()


def test_exact_top_makes_the_largest_outputs_float32s_where_int8_moves_them():
    """Rows built with near-ties at the top: int8's argmax differs from float32's in some, the
    exact_top result's top k equal float32's outputs in every row, and the rest stay within
    the int8 bound of float32's."""
    from kvgraph.numerics import exact_top, int8_bound

    rng = np.random.default_rng(11)
    w = rng.standard_normal((500, 64)).astype(np.float32)
    x = rng.standard_normal((400, 64)).astype(np.float32)
    w[:8] = w[8] + rng.standard_normal((8, 64)).astype(np.float32) * 1e-3  # rows 0-8 nearly tie
    q, s = quantize_int8(w)
    approx = (x @ q.T.astype(np.float32)) * s
    exact = x @ w.T
    assert (approx.argmax(-1) != exact.argmax(-1)).sum() >= 3  # int8 moves argmaxes here
    got = exact_top(approx, x, w, s, None, 4)
    top = np.argsort(exact, axis=-1)[:, -4:]
    np.testing.assert_allclose(
        np.take_along_axis(got, top, -1), np.take_along_axis(exact, top, -1), rtol=1e-5, atol=1e-5
    )
    assert (got.argmax(-1) == exact.argmax(-1)).all()
    assert (np.abs(got - exact) <= int8_bound(x, s) + 1e-4).all()
    # in groups: each group's argmax float32's (the last group's, 300 .. 499, alone too)
    grouped = exact_top(approx, x, w, s, None, 4, splits=(300,))
    for part in (slice(0, 300), slice(300, None)):
        assert (grouped[:, part].argmax(-1) == exact[:, part].argmax(-1)).all()
    assert (exact_top(approx, x, w, s, None, 4)[:, 300:].argmax(-1) != exact[:, 300:].argmax(-1)).any()


# ---------------------------------------------------------------------------------- on MAX


@functools.cache
def _int8_program():
    """A few-row linear (kvgraph's int8 GEMV) and a many-row one (the float32 GEMM over the
    integers) in one int8 program, its weights and inputs."""
    g = GraphBuilder("i8")
    xa = g.input("xa", f32(sym("b"), 1, 96))
    xb = g.input("xb", f32(sym("c"), 37, 96))
    ya = g.add(ir.Linear(xa, g.weight("i8.wa", (1001, 96)), g.weight("i8.ba", (1001,))), "ya")
    yb = g.add(ir.Linear(xb, g.weight("i8.wb", (70, 96))), "yb")
    g = compute_type(g.finish([("ya", ya), ("yb", yb)]), "int8")
    rng = np.random.default_rng(5)
    w = {
        "i8.wa": rng.standard_normal((1001, 96)).astype(np.float16).astype(np.float32),
        "i8.ba": rng.standard_normal(1001).astype(np.float32),
        "i8.wb": rng.standard_normal((70, 96)).astype(np.float32),
    }
    xs = {
        "xa": rng.standard_normal((5, 1, 96)).astype(np.float32),
        "xb": rng.standard_normal((2, 37, 96)).astype(np.float32),
    }
    return g, w, xs


@functools.cache
def _exact_top_program():
    """Two int8 output linears with exact_top (kvgraph_exact_top_f16 with a bias, _f32 without,
    the first in two groups), their float32 graph, weights and input."""
    rng = np.random.default_rng(12)
    g0, w = _exact_top_graph(), _exact_top_weights(rng)
    g = compute_type(g0, "float32", outputs="int8", exact_top_splits=(1400,))
    x = rng.standard_normal((5, 1, 96)).astype(np.float32)
    return g, g0, w, x


@functools.cache
def _bf16_program():
    """:func:`_graph` in the bfloat16 compute type (attention too), its weights and inputs."""
    rng = np.random.default_rng(3)
    g, w = compute_type(_graph(), "bfloat16", attention=True), _weights(rng)
    x = rng.standard_normal((3, 37, 100)).astype(np.float32)
    kv = rng.standard_normal((3, 45, 64)).astype(np.float32)
    return g, w, x, kv


def _merged(*parts: dict) -> dict:
    """One weights dict of several programs' (their names disjoint): the programs of one dict
    compile as one MAX Module, each further graph a fraction of a compile alone."""
    assert sum(map(len, parts)) == len({k for p in parts for k in p})
    return {k: v for p in parts for k, v in p.items()}


@functools.cache
def _together_weights() -> dict:
    """The three programs above's weights in one dict."""
    return _merged(_int8_program()[1], _exact_top_program()[2], _bf16_program()[1])


def _requests():
    from kvgraph.max.runtime import ProgramRequest

    w = _together_weights()
    return {
        "i8": ProgramRequest(_int8_program()[0], w, few_dims={"b"}),
        "et": ProgramRequest(_exact_top_program()[0], w, few_dims={"b"}),
        "mix": ProgramRequest(_bf16_program()[0], w),
    }


def _program(name: str):
    """Program ``name`` of :func:`_requests`, the three compiled in one MAX call the first time
    any is asked for (the bfloat16 one with this CPU's engine: KVGRAPH_BF16 unset); later
    calls, with the same lowering, are the in-process cache's."""
    from kvgraph.max import isa
    from kvgraph.max.runtime import load_programs

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(isa.BF16_ENV, raising=False)
        requests = _requests()
        load_programs(list(requests.values()))
        (prog,) = load_programs([requests[name]])
    return prog


@functools.cache
def _exact_top_without_kernels():
    """The exact-top test's graph without exact_top's groups, its float32 graph, weights, input."""
    rng = np.random.default_rng(13)
    g0, w = _exact_top_graph(), _exact_top_weights(rng)
    x = rng.standard_normal((2, 1, 96)).astype(np.float32)
    return compute_type(g0, "float32", outputs="int8"), g0, w, x


def _program_without_kernels(name: str, monkeypatch):
    """Program ``"et"`` (:func:`_exact_top_without_kernels`) or ``"mix"`` (bfloat16 emulated on
    float32 ops, which call no custom kernel) with the kernel package off, the two compiled in
    one MAX call the first time either is asked for. Where emulation is this CPU's own engine
    (no AVX512-BF16, no AMX: Zen 3), "mix" is :func:`_program`'s and "et" compiles alone."""
    from kvgraph.max import custom, isa
    from kvgraph.max.runtime import ProgramRequest, load_programs

    mix_too = _own_engine() != "emulate"  # this CPU's, before the package is off
    # what kernel_package() answers when KVGRAPH_CUSTOM_KERNELS=off or the build failed (it is
    # memoised per process, so setting the variable here would not reach it)
    monkeypatch.setattr(custom, "kernel_package", lambda: None)
    monkeypatch.setenv(isa.BF16_ENV, "emulate")
    w = _off_weights()
    requests = {"et": ProgramRequest(_exact_top_without_kernels()[0], w, few_dims={"b"})}
    if mix_too:
        requests["mix"] = ProgramRequest(_bf16_program()[0], w)
    load_programs(list(requests.values()))
    return load_programs([requests[name]])[0]


@functools.cache
def _off_weights() -> dict:
    """One weights dict (one Module) for :func:`_program_without_kernels`."""
    return _merged(_exact_top_without_kernels()[2], _bf16_program()[1])


def _own_engine() -> str:
    """The bfloat16 engine this CPU gets with KVGRAPH_BF16 unset."""
    from kvgraph.max import isa

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(isa.BF16_ENV, raising=False)
        return isa.bf16_engine()


def test_int8_linears_on_max_are_the_reference():
    """Both int8 linears of :func:`_int8_program` against the reference's int8 arithmetic."""
    g, w, xs = _int8_program()
    got = [o.to_numpy() for o in _program("i8")(xs["xa"], xs["xb"])]
    want = reference.run(g, w, dtype=np.float32, **xs)
    exact = reference.run(compute_type(g, "float32"), w, dtype=np.float64, **xs)
    for out, name in zip(got, ("ya", "yb")):
        err, gap = np.abs(out - want[name]).max(), np.abs(exact[name] - want[name]).max()
        assert err < 0.01 * gap, (name, err, gap)


def test_a_stored_int8_program_loads_without_quantizing(monkeypatch):
    """The program store's hit path: the registry, rebuilt from the stored recipe, reads the
    int8 weights, their transposes and scales from the store (``kvgraph.max.converted``:
    nothing is quantized), and the program computes what it did."""
    import kvgraph.max.lower as lower
    from kvgraph.max.runtime import ProgramRequest, load_programs
    from kvgraph.store import default_store

    if not default_store().enabled:
        pytest.skip("the program store is turned off")
    g, _, xs = _int8_program()
    want = [o.to_numpy() for o in _program("i8")(xs["xa"], xs["xb"])]  # the test above's program

    def refuse(*a, **k):
        raise AssertionError("quantized again")

    monkeypatch.setattr(lower, "quantize_int8", refuse)
    # another weights dict: loaded anew, from the store (the Module the program was compiled in,
    # found through its link: it binds every weight of the Module)
    again = {k: v.copy() for k, v in _together_weights().items()}
    (second,) = load_programs([ProgramRequest(g, again, few_dims={"b"})])
    assert second.source == "store"
    for out, ref in zip(second(xs["xa"], xs["xb"]), want):
        np.testing.assert_array_equal(out.to_numpy(), ref)


def test_exact_top_on_max_is_the_reference():
    """kvgraph_exact_top_f16 (a bias) and _f32 (none) after the int8 GEMV: the reference's
    outputs — float32's on every row's top 16, int8's elsewhere."""
    g, g0, w, x = _exact_top_program()
    got = [o.to_numpy() for o in _program("et")(x)]
    want = reference.run(g, w, dtype=np.float32, x=x)
    exact = reference.run(g0, w, dtype=np.float32, x=x)
    for out, name in zip(got, ("ya", "yb")):
        # each output int8's or float32's as the reference has it; one on the edge of the bound
        # may go either way (the kernel's sums and the reference's differ in the last bits)
        near = np.minimum(np.abs(out - want[name]), np.abs(out - exact[name]))
        assert near.max() < 1e-4 and (np.abs(out - want[name]) < 1e-4).mean() > 0.999, name
        for part in (slice(0, 1400), slice(1400, None)):  # each group's top 16
            e, o = exact[name][..., part], out[..., part]
            top = np.argsort(e, axis=-1)[..., -16:]
            np.testing.assert_allclose(
                np.take_along_axis(o, top, -1), np.take_along_axis(e, top, -1), rtol=1e-5, atol=1e-5
            )
        assert np.abs(out - exact[name]).max() > 1e-3  # the rest int8's, not float32's


def test_exact_top_without_the_kernels_is_float32_everywhere(monkeypatch):
    """Without the kernel package (custom kernels off, or a failed build) the int8 output
    linear runs in float32: its top outputs the ones exact_top promises, the rest float32's too."""
    _, g0, w, x = _exact_top_without_kernels()
    prog = _program_without_kernels("et", monkeypatch)
    exact = reference.run(g0, w, dtype=np.float32, x=x)
    for out, name in zip(prog(x), ("ya", "yb")):
        np.testing.assert_allclose(out.to_numpy(), exact[name], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("engine", ["amx", "avx512", "emulate"])
def test_max_runs_the_reference_arithmetic(engine, monkeypatch):
    """Each engine of bfloat16 products against the reference's bfloat16 arithmetic: the AMX
    kernels (where this CPU has AMX), the AVX512-BF16 kernels (everywhere: where the compile
    target lacks the instruction, the same kernels on float32 FMAs) and the float32-op
    emulation (it calls no custom kernel: compiled with the package off, beside the exact-top
    test's program without it) — to float32 rounding of the sums, far inside bfloat16's own error (the gap to
    float32 arithmetic)."""
    from kvgraph.max import isa
    from kvgraph.max.runtime import kernels_id, load_program

    monkeypatch.setenv(isa.BF16_ENV, engine)
    if engine == "amx" and not isa.amx():
        pytest.skip("no AMX tiles with bfloat16 on this CPU (amx_tile, amx_bf16)")
    assert kernels_id().endswith(f"/bf16-{engine}") or kernels_id() == "none"
    g, w, x, kv = _bf16_program()
    if engine == _own_engine():  # this CPU's own engine: compiled with the others
        prog = _program("mix")
    elif engine == "emulate":  # float32 ops only: compiled with the kernels-off program
        prog = _program_without_kernels("mix", monkeypatch)
    else:
        prog = load_program(g, _together_weights())
    got = prog(x, kv)[0].to_numpy()
    # a float32 reference: bfloat16 rounding amplifies float64-vs-float32 differences of the
    # sums (a value on a rounding boundary goes the other way: 4.6e-3 here, where the float32
    # reference meets the AMX kernels to 1.4e-6 and the emulation bit for bit)
    want = reference.run(g, w, dtype=np.float32, x=x, kv=kv)["y"]
    exact = reference.run(_graph(), w, dtype=np.float64, x=x, kv=kv)["y"]
    err, gap = np.abs(got - want).max(), np.abs(exact - want).max()
    assert err < 0.05 * gap, (err, gap)


def test_compile_runs_the_pass_before_its_pipeline():
    import kvgraph
    from kvgraph.spec import DecoderSpec
    from kvgraph.weights import init_weights

    spec = DecoderSpec(vocab_size=50, d_model=32, n_heads=2, n_layers=1, max_seq_len=16, mlp_hidden=64)
    dec = kvgraph.compile(spec, init_weights(spec), eager=False, compute_type="bfloat16")
    step = dec.passes.step
    linears = [n.op for n in step.nodes if isinstance(n.op, ir.Linear)]
    assert linears and all(op.compute == "bfloat16" for op in linears)
    assert format_graph(step).count("compute=bfloat16") == len(linears)
    with pytest.raises(InputError, match="compute_type='float16'"):
        kvgraph.compile(spec, {}, eager=False, compute_type="float16")


# -------------------------------------------------------------------------- the option


def test_the_cli_passes_compute_type_and_refuses_unknown_ones(tmp_path, capsys):
    import soundfile as sf

    from models.whisper.apps.cli.transcribe import main

    calls = []

    def load(name, kv_cache=True, compute_type="float32"):
        calls.append(compute_type)
        raise ValueError("stop here")

    wav = tmp_path / "a.wav"
    sf.write(str(wav), np.zeros(1600, np.float32), 16000)
    assert main([str(wav), "--compute_type", "float16", "-o", str(tmp_path)], load_backend=load) == 2
    assert "invalid choice: 'float16'" in capsys.readouterr().err and calls == []
    for mode in ("bfloat16", "int8_bfloat16"):
        assert main([str(wav), "--compute-type", mode, "-o", str(tmp_path)], load_backend=load) == 1
    assert calls == ["bfloat16", "int8_bfloat16"]


def test_the_server_passes_compute_type():
    from models.whisper.apps.cli import serve as serve_cli

    seen = []

    def load(name, **kw):
        seen.append(kw)
        raise ValueError("stop here")

    assert serve_cli.main(["--compute_type", "bfloat16"], load_model=load) == 1
    assert serve_cli.main([], load_model=load) == 1
    assert seen == [{"compute_type": "bfloat16"}, {}]
    assert serve_cli.main(["--compute_type", "float16"], load_model=load) == 2


def test_whisper_refuses_an_unknown_compute_type_before_loading():
    from models.whisper import load_backend

    with pytest.raises(
        InputError, match="one of float32, bfloat16, int8vocab, int8vocab_bfloat16, int8, int8_float32"
    ):
        load_backend("tiny.en", compute_type="float16")
    assert COMPUTE_TYPES[0] == "float32"
