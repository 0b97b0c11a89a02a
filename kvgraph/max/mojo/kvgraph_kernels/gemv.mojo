# A few-row GEMV over a float16 weight that reads each weight once for all rows.
#
#   out[r, j] = sum_k x[r, k] * float32(w[j, k])      x f32[m, k], w f16[n, k], out f32[m, n]
#
# The arithmetic is float32 (the float16 values widen exactly), so the result is that of
# the float32 weight. MAX's own few-row form (a fused broadcast-multiply-sum) streams the
# weight once per row; here each task takes blocks of 4 weight rows (outputs) and runs the
# input rows against each block in register tiles of up to R_MAX rows x 4 outputs, so the
# weight crosses the memory bus once whatever m is. The block is widened to float32 into a
# small buffer (L1) that the tiles read: up to 2 tiles in a streaming pass of its own first;
# with more tiles, by the first tile as it computes, so that the block's memory traffic
# overlaps arithmetic (measured faster each way on the 2-core AMD EPYC, Zen 5).
# Tiles have balanced heights and no zero padding: 5 beams cost 5 rows of arithmetic.
# The sum order over k differs from a GEMM's: results agree to float32 rounding, not bit
# for bit. k must be a multiple of the vector width (the lowering checks).
#
# Per instruction-set class (the lowering passes `lanes` and `regs`, see kvgraph/max/isa.py):
# a tile holds R x 4 accumulators, 4 weight vectors and 1 row vector, so
# R_MAX = min(6, (regs - 5) // 4): AVX-512 (16 lanes, 32 zmm) 6 rows (29 registers),
# AVX2 (8 lanes, 16 ymm) 2 rows (13), NEON (4 lanes, 32 v) 6 rows. A register file too
# small for one row is refused when the kernel compiles (never a zero tile).
# The tile is unrolled by hand (6 x 4 named accumulators, rows past R dropped at compile
# time): this Mojo has no register array a loop can index.

from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc

comptime TASKS = 64  # at most, of at least MIN_PER outputs each
comptime MIN_PER = 96  # a 384-output projection in 4 tasks (a task costs a few us to start)


