# A few-row GEMV over a float16 weight that reads each weight once for all rows.
#
#   out[r, j] = sum_k x[r, k] * float32(w[j, k])      x f32[m, k], w f16[n, k], out f32[m, k]
#
# The arithmetic is float32 (the float16 values widen exactly), so the result is that of
# the float32 weight. MAX's own few-row form (a fused broadcast-multiply-sum) streams the
# weight once per row; here each task widens a block of 4 weight rows into a small
# float32 buffer once, then runs every input row against it in 4x4 register tiles
# (rows padded to a multiple of 4 with zeros), so the weight crosses the memory bus once
# whatever m is. The sum order over k differs from a GEMM's: results agree to float32
# rounding, not bit for bit. k must be a multiple of W (the lowering checks).
# The 4x4 tile is unrolled by hand (16 accumulators): Mojo 1.2 has no register array a
# loop can index.

from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc

comptime W = 16
comptime TASKS = 64  # at most; at least MIN_PER outputs each (a task costs ~µs to start)
comptime MIN_PER = 128


@register("kvgraph_gemv_f16")
struct GemvF16:
    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.float16, rank=2, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        var m = x.dim_size(0)
        var k = x.dim_size(1)
        var n = w.dim_size(0)
        if k % W != 0 or w.dim_size(1) != k:
            raise Error("kvgraph_gemv_f16: the inner dim must match and be a multiple of 16")
        var mp = (m + 3) // 4 * 4
        var xp = x.unsafe_ptr()
        var xb = alloc[Float32](mp * k)
        for i in range(mp * k):
            xb[i] = xp[i] if i < m * k else Float32(0)
        var wp = w.unsafe_ptr()
        var op = output.unsafe_ptr()
        var per = max(MIN_PER, ((n + TASKS - 1) // TASKS + 3) // 4 * 4)
        var tasks = (n + per - 1) // per

        def work(c: Int) {imm}:
            var j0 = c * per
            var j1 = min(n, j0 + per)
            var wf = alloc[Float32](4 * k)
            var j = j0
            while j + 4 <= j1:
                for i in range(0, 4 * k, W):
                    wf.unsafe_store(i, wp.unsafe_load[width=W](j * k + i).cast[DType.float32]())
                var r = 0
                while r < m:
                    var a00 = SIMD[DType.float32, W](0)
                    var a01 = SIMD[DType.float32, W](0)
                    var a02 = SIMD[DType.float32, W](0)
                    var a03 = SIMD[DType.float32, W](0)
                    var a10 = SIMD[DType.float32, W](0)
                    var a11 = SIMD[DType.float32, W](0)
                    var a12 = SIMD[DType.float32, W](0)
                    var a13 = SIMD[DType.float32, W](0)
                    var a20 = SIMD[DType.float32, W](0)
                    var a21 = SIMD[DType.float32, W](0)
                    var a22 = SIMD[DType.float32, W](0)
                    var a23 = SIMD[DType.float32, W](0)
                    var a30 = SIMD[DType.float32, W](0)
                    var a31 = SIMD[DType.float32, W](0)
                    var a32 = SIMD[DType.float32, W](0)
                    var a33 = SIMD[DType.float32, W](0)
                    for kk in range(0, k, W):
                        var w0 = wf.unsafe_load[width=W](0 * k + kk)
                        var w1 = wf.unsafe_load[width=W](1 * k + kk)
                        var w2 = wf.unsafe_load[width=W](2 * k + kk)
                        var w3 = wf.unsafe_load[width=W](3 * k + kk)
                        var x0 = xb.unsafe_load[width=W]((r + 0) * k + kk)
                        a00 += x0 * w0
                        a01 += x0 * w1
                        a02 += x0 * w2
                        a03 += x0 * w3
                        var x1 = xb.unsafe_load[width=W]((r + 1) * k + kk)
                        a10 += x1 * w0
                        a11 += x1 * w1
                        a12 += x1 * w2
                        a13 += x1 * w3
                        var x2 = xb.unsafe_load[width=W]((r + 2) * k + kk)
                        a20 += x2 * w0
                        a21 += x2 * w1
                        a22 += x2 * w2
                        a23 += x2 * w3
                        var x3 = xb.unsafe_load[width=W]((r + 3) * k + kk)
                        a30 += x3 * w0
                        a31 += x3 * w1
                        a32 += x3 * w2
                        a33 += x3 * w3
                    op.unsafe_store((r + 0) * n + j + 0, a00.reduce_add())
                    op.unsafe_store((r + 0) * n + j + 1, a01.reduce_add())
                    op.unsafe_store((r + 0) * n + j + 2, a02.reduce_add())
                    op.unsafe_store((r + 0) * n + j + 3, a03.reduce_add())
                    if r + 1 < m:
                        op.unsafe_store((r + 1) * n + j + 0, a10.reduce_add())
                    if r + 1 < m:
                        op.unsafe_store((r + 1) * n + j + 1, a11.reduce_add())
                    if r + 1 < m:
                        op.unsafe_store((r + 1) * n + j + 2, a12.reduce_add())
                    if r + 1 < m:
                        op.unsafe_store((r + 1) * n + j + 3, a13.reduce_add())
                    if r + 2 < m:
                        op.unsafe_store((r + 2) * n + j + 0, a20.reduce_add())
                    if r + 2 < m:
                        op.unsafe_store((r + 2) * n + j + 1, a21.reduce_add())
                    if r + 2 < m:
                        op.unsafe_store((r + 2) * n + j + 2, a22.reduce_add())
                    if r + 2 < m:
                        op.unsafe_store((r + 2) * n + j + 3, a23.reduce_add())
                    if r + 3 < m:
                        op.unsafe_store((r + 3) * n + j + 0, a30.reduce_add())
                    if r + 3 < m:
                        op.unsafe_store((r + 3) * n + j + 1, a31.reduce_add())
                    if r + 3 < m:
                        op.unsafe_store((r + 3) * n + j + 2, a32.reduce_add())
                    if r + 3 < m:
                        op.unsafe_store((r + 3) * n + j + 3, a33.reduce_add())
                    r += 4
                j += 4
            while j < j1:
                for r in range(m):
                    var acc = SIMD[DType.float32, W](0)
                    for kk in range(0, k, W):
                        var wv = wp.unsafe_load[width=W](j * k + kk).cast[DType.float32]()
                        acc += xb.unsafe_load[width=W](r * k + kk) * wv
                    op.unsafe_store(r * n + j, acc.reduce_add())
                j += 1
            wf.free()

        sync_parallelize(work, num_work_items=tasks)
        xb.free()
