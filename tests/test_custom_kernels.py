"""kvgraph's custom MAX kernels: the package builds (once, into the cache folder, atomically),
turns off cleanly, and the few-row float16 GEMV equals ``x @ w.T`` for any row count."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from tolerance import F32_PASS, assert_close

from kvgraph.max import custom


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("KVGRAPH_CACHE_DIR", str(tmp_path))
    custom.kernel_package.cache_clear()
    yield tmp_path
    custom.kernel_package.cache_clear()


def test_builds_once_into_the_cache_folder(fresh):
    pkg = custom.kernel_package()
    assert pkg is not None and pkg.is_file() and pkg.name == "kvgraph_kernels.mojoc"
    assert pkg.parent.parent == fresh / "kernels"
    assert not list(pkg.parent.glob(".build-*"))  # the temporary build folder is gone
    mtime = pkg.stat().st_mtime_ns
    custom.kernel_package.cache_clear()
    assert custom.kernel_package() == pkg and pkg.stat().st_mtime_ns == mtime  # found, not rebuilt


def test_source_change_means_a_new_package(fresh, monkeypatch, tmp_path_factory):
    src = tmp_path_factory.mktemp("src") / "kvgraph_kernels"
    src.mkdir()
    for f in custom.SOURCE.glob("*.mojo"):
        (src / f.name).write_text(f.read_text())
    monkeypatch.setattr(custom, "SOURCE", src)
    a = custom.source_hash(custom._mojo())
    (src / "gemv.mojo").write_text((src / "gemv.mojo").read_text() + "\n# edited\n")
    assert custom.source_hash(custom._mojo()) != a


def test_off_and_broken_compiler_fall_back_to_max_ops(fresh, monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("KVGRAPH_CUSTOM_KERNELS", "off")
    assert custom.kernel_package() is None
    monkeypatch.delenv("KVGRAPH_CUSTOM_KERNELS")
    custom.kernel_package.cache_clear()
    bad = tmp_path / "mojo"
    bad.write_text("#!/bin/sh\necho 'error: broken compiler' >&2\nexit 3\n")
    bad.chmod(0o755)
    monkeypatch.setattr(custom, "_mojo", lambda: bad)
    with caplog.at_level(logging.WARNING, logger="kvgraph"):
        assert custom.kernel_package() is None
    assert "broken compiler" in caplog.text
    assert not list((fresh / "kernels").rglob("*.mojoc"))  # nothing half-written


@pytest.mark.max
def test_gemv_once_equals_matmul_for_any_rows():
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import session

    pkg = custom.kernel_package()
    assert pkg is not None
    n, k = 203, 48  # n not a multiple of the 4-row blocks: the tail path runs too
    cpu = DeviceRef.CPU()
    types = [
        TensorType(DType.float32, ["b", "s", k], device=cpu),
        TensorType(DType.float16, [n, k], device=cpu),
        TensorType(DType.float32, [n], device=cpu),
    ]
    with Graph("gemv_once_test", input_types=types, custom_extensions=[pkg]) as g:
        x, w, b = (v.tensor for v in g.inputs)
        g.output(K.linear_gemv_once(x, w, b))
    model = session().load(g)
    rng = np.random.default_rng(0)
    w16 = rng.standard_normal((n, k)).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float32)
    for rows, seq in [
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
        (12, 1),
        (13, 1),
        (16, 1),
        (17, 1),
        (3, 2),
    ]:
        x = rng.standard_normal((rows, seq, k)).astype(np.float32)
        got = model.execute(Buffer.from_numpy(x), Buffer.from_numpy(w16), Buffer.from_numpy(bias))[0]
        ref = x.astype(np.float64) @ w16.astype(np.float64).T + bias
        assert_close(got.to_numpy(), ref, F32_PASS, what=f"gemv_once rows={rows}x{seq}")


def _attention_reference(q, k, v, heads, kv_heads, scale):
    """float64 softmax(scale * q k^T) v per head, query head h on KV head h // group."""
    c, rows, hd = q.shape
    dh = hd // heads
    group = heads // kv_heads
    out = np.zeros((c, rows, hd))
    for h in range(heads):
        g = h // group
        qh = q[:, :, h * dh : (h + 1) * dh].astype(np.float64)
        kh = k[:, :, g * dh : (g + 1) * dh].astype(np.float64)
        vh = v[:, :, g * dh : (g + 1) * dh].astype(np.float64)
        s = scale * qh @ kh.transpose(0, 2, 1)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, :, h * dh : (h + 1) * dh] = (p / p.sum(-1, keepdims=True)) @ vh
    return out


