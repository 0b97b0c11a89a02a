# An int8 linear's largest outputs recomputed in float32 (ir.Linear's exact_top: a vocabulary
# projection on int8 weights whose top outputs, and so its argmax, are float32's).
#
#   y   f32[n, out]   the int8 linear's outputs:  s[j] * sum_i x[i] q[j, i] + bias[j]
#   x   f32[n, in]    its inputs
#   w   f16/f32[out, in]  the float weight the int8 one was quantized from
#   s   f32[out]      the int8 rows' scales
#
# Rounding moves each weight by at most s[j] / 2, so |y[j] - exact[j]| <= B[j] with
# B[j] = c * s[j] * sum_i |x[i]|, c = (1 + slack) / 2 (the slack covers the float32 rounding of
# the int8 sums). An output may rank among the k largest exact ones only if its upper bound
# y + B reaches the k-th largest lower bound y - B (per group of outputs, `edges`): those are recomputed as
# x . w[j] + bias[j] in float32 (a few per row), the rest copied. The NumPy reference does the
# same (kvgraph/numerics.py exact_top; c is passed by the lowering from there).

from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc


comptime W = 16  # float32 lanes of the loops (AVX-512 one register, AVX2 two, NEON four)


@always_inline
def _row[WT: DType, k: Int, has_bias: Bool](
    r: Int, n_out: Int, n_in: Int, c: Float32,
    ep: UnsafePointer[Int64, MutAnyOrigin],
    groups: Int,
    yp: UnsafePointer[Float32, MutAnyOrigin],
    xp: UnsafePointer[Float32, MutAnyOrigin],
    wp: UnsafePointer[Scalar[WT], MutAnyOrigin],
    sp: UnsafePointer[Float32, MutAnyOrigin],
    bp: UnsafePointer[Float32, MutAnyOrigin],
    op: UnsafePointer[Float32, MutAnyOrigin],
):
    var x = xp + r * n_in
    var y = yp + r * n_out
    var o = op + r * n_out
    var xa = Float32(0)
    for i in range(n_in):
        xa += abs(x.unsafe_load[width=1](i)[0])
    var cb = c * xa  # B[j] = cb * s[j]
    for g in range(groups):
        var g0 = Int(ep.unsafe_load[width=1](g)[0])
        var g1 = Int(ep.unsafe_load[width=1](g + 1)[0])
        _group[WT, k, has_bias](g0, g1, n_in, cb, x, y, wp, sp, bp, o)


@always_inline
def _group[WT: DType, k: Int, has_bias: Bool](
    g0: Int, g1: Int, n_in: Int, cb: Float32,
    x: UnsafePointer[Float32, MutAnyOrigin],
    y: UnsafePointer[Float32, MutAnyOrigin],
    wp: UnsafePointer[Scalar[WT], MutAnyOrigin],
    sp: UnsafePointer[Float32, MutAnyOrigin],
    bp: UnsafePointer[Float32, MutAnyOrigin],
    o: UnsafePointer[Float32, MutAnyOrigin],
):
    """Outputs g0 .. g1 - 1 of one row: copied, those that may rank among the group's k
    largest recomputed."""
    # the k largest lower bounds, best[0] the smallest of them (kept sorted ascending); a
    # vector of W outputs is looked at one by one only when one of them beats best[0]
    var best = alloc[Float32](k)
    var have = 0
    var j0 = g0
    while j0 < g1:
        var m = min(W, g1 - j0)
        if m == W:
            var yv = y.unsafe_load[width=W](j0)
            o.unsafe_store(j0, yv)
            if have == k:
                var lov = yv - sp.unsafe_load[width=W](j0) * cb
                if not lov.gt(SIMD[DType.float32, W](best.unsafe_load[width=1](0)[0])).reduce_or():
                    j0 += W
                    continue
        else:
            for j in range(j0, j0 + m):
                o.unsafe_store(j, y.unsafe_load[width=1](j))
        for j in range(j0, j0 + m):
            var lo = y.unsafe_load[width=1](j)[0] - sp.unsafe_load[width=1](j)[0] * cb
            if have < k:
                var p = have
                while p > 0 and best.unsafe_load[width=1](p - 1)[0] > lo:
                    best.unsafe_store(p, best.unsafe_load[width=1](p - 1))
                    p -= 1
                best.unsafe_store(p, lo)
                have += 1
            elif lo > best.unsafe_load[width=1](0)[0]:
                var p = 0
                while p + 1 < k and best.unsafe_load[width=1](p + 1)[0] < lo:
                    best.unsafe_store(p, best.unsafe_load[width=1](p + 1))
                    p += 1
                best.unsafe_store(p, lo)
        j0 += W
    var kth = best.unsafe_load[width=1](0)[0]
    best.unsafe_free()
    j0 = g0
    while j0 < g1:
        var m = min(W, g1 - j0)
        if m == W:
            var hiv = y.unsafe_load[width=W](j0) + sp.unsafe_load[width=W](j0) * cb
            if not hiv.ge(SIMD[DType.float32, W](kth)).reduce_or():
                j0 += W
                continue
        for j in range(j0, j0 + m):
            var hi = y.unsafe_load[width=1](j)[0] + sp.unsafe_load[width=1](j)[0] * cb
            if hi >= kth:
                o.unsafe_store(j, _dot[WT, has_bias](x, wp + j * n_in, n_in, bp, j))
        j0 += W