def tile_rows[regs: Int]() -> Int:
    """Rows of a register tile: R x 4 accumulators + 4 weight vectors + 1 row vector."""
    return min(6, (regs - 5) // 4)


# One R x 4 tile: rows r .. r+R of x against outputs j .. j+4. WIDEN: read the float16
# block and keep its float32 values in wf as it goes; otherwise read wf.
@always_inline
def tile[WT: DType, W: Int, R: Int, WIDEN: Bool](
    op: UnsafePointer[Float32, MutAnyOrigin],
    xp: UnsafePointer[Float32, MutAnyOrigin],
    wp: UnsafePointer[Scalar[WT], MutAnyOrigin],
    wf: UnsafePointer[Float32, MutAnyOrigin],
    r: Int,
    j: Int,
    n: Int,
    k: Int,
):
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
    var a40 = SIMD[DType.float32, W](0)
    var a41 = SIMD[DType.float32, W](0)
    var a42 = SIMD[DType.float32, W](0)
    var a43 = SIMD[DType.float32, W](0)
    var a50 = SIMD[DType.float32, W](0)
    var a51 = SIMD[DType.float32, W](0)
    var a52 = SIMD[DType.float32, W](0)
    var a53 = SIMD[DType.float32, W](0)
    for kk in range(0, k, W):
        var w0: SIMD[DType.float32, W]
        var w1: SIMD[DType.float32, W]
        var w2: SIMD[DType.float32, W]
        var w3: SIMD[DType.float32, W]
        comptime if WIDEN:
            w0 = wp.unsafe_load[width=W]((j + 0) * k + kk).cast[DType.float32]()
            w1 = wp.unsafe_load[width=W]((j + 1) * k + kk).cast[DType.float32]()
            w2 = wp.unsafe_load[width=W]((j + 2) * k + kk).cast[DType.float32]()
            w3 = wp.unsafe_load[width=W]((j + 3) * k + kk).cast[DType.float32]()
            wf.unsafe_store(0 * k + kk, w0)
            wf.unsafe_store(1 * k + kk, w1)
            wf.unsafe_store(2 * k + kk, w2)
            wf.unsafe_store(3 * k + kk, w3)
        else:
            w0 = wf.unsafe_load[width=W](0 * k + kk)
            w1 = wf.unsafe_load[width=W](1 * k + kk)
            w2 = wf.unsafe_load[width=W](2 * k + kk)
            w3 = wf.unsafe_load[width=W](3 * k + kk)
        var x0 = xp.unsafe_load[width=W]((r + 0) * k + kk)
        a00 += x0 * w0
        a01 += x0 * w1
        a02 += x0 * w2
        a03 += x0 * w3
        comptime if R > 1:
            var x1 = xp.unsafe_load[width=W]((r + 1) * k + kk)
            a10 += x1 * w0
            a11 += x1 * w1
            a12 += x1 * w2
            a13 += x1 * w3
        comptime if R > 2:
            var x2 = xp.unsafe_load[width=W]((r + 2) * k + kk)
            a20 += x2 * w0
            a21 += x2 * w1
            a22 += x2 * w2
            a23 += x2 * w3
        comptime if R > 3:
            var x3 = xp.unsafe_load[width=W]((r + 3) * k + kk)
            a30 += x3 * w0
            a31 += x3 * w1
            a32 += x3 * w2
            a33 += x3 * w3
        comptime if R > 4:
            var x4 = xp.unsafe_load[width=W]((r + 4) * k + kk)
            a40 += x4 * w0
            a41 += x4 * w1
            a42 += x4 * w2
            a43 += x4 * w3
        comptime if R > 5:
            var x5 = xp.unsafe_load[width=W]((r + 5) * k + kk)
            a50 += x5 * w0
            a51 += x5 * w1
            a52 += x5 * w2
            a53 += x5 * w3
    op.unsafe_store((r + 0) * n + j + 0, a00.reduce_add())
    op.unsafe_store((r + 0) * n + j + 1, a01.reduce_add())
    op.unsafe_store((r + 0) * n + j + 2, a02.reduce_add())
    op.unsafe_store((r + 0) * n + j + 3, a03.reduce_add())
    comptime if R > 1:
        op.unsafe_store((r + 1) * n + j + 0, a10.reduce_add())
        op.unsafe_store((r + 1) * n + j + 1, a11.reduce_add())
        op.unsafe_store((r + 1) * n + j + 2, a12.reduce_add())
        op.unsafe_store((r + 1) * n + j + 3, a13.reduce_add())
    comptime if R > 2:
        op.unsafe_store((r + 2) * n + j + 0, a20.reduce_add())
        op.unsafe_store((r + 2) * n + j + 1, a21.reduce_add())
        op.unsafe_store((r + 2) * n + j + 2, a22.reduce_add())
        op.unsafe_store((r + 2) * n + j + 3, a23.reduce_add())
    comptime if R > 3:
        op.unsafe_store((r + 3) * n + j + 0, a30.reduce_add())
        op.unsafe_store((r + 3) * n + j + 1, a31.reduce_add())
        op.unsafe_store((r + 3) * n + j + 2, a32.reduce_add())
        op.unsafe_store((r + 3) * n + j + 3, a33.reduce_add())
    comptime if R > 4:
        op.unsafe_store((r + 4) * n + j + 0, a40.reduce_add())
        op.unsafe_store((r + 4) * n + j + 1, a41.reduce_add())
        op.unsafe_store((r + 4) * n + j + 2, a42.reduce_add())
        op.unsafe_store((r + 4) * n + j + 3, a43.reduce_add())
    comptime if R > 5:
        op.unsafe_store((r + 5) * n + j + 0, a50.reduce_add())
        op.unsafe_store((r + 5) * n + j + 1, a51.reduce_add())
        op.unsafe_store((r + 5) * n + j + 2, a52.reduce_add())
        op.unsafe_store((r + 5) * n + j + 3, a53.reduce_add())


# A tile of `rows` (1 .. R_MAX) rows, dispatched to its compile-time height.
@always_inline
def tiles[WT: DType, W: Int, R_MAX: Int, WIDEN: Bool](
    op: UnsafePointer[Float32, MutAnyOrigin],
    xp: UnsafePointer[Float32, MutAnyOrigin],
    wp: UnsafePointer[Scalar[WT], MutAnyOrigin],
    wf: UnsafePointer[Float32, MutAnyOrigin],
    r: Int,
    rows: Int,
    j: Int,
    n: Int,
    k: Int,
):
    comptime for h in range(1, R_MAX + 1):
        if rows == h:
            tile[WT, W, h, WIDEN](op, xp, wp, wf, r, j, n, k)


def gemv[WT: DType, lanes: Int, regs: Int, name: StaticString](
    output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
    x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
    w: InputTensor[dtype=WT, rank=2, static_spec=_],
) raises:
    comptime W = lanes
    comptime R_MAX = tile_rows[regs]()
    comptime assert R_MAX >= 1, name + ": fewer than 9 vector registers hold no tile"
    comptime assert W == 4 or W == 8 or W == 16, name + ": lanes must be 4, 8 or 16"
    var m = x.dim_size(0)
    var k = x.dim_size(1)
    var n = w.dim_size(0)
    if k % W != 0 or w.dim_size(1) != k:
        raise Error(String(name) + ": the inner dim must match and be a multiple of the vector width")
    var xp = rebind[UnsafePointer[Float32, MutAnyOrigin]](x.unsafe_ptr())
    var wp = rebind[UnsafePointer[Scalar[WT], MutAnyOrigin]](w.unsafe_ptr())
    var op = rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr())
    var per = max(MIN_PER, ((n + TASKS - 1) // TASKS + 3) // 4 * 4)
    var tasks = (n + per - 1) // per
    var tall = (m + R_MAX - 1) // R_MAX  # row tiles per block

    def work(c: Int) {imm}:
        var j0 = c * per
        var j1 = min(n, j0 + per)
        var wf = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](4 * k))
        var j = j0
        while j + 4 <= j1:
            if tall <= 2:  # widen the block first (a streaming pass), then compute from L1
                for i in range(0, 4 * k, W):
                    wf.unsafe_store(i, wp.unsafe_load[width=W](j * k + i).cast[DType.float32]())
                var h0 = (m + 1) // 2 if tall == 2 else m
                tiles[WT, W, R_MAX, False](op, xp, wp, wf, 0, h0, j, n, k)
                if h0 < m:
                    tiles[WT, W, R_MAX, False](op, xp, wp, wf, h0, m - h0, j, n, k)
            else:  # many rows: the first tile widens as it computes (the block's memory
                # traffic overlaps that tile's arithmetic); the others read the widened block
                var r = 0
                for t in range(tall):
                    var h = (m + tall - 1 - t) // tall  # balanced heights, tallest first
                    if t == 0:
                        tiles[WT, W, R_MAX, True](op, xp, wp, wf, r, h, j, n, k)
                    else:
                        tiles[WT, W, R_MAX, False](op, xp, wp, wf, r, h, j, n, k)
                    r += h
            j += 4
        while j < j1:
            for r in range(m):
                var acc = SIMD[DType.float32, W](0)
                for kk in range(0, k, W):
                    var wv = wp.unsafe_load[width=W](j * k + kk).cast[DType.float32]()
                    acc += xp.unsafe_load[width=W](r * k + kk) * wv
                op.unsafe_store(r * n + j, acc.reduce_add())
            j += 1
        wf.unsafe_free()

    sync_parallelize(work, num_work_items=tasks)


@register("kvgraph_gemv_f16")
struct GemvF16:
    @staticmethod
    def execute[target: StaticString, lanes: Int, regs: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.float16, rank=2, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_gemv_f16 runs on the CPU only (it reads host memory)")
        gemv[DType.float16, lanes, regs, "kvgraph_gemv_f16"](output, x, w)


# The same GEMV over int8 weights (compute_type int8: a weight's rows quantized with one scale
# each; the lowering multiplies the sums by the scales): half the bytes of float16 to read.
@register("kvgraph_gemv_i8")
struct GemvI8:
    @staticmethod
    def execute[target: StaticString, lanes: Int, regs: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.int8, rank=2, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_gemv_i8 runs on the CPU only (it reads host memory)")
        gemv[DType.int8, lanes, regs, "kvgraph_gemv_i8"](output, x, w)