@pytest.mark.max
def test_attend_equals_softmax_attention():
    """The few-row context attention against a float64 reference: row counts across its
    tile sizes (1 .. 9 rows; tiles of 4 rows at head size 64, 2 at 128), several contexts,
    grouped-query heads, a context length that is not a multiple of 16."""
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import DeviceRef, Graph, TensorType

    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import session

    pkg = custom.kernel_package()
    assert pkg is not None
    cpu = DeviceRef.CPU()
    rng = np.random.default_rng(1)
    for heads, kv_heads, dh, scale in [(6, 6, 64, 0.125), (4, 2, 128, 0.09), (2, 1, 64, 0.3)]:
        types = [
            TensorType(DType.float32, ["c", "r", heads * dh], device=cpu),
            TensorType(DType.float32, ["c", "t", kv_heads * dh], device=cpu),
            TensorType(DType.float32, ["c", "t", kv_heads * dh], device=cpu),
        ]
        with Graph(f"attend_test_{heads}_{kv_heads}_{dh}", input_types=types, custom_extensions=[pkg]) as g:
            q, k, v = (x.tensor for x in g.inputs)
            g.output(K.attention_context(q, k, v, heads, kv_heads, False, None, scale))
        model = session().load(g)
        for c, rows, sk in [(1, 1, 1500), (1, 5, 37), (3, 2, 100), (2, 9, 7), (1, 4, 16), (2, 3, 1)]:
            q = rng.standard_normal((c, rows, heads * dh)).astype(np.float32)
            k = rng.standard_normal((c, sk, kv_heads * dh)).astype(np.float32)
            v = rng.standard_normal((c, sk, kv_heads * dh)).astype(np.float32)
            got = model.execute(*(Buffer.from_numpy(a) for a in (q, k, v)))[0].to_numpy()
            ref = _attention_reference(q, k, v, heads, kv_heads, scale)
            assert_close(
                got, ref, F32_PASS, what=f"attend heads={heads}/{kv_heads} dh={dh} c={c} rows={rows} sk={sk}"
            )


@pytest.mark.max
def test_cache_attend_and_store_rows_equal_the_reference():
    """The step kernels over cache buffers read in place: ``store_rows`` writes each row's new
    K/V at its own position (nothing else changes), then ``attention_cache`` attends causally
    over rows ``[0, end)``: rows at unequal positions (one position for all, too), one or
    several new tokens, grouped-query heads, stale values past each row's position (which
    the mask must hide), a view shorter than the capacity."""
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import BufferType, DeviceRef, Graph, TensorType, ops

    from kvgraph.max import kernels as K
    from kvgraph.max.runtime import session

    pkg = custom.kernel_package()
    assert pkg is not None
    cpu = DeviceRef.CPU()
    rng = np.random.default_rng(2)
    cap = 40
    cases = [(6, 6, 64, 0.125, True), (4, 2, 128, 0.09, True), (2, 1, 64, 0.3, False)]
    for heads, kv_heads, dh, scale, per_row in cases:
        w, kw = heads * dh, kv_heads * dh
        types = [
            TensorType(DType.float32, ["b", "s", w], device=cpu),
            TensorType(DType.float32, ["b", "s", kw], device=cpu),
            TensorType(DType.float32, ["b", "s", kw], device=cpu),
            TensorType(DType.int64, ["b"] if per_row else [], device=cpu),
            BufferType(DType.float32, ["b", cap, kw], device=cpu),
            BufferType(DType.float32, ["b", cap, kw], device=cpu),
        ]
        name = f"cache_attend_test_{heads}_{kv_heads}_{dh}_{per_row}"
        with Graph(name, input_types=types, custom_extensions=[pkg]) as g:
            q, kn, vn, past = (x.tensor for x in g.inputs[:4])
            kc, vc = g.inputs[4].buffer, g.inputs[5].buffer
            s = K._scalar_dim(kn.shape[1])
            if per_row:
                K.store_rows(kc, kn, past)
                K.store_rows(vc, vn, past)
                end = ops.reshape(ops.max(past, axis=0), []) + s
            else:
                sl = [slice(None), (slice(past, past + s), kn.shape[1]), slice(None)]
                ops.buffer_store_slice(kc, kn, sl)
                ops.buffer_store_slice(vc, vn, sl)
                end = past + s
            g.output(K.attention_cache(q, kc, vc, heads, kv_heads, past, end, scale))
        model = session().load(g)
        for pasts, sq in [([0], 1), ([5, 0, 17], 1), ([3, 9], 3), ([12, 12, 12, 12, 12], 1), ([36], 4)]:
            if not per_row:
                pasts = [pasts[0]] * len(pasts)
            b = len(pasts)
            q = rng.standard_normal((b, sq, w)).astype(np.float32)
            kn, vn = (rng.standard_normal((b, sq, kw)).astype(np.float32) for _ in range(2))
            kc, vc = (rng.standard_normal((b, cap, kw)).astype(np.float32) for _ in range(2))  # stale
            kc0, vc0 = kc.copy(), vc.copy()
            p = np.array(pasts, np.int64)
            args = [q, kn, vn, p if per_row else np.array(p[0]), kc, vc]
            got = model.execute(*(Buffer.from_numpy(a) for a in args))[0].to_numpy()
            ref = np.zeros((b, sq, w))
            for r in range(b):
                kc0[r, p[r] : p[r] + sq], vc0[r, p[r] : p[r] + sq] = kn[r], vn[r]
                for i in range(sq):  # query i of row r sees keys [0, p[r] + i]
                    n = p[r] + i + 1
                    one = _attention_reference(
                        q[r : r + 1, i : i + 1],
                        kc0[r : r + 1, :n],
                        vc0[r : r + 1, :n],
                        heads,
                        kv_heads,
                        scale,
                    )
                    ref[r, i] = one[0, 0]
            np.testing.assert_array_equal(kc, kc0, err_msg=f"{name}: K cache after the store")
            np.testing.assert_array_equal(vc, vc0, err_msg=f"{name}: V cache after the store")
            assert_close(got, ref, F32_PASS, what=f"{name} pasts={pasts} s={sq}")


