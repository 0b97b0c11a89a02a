# Attention of a few query rows over an unmasked context, K and V read in their stored
# layout (a decode step's cross-attention over the hoisted audio K/V).
#
#   out[c, r, h] = softmax_t(scale * q[c, r, h] . k[c, t, h']) @ v[c, t, h']
#
# q, out f32[c, rows, heads * dh]; k, v f32[c, sk, kv_heads * dh]; query head h reads KV
# head h' = h // (heads // kv_heads). One task per (context, head). Its rows go in tiles of
# RT (as many as keep the tile's query and output vectors in registers), and each tile reads
# the head's K once for all its rows (scores into a small buffer), then V once (the outputs
# accumulate in registers): rows sharing a context (beams, best_of samples) share these reads.
# MAX's matmul form reads K and V through head-major copies and, at a few rows, spends more
# on a batched matmul than on the bytes. float32 throughout; the sum order differs from a
# matmul's, so results agree to float32 rounding, not bit for bit. dh must be 64 or 128 (the
# lowering checks).

from std.collections import Array
from std.math import exp
from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc

comptime W = 16
comptime NEG = Float32(-3.0e38)


# Rows r0 .. r0+RT of one (context, head): NC = dh / W vectors per row.
@always_inline
def attend_tile[RT: Int, NC: Int](
    op: UnsafePointer[Float32, MutAnyOrigin],
    qp: UnsafePointer[Float32, MutAnyOrigin],
    kp: UnsafePointer[Float32, MutAnyOrigin],
    vp: UnsafePointer[Float32, MutAnyOrigin],
    sp: UnsafePointer[Float32, MutAnyOrigin],
    qs: Int,
    ks: Int,
    sk: Int,
    skp: Int,
    scale: Float32,
):
    var qv = Array[SIMD[DType.float32, W], RT * NC](fill=SIMD[DType.float32, W](0))
    comptime for r in range(RT):
        comptime for c in range(NC):
            qv[r * NC + c] = qp.unsafe_load[width=W](r * qs + c * W)
    # scores, K read once for the tile's rows
    for t in range(sk):
        var kv = Array[SIMD[DType.float32, W], NC](fill=SIMD[DType.float32, W](0))
        comptime for c in range(NC):
            kv[c] = kp.unsafe_load[width=W](t * ks + c * W)
        comptime for r in range(RT):
            var acc = qv[r * NC] * kv[0]
            comptime for c in range(1, NC):
                acc += qv[r * NC + c] * kv[c]
            sp.unsafe_store(r * skp + t, acc.reduce_add() * scale)
    # softmax numerators and sums, row by row (scores padded to skp with NEG: exp -> 0)
    var inv = Array[Float32, RT](fill=Float32(0))
    comptime for r in range(RT):
        for t in range(sk, skp):
            sp.unsafe_store(r * skp + t, NEG)
        var mx = SIMD[DType.float32, W](NEG)
        for t in range(0, skp, W):
            mx = max(mx, sp.unsafe_load[width=W](r * skp + t))
        var m = mx.reduce_max()
        var sm = SIMD[DType.float32, W](0)
        for t in range(0, skp, W):
            var e = exp(sp.unsafe_load[width=W](r * skp + t) - m)
            sp.unsafe_store(r * skp + t, e)
            sm += e
        inv[r] = Float32(1) / sm.reduce_add()
    # outputs, V read once for the tile's rows
    var ov = Array[SIMD[DType.float32, W], RT * NC](fill=SIMD[DType.float32, W](0))
    for t in range(sk):
        var vv = Array[SIMD[DType.float32, W], NC](fill=SIMD[DType.float32, W](0))
        comptime for c in range(NC):
            vv[c] = vp.unsafe_load[width=W](t * ks + c * W)
        comptime for r in range(RT):
            var p = SIMD[DType.float32, W](sp[r * skp + t])
            comptime for c in range(NC):
                ov[r * NC + c] += p * vv[c]
    comptime for r in range(RT):
        comptime for c in range(NC):
            op.unsafe_store(r * qs + c * W, ov[r * NC + c] * inv[r])


# All rows of one (context, head), in tiles of RT_MAX then one of the rows left.
@always_inline
def attend_head[NC: Int](
    op: UnsafePointer[Float32, MutAnyOrigin],
    qp: UnsafePointer[Float32, MutAnyOrigin],
    kp: UnsafePointer[Float32, MutAnyOrigin],
    vp: UnsafePointer[Float32, MutAnyOrigin],
    sp: UnsafePointer[Float32, MutAnyOrigin],
    rows: Int,
    qs: Int,
    ks: Int,
    sk: Int,
    skp: Int,
    scale: Float32,
):
    comptime RT_MAX = 16 // NC  # query + output vectors: 2 * RT_MAX * NC = 32 registers' worth
    var r = 0
    while r + RT_MAX <= rows:
        attend_tile[RT_MAX, NC](op + r * qs, qp + r * qs, kp, vp, sp, qs, ks, sk, skp, scale)
        r += RT_MAX
    comptime for h in range(1, RT_MAX):
        if rows - r == h:
            attend_tile[h, NC](op + r * qs, qp + r * qs, kp, vp, sp, qs, ks, sk, skp, scale)


@register("kvgraph_attend_f32")
struct AttendF32:
    @staticmethod
    def execute[target: StaticString, heads: Int](
        output: OutputTensor[dtype=DType.float32, rank=3, static_spec=_],
        q: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        k: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        v: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        scale_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        var nctx = q.dim_size(0)
        var rows = q.dim_size(1)
        var qs = q.dim_size(2)
        var sk = k.dim_size(1)
        var ks = k.dim_size(2)
        var dh = qs // heads
        if qs % heads != 0 or (dh != 64 and dh != 128) or ks % dh != 0:
            raise Error("kvgraph_attend_f32: head dim must be 64 or 128")
        var kvh = ks // dh
        if heads % kvh != 0 or k.dim_size(0) != nctx or v.dim_size(0) != nctx or v.dim_size(1) != sk:
            raise Error("kvgraph_attend_f32: q, k and v do not match")
        var group = heads // kvh
        var skp = (sk + W - 1) // W * W
        var scale = scale_t.unsafe_ptr()[0]
        var qp = rebind[UnsafePointer[Float32, MutAnyOrigin]](q.unsafe_ptr())
        var kp = rebind[UnsafePointer[Float32, MutAnyOrigin]](k.unsafe_ptr())
        var vp = rebind[UnsafePointer[Float32, MutAnyOrigin]](v.unsafe_ptr())
        var op = rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr())

        def work(task: Int) {imm}:
            var c = task // heads
            var h = task % heads
            var rt = 256 // dh  # the tallest tile attend_head uses (16 // NC rows)
            var sp = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](rt * skp))
            var qo = c * rows * qs + h * dh
            var ko = c * sk * ks + (h // group) * dh
            if dh == 64:
                attend_head[4](op + qo, qp + qo, kp + ko, vp + ko, sp, rows, qs, ks, sk, skp, scale)
            else:
                attend_head[8](op + qo, qp + qo, kp + ko, vp + ko, sp, rows, qs, ks, sk, skp, scale)
            sp.unsafe_free()

        sync_parallelize(work, num_work_items=nctx * heads)