@always_inline
def _dot[WT: DType, has_bias: Bool](
    x: UnsafePointer[Float32, MutAnyOrigin],
    row: UnsafePointer[Scalar[WT], MutAnyOrigin],
    n_in: Int,
    bp: UnsafePointer[Float32, MutAnyOrigin],
    j: Int,
) -> Float32:
    """x . row (+ bias[j]) in float32."""
    var acc = SIMD[DType.float32, W](0)
    var i = 0
    while i + W <= n_in:
        acc += x.unsafe_load[width=W](i) * row.unsafe_load[width=W](i).cast[DType.float32]()
        i += W
    var tot = acc.reduce_add()
    while i < n_in:
        tot += x.unsafe_load[width=1](i)[0] * row.unsafe_load[width=1](i)[0].cast[DType.float32]()
        i += 1
    comptime if has_bias:
        tot += bp.unsafe_load[width=1](j)[0]
    return tot


def exact_top[WT: DType, k: Int, has_bias: Int](
    output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
    y: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
    x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
    w: InputTensor[dtype=WT, rank=2, static_spec=_],
    s: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
    bias: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
    c_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
    edges: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
) raises:
    comptime assert k >= 1, "exact_top: k must be positive"
    var n = y.dim_size(0)
    var n_out = y.dim_size(1)
    var n_in = x.dim_size(1)
    if x.dim_size(0) != n or w.dim_size(0) != n_out or w.dim_size(1) != n_in or s.dim_size(0) != n_out:
        raise Error("kvgraph_exact_top: y, x, w and s do not match")
    if has_bias != 0 and bias.dim_size(0) != n_out:
        raise Error("kvgraph_exact_top: the bias does not match")
    var c = c_t.unsafe_ptr().unsafe_load[width=1](0)[0]
    var groups = edges.dim_size(0) - 1
    var ep = rebind[UnsafePointer[Int64, MutAnyOrigin]](edges.unsafe_ptr())
    if groups < 1 or Int(ep.unsafe_load[width=1](0)[0]) != 0 or Int(ep.unsafe_load[width=1](groups)[0]) != n_out:
        raise Error("kvgraph_exact_top: the groups do not cover the outputs")
    for g in range(groups):
        if ep.unsafe_load[width=1](g)[0] >= ep.unsafe_load[width=1](g + 1)[0]:
            raise Error("kvgraph_exact_top: empty or unordered groups")
    var yp = rebind[UnsafePointer[Float32, MutAnyOrigin]](y.unsafe_ptr())
    var xp = rebind[UnsafePointer[Float32, MutAnyOrigin]](x.unsafe_ptr())
    var wp = rebind[UnsafePointer[Scalar[WT], MutAnyOrigin]](w.unsafe_ptr())
    var sp = rebind[UnsafePointer[Float32, MutAnyOrigin]](s.unsafe_ptr())
    var bp = rebind[UnsafePointer[Float32, MutAnyOrigin]](bias.unsafe_ptr())
    var op = rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr())

    def work(r: Int) {imm}:
        _row[WT, k, has_bias != 0](r, n_out, n_in, c, ep, groups, yp, xp, wp, sp, bp, op)

    sync_parallelize(work, num_work_items=n)


@register("kvgraph_exact_top_f16")
struct ExactTopF16:
    @staticmethod
    def execute[target: StaticString, k: Int, has_bias: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        y: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.float16, rank=2, static_spec=_],
        s: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        bias: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        c: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        edges: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_exact_top_f16 runs on the CPU only")
        exact_top[DType.float16, k, has_bias](output, y, x, w, s, bias, c, edges)


@register("kvgraph_exact_top_f32")
struct ExactTopF32:
    @staticmethod
    def execute[target: StaticString, k: Int, has_bias: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        y: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        s: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        bias: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        c: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        edges: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_exact_top_f32 runs on the CPU only")
        exact_top[DType.float32, k, has_bias](output, y, x, w, s, bias, c, edges)