@pytest.mark.max
def test_a_cache_view_read_before_a_later_store_keeps_its_values():
    """A step program where a cache is written again after its view was taken and before
    the attention reads the view (functional IR: the view is of the first store's result).
    On MAX every store writes the same buffer, so the lowering must load that view before the
    second store instead of letting the kernel read the buffer in place afterwards. Compared
    with the reference interpreter."""
    import kvgraph.reference
    from kvgraph import ir
    from kvgraph.max.runtime import load_program
    from kvgraph.types import TensorType as T
    from kvgraph.types import sym

    cap, w = 8, 64
    gb = ir.GraphBuilder("late_store")
    q = gb.input("q", T("f32", (sym("b"), 1, w)))
    kn = gb.input("kn", T("f32", (sym("b"), 1, w)))
    vn = gb.input("vn", T("f32", (sym("b"), 1, w)))
    k2 = gb.input("k2", T("f32", (sym("b"), 1, w)))
    past = gb.input("past", T("i64", ()))
    kc = gb.input("cache.k", T("f32", (sym("b"), cap, w)))
    vc = gb.input("cache.v", T("f32", (sym("b"), cap, w)))
    ks = gb.add(ir.CacheStore(kc, kn, past), "k_store")
    vs = gb.add(ir.CacheStore(vc, vn, past), "v_store")
    kview = gb.add(ir.CacheView(ks, kn, past), "k_all")
    vview = gb.add(ir.CacheView(vs, vn, past), "v_all")
    ks2 = gb.add(ir.CacheStore(ks, k2, past), "k_again")  # overwrites the row just viewed
    att = gb.add(ir.Attention(q, kview, vview, 1, 1, True, 0.125, past), "attn")
    g = gb.finish([("attn", att), ("cache.k", ks2), ("cache.v", vs)])
    prog = load_program(g, {}, few_dims={"b"}, always_few=True)
    rng = np.random.default_rng(3)
    b, p = 2, 5
    args = {n: rng.standard_normal((b, 1, w)).astype(np.float32) for n in ("q", "kn", "vn", "k2")}
    args["past"] = np.array(p, np.int64)
    args["cache.k"], args["cache.v"] = (rng.standard_normal((b, cap, w)).astype(np.float32) for _ in range(2))
    ref = kvgraph.reference.run(g, {}, np.float64, **args)
    arrays = {n: a.copy() for n, a in args.items()}
    got = prog.results([arrays[n] for n in prog.input_names], prog(*[arrays[n] for n in prog.input_names]))
    assert_close(
        got["attn"].to_numpy(), ref["attn"], F32_PASS, what="attention over the view taken before the store"
    )
    np.testing.assert_array_equal(arrays["cache.k"][:, p], args["k2"][:, 0])  # the late store landed
