# A GEMM over a float16 weight for many rows (a prompt's prefill), with no float32 copy of
# the weight held between calls:
#
#   out[r, j] = sum_k x[r, k] * float32(w[j, k])      x f32[m, k], w f16[n, k], out f32[m, n]
#
# Up to GEMV_ROWS rows it is gemv.mojo's kernel (each weight row read once for all rows, dot
# products along k). Beyond, each task widens its share of the weight's rows, a block of NB =
# 2 vectors of outputs at a time, into a panel transposed to [k, NB] (float32, ~k * NB * 4
# bytes, in L2), and runs the rows against it in register tiles of RT rows x 2 vectors:
# per k, one broadcast of each row's x and two panel loads feed 2 * RT multiply-adds, and
# the sums stay in registers to the end (no reduction across lanes, as a dot product needs).
# The panel is made once per call and block and read by every row tile, so the widening is
# paid once per weight element per call, whatever m is. float32 arithmetic (float16 widens
# exactly): the result is the float32 weight's, summed in another order than MAX's GEMM
# (equal to float32 rounding, not bit for bit). k must be a multiple of the vector width.
#
# Per instruction-set class (the lowering passes `lanes` and `regs`): RT x 2 accumulators, 2
# panel vectors and 1 broadcast: RT = min(6, (regs - 3) // 2) (AVX-512 and AVX2 both 6: 15
# registers; fewer registers than 5 hold no tile and are refused when the kernel compiles).

from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc

from .gemv import gemv

comptime GEMV_ROWS = 16  # at most this many rows: the GEMV (no widened panel to amortise)
comptime TASKS = 64  # at most, over blocks of outputs


def gemm_tile_rows[regs: Int]() -> Int:
    """Rows of a register tile: RT x 2 accumulators + 2 panel vectors + 1 broadcast."""
    return min(6, (regs - 3) // 2)


# Rows r .. r+R against the panel of outputs j .. j+2W (panel pp: [k, 2W] float32).
@always_inline
def gemm_tile[W: Int, R: Int](
    op: UnsafePointer[Float32, MutAnyOrigin],
    xp: UnsafePointer[Float32, MutAnyOrigin],
    pp: UnsafePointer[Float32, MutAnyOrigin],
    r: Int,
    j: Int,
    n: Int,
    k: Int,
):
    var a00 = SIMD[DType.float32, W](0)
    var a01 = SIMD[DType.float32, W](0)
    var a10 = SIMD[DType.float32, W](0)
    var a11 = SIMD[DType.float32, W](0)
    var a20 = SIMD[DType.float32, W](0)
    var a21 = SIMD[DType.float32, W](0)
    var a30 = SIMD[DType.float32, W](0)
    var a31 = SIMD[DType.float32, W](0)
    var a40 = SIMD[DType.float32, W](0)
    var a41 = SIMD[DType.float32, W](0)
    var a50 = SIMD[DType.float32, W](0)
    var a51 = SIMD[DType.float32, W](0)
    var x0p = xp + (r + 0) * k
    var x1p = xp + (r + min(1, R - 1)) * k
    var x2p = xp + (r + min(2, R - 1)) * k
    var x3p = xp + (r + min(3, R - 1)) * k
    var x4p = xp + (r + min(4, R - 1)) * k
    var x5p = xp + (r + min(5, R - 1)) * k
    for kk in range(k):
        var p0 = pp.unsafe_load[width=W](kk * 2 * W)
        var p1 = pp.unsafe_load[width=W](kk * 2 * W + W)
        var x0 = SIMD[DType.float32, W](x0p[kk])
        a00 = x0.fma(p0, a00)
        a01 = x0.fma(p1, a01)
        comptime if R > 1:
            var x1 = SIMD[DType.float32, W](x1p[kk])
            a10 = x1.fma(p0, a10)
            a11 = x1.fma(p1, a11)
        comptime if R > 2:
            var x2 = SIMD[DType.float32, W](x2p[kk])
            a20 = x2.fma(p0, a20)
            a21 = x2.fma(p1, a21)
        comptime if R > 3:
            var x3 = SIMD[DType.float32, W](x3p[kk])
            a30 = x3.fma(p0, a30)
            a31 = x3.fma(p1, a31)
        comptime if R > 4:
            var x4 = SIMD[DType.float32, W](x4p[kk])
            a40 = x4.fma(p0, a40)
            a41 = x4.fma(p1, a41)
        comptime if R > 5:
            var x5 = SIMD[DType.float32, W](x5p[kk])
            a50 = x5.fma(p0, a50)
            a51 = x5.fma(p1, a51)
    op.unsafe_store((r + 0) * n + j, a00)
    op.unsafe_store((r + 0) * n + j + W, a01)
    comptime if R > 1:
        op.unsafe_store((r + 1) * n + j, a10)
        op.unsafe_store((r + 1) * n + j + W, a11)
    comptime if R > 2:
        op.unsafe_store((r + 2) * n + j, a20)
        op.unsafe_store((r + 2) * n + j + W, a21)
    comptime if R > 3:
        op.unsafe_store((r + 3) * n + j, a30)
        op.unsafe_store((r + 3) * n + j + W, a31)
    comptime if R > 4:
        op.unsafe_store((r + 4) * n + j, a40)
        op.unsafe_store((r + 4) * n + j + W, a41)
    comptime if R > 5:
        op.unsafe_store((r + 5) * n + j, a50)
        op.unsafe_store((r + 5) * n + j + W, a51)


# dst[e, i] = float32(src[i, e]) for a W x W block (rows dst_stride / src_stride apart), by
# log2(W) rounds of the perfect shuffle: row i and row i + W/2 interleaved give rows 2i and
# 2i + 1 of the next round; after the last the rows are the block's columns (tb: 2 W x W
# float32 of scratch, in L1).
@always_inline
def transpose_block[W: Int](
    dst: UnsafePointer[Float32, MutAnyOrigin],
    dst_stride: Int,
    src: UnsafePointer[Float16, MutAnyOrigin],
    src_stride: Int,
    tb: UnsafePointer[Float32, MutAnyOrigin],
):
    var a = tb
    var b = tb + W * W
    comptime for i in range(W):
        a.unsafe_store(i * W, src.unsafe_load[width=W](i * src_stride).cast[DType.float32]())
    comptime ROUNDS = 4 if W == 16 else (3 if W == 8 else 2)  # log2(W): W is 4, 8 or 16
    comptime for _ in range(ROUNDS):
        comptime for i in range(W // 2):
            var mixed = a.unsafe_load[width=W](i * W).interleave(a.unsafe_load[width=W]((i + W // 2) * W))
            b.unsafe_store((2 * i) * W, mixed.slice[W, offset=0]())
            b.unsafe_store((2 * i + 1) * W, mixed.slice[W, offset=W]())
        var t = a
        a = b
        b = t
    comptime for e in range(W):
        dst.unsafe_store(e * dst_stride, a.unsafe_load[width=W](e * W))


def gemm16[lanes: Int, regs: Int](
    output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
    x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
    w: InputTensor[dtype=DType.float16, rank=2, static_spec=_],
) raises:
    comptime W = lanes
    comptime NB = 2 * W
    comptime RT = gemm_tile_rows[regs]()
    comptime assert W == 4 or W == 8 or W == 16, "kvgraph_gemm_f16: lanes must be 4, 8 or 16"
    comptime assert RT >= 1, "kvgraph_gemm_f16: fewer than 5 vector registers hold no tile"
    var m = x.dim_size(0)
    var k = x.dim_size(1)
    var n = w.dim_size(0)
    if m <= GEMV_ROWS:
        gemv[DType.float16, lanes, regs, "kvgraph_gemm_f16"](output, x, w)
        return
    if k % W != 0 or w.dim_size(1) != k:
        raise Error("kvgraph_gemm_f16: the inner dim must match and be a multiple of the vector width")
    var xp = rebind[UnsafePointer[Float32, MutAnyOrigin]](x.unsafe_ptr())
    var wp = rebind[UnsafePointer[Float16, MutAnyOrigin]](w.unsafe_ptr())
    var op = rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr())
    var blocks = n // NB
    var tasks = max(1, min(TASKS, blocks))
    var per = (blocks + tasks - 1) // tasks if blocks > 0 else 0

    def work(c: Int) {imm}:
        var b0 = c * per
        var b1 = min(blocks, b0 + per)
        if b1 <= b0:
            return
        var pp = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](k * NB))
        var tb = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](2 * W * W))
        for blk in range(b0, b1):
            var j = blk * NB
            # widen and transpose the block: pp[kk, c] = w[j + c, kk], W x W at a time
            for c0 in range(0, NB, W):
                for kk in range(0, k, W):
                    transpose_block[W](pp + kk * NB + c0, NB, wp + (j + c0) * k + kk, k, tb)
            var r = 0
            while r + RT <= m:
                gemm_tile[W, RT](op, xp, pp, r, j, n, k)
                r += RT
            var left = m - r
            comptime for h in range(1, RT):
                if left == h:
                    gemm_tile[W, h](op, xp, pp, r, j, n, k)
        pp.unsafe_free()
        tb.unsafe_free()

    sync_parallelize(work, num_work_items=tasks)
    # outputs past the last whole block: dot products
    for j in range(blocks * NB, n):
        for r in range(m):
            var acc = SIMD[DType.float32, W](0)
            for kk in range(0, k, W):
                acc += xp.unsafe_load[width=W](r * k + kk) * wp.unsafe_load[width=W](j * k + kk).cast[DType.float32]()
            op.unsafe_store(r * n + j, acc.reduce_add())


@register("kvgraph_gemm_f16")
struct GemmF16:
    @staticmethod
    def execute[target: StaticString, lanes: Int, regs: Int](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.float16, rank=2, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_gemm_f16 runs on the CPU only (it reads host memory)")
        gemm16[lanes, regs](output, x, w)
