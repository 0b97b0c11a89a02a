# Attention of a few query rows over keys read in their stored layout: a decode step's
# cross-attention over the hoisted audio K/V (unmasked, ``kvgraph_attend_f32``) and its
# causal self-attention over a cache buffer read in place (``kvgraph_cache_attend_f32``).
#
#   out[c, r, h] = softmax_t(scale * q[c, r, h] . k[c, t, h']) @ v[c, t, h'],  t < lim(c, r)
#
# q, out f32[c, rows, heads * dh]; k, v f32[c, sk, kv_heads * dh] (a cache: [c, capacity,
# kv_heads * dh], of which the first rows are read); query head h reads KV head
# h' = h // (heads // kv_heads). Unmasked: lim = sk. Causal over a cache: row r of context c
# sits at position past[c] + r and sees keys t <= past[c] + r (and t < end, the view's
# length). One task per (context, head). Its rows go in tiles of RT (as many as keep the
# tile's query and output vectors in registers), and each tile reads the head's K once for
# all its rows (scores into a small buffer), then V once (the outputs accumulate in
# registers): rows sharing a context (beams, best_of samples, a prompt's tokens) share these
# reads. MAX's matmul form reads K and V through head-major copies and, at a few rows, spends
# more on a batched matmul than on the bytes; reading a cache buffer through the graph
# (``buffer_load``) copies the whole buffer every call. float32 throughout; the sum order
# differs from a matmul's, so results agree to float32 rounding, not bit for bit. dh must be
# 64 or 128 (the lowering checks).

from std.collections import Array
from std.math import exp
from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from extensibility.managed_tensor_slice import _MutableInputTensor as MutableInputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc

comptime W = 16
comptime NEG = Float32(-3.0e38)


# Rows r0 .. r0+RT of one (context, head): NC = dh / W vectors per row. Row r sees keys
# t < min(lim0 + r * grow, sk_all) (grow 0: unmasked, 1: causal).
@always_inline
def attend_tile[RT: Int, NC: Int](
    op: UnsafePointer[Float32, MutAnyOrigin],
    qp: UnsafePointer[Float32, MutAnyOrigin],
    kp: UnsafePointer[Float32, MutAnyOrigin],
    vp: UnsafePointer[Float32, MutAnyOrigin],
    sp: UnsafePointer[Float32, MutAnyOrigin],
    qs: Int,
    ks: Int,
    sk_all: Int,
    skp: Int,
    lim0: Int,
    grow: Int,
    scale: Float32,
):
    var sk = min(lim0 + (RT - 1) * grow, sk_all)  # keys the tile's last row sees: read these
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
        for t in range(min(lim0 + r * grow, sk_all), skp):
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


# All rows of one (context, head), in tiles of RT_MAX then one of the rows left; row r sees
# keys t < min(lim0 + r * grow, sk). The scores buffer (RT_MAX rows of skp) is its own.
@always_inline
def attend_head[NC: Int](
    op: UnsafePointer[Float32, MutAnyOrigin],
    qp: UnsafePointer[Float32, MutAnyOrigin],
    kp: UnsafePointer[Float32, MutAnyOrigin],
    vp: UnsafePointer[Float32, MutAnyOrigin],
    rows: Int,
    qs: Int,
    ks: Int,
    sk: Int,
    lim0: Int,
    grow: Int,
    scale: Float32,
):
    # rows per tile: one phase holds RT_MAX * NC query (or output) vectors and NC of K (or V):
    # 6 rows at head size 64, 3 at 128 within 32 vector registers (5 beams read K and V once)
    comptime RT_MAX = 24 // NC
    var skp = (sk + W - 1) // W * W
    var sp = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](RT_MAX * skp))
    var r = 0
    while r + RT_MAX <= rows:
        attend_tile[RT_MAX, NC](op + r * qs, qp + r * qs, kp, vp, sp, qs, ks, sk, skp, lim0 + r * grow, grow, scale)
        r += RT_MAX
    comptime for h in range(1, RT_MAX):
        if rows - r == h:
            attend_tile[h, NC](op + r * qs, qp + r * qs, kp, vp, sp, qs, ks, sk, skp, lim0 + r * grow, grow, scale)
    sp.unsafe_free()


# attend_head for head size dh (64 or 128: the kernels check), its vectors per row unrolled.
@always_inline
def attend_head_dh(
    dh: Int,
    op: UnsafePointer[Float32, MutAnyOrigin],
    qp: UnsafePointer[Float32, MutAnyOrigin],
    kp: UnsafePointer[Float32, MutAnyOrigin],
    vp: UnsafePointer[Float32, MutAnyOrigin],
    rows: Int,
    qs: Int,
    ks: Int,
    sk: Int,
    lim0: Int,
    grow: Int,
    scale: Float32,
):
    if dh == 64:
        attend_head[64 // W](op, qp, kp, vp, rows, qs, ks, sk, lim0, grow, scale)
    else:
        attend_head[128 // W](op, qp, kp, vp, rows, qs, ks, sk, lim0, grow, scale)


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
        var scale = scale_t.unsafe_ptr()[0]
        var qp = rebind[UnsafePointer[Float32, MutAnyOrigin]](q.unsafe_ptr())
        var kp = rebind[UnsafePointer[Float32, MutAnyOrigin]](k.unsafe_ptr())
        var vp = rebind[UnsafePointer[Float32, MutAnyOrigin]](v.unsafe_ptr())
        var op = rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr())

        def work(task: Int) {imm}:
            var c = task // heads
            var h = task % heads
            var qo = c * rows * qs + h * dh
            var ko = c * sk * ks + (h // group) * dh
            attend_head_dh(dh, op + qo, qp + qo, kp + ko, vp + ko, rows, qs, ks, sk, sk, 0, scale)

        sync_parallelize(work, num_work_items=nctx * heads)


# Causal attention of a step's rows over a cache buffer, read in place (no copy of the
# buffer): context c's query rows sit at positions past[c] .. past[c] + rows - 1 (past of
# one element: the same for every context) and see keys t <= their position, t < end[0].
# The step's own K/V must already be in the cache (stored before, in the graph's order).
@register("kvgraph_cache_attend_f32")
struct CacheAttendF32:
    @staticmethod
    def execute[target: StaticString, heads: Int](
        output: OutputTensor[dtype=DType.float32, rank=3, static_spec=_],
        q: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        k: MutableInputTensor[dtype=DType.float32, rank=3, static_spec=_],
        v: MutableInputTensor[dtype=DType.float32, rank=3, static_spec=_],
        past_t: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        end_t: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        scale_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        var nctx = q.dim_size(0)
        var rows = q.dim_size(1)
        var qs = q.dim_size(2)
        var cap = k.dim_size(1)
        var ks = k.dim_size(2)
        var dh = qs // heads
        if qs % heads != 0 or (dh != 64 and dh != 128) or ks % dh != 0:
            raise Error("kvgraph_cache_attend_f32: head dim must be 64 or 128")
        var kvh = ks // dh
        if heads % kvh != 0 or k.dim_size(0) < nctx or v.dim_size(0) < nctx or v.dim_size(1) != cap or v.dim_size(2) != ks:
            raise Error("kvgraph_cache_attend_f32: q and the caches do not match")
        var npast = past_t.dim_size(0)
        if npast != 1 and npast != nctx:
            raise Error("kvgraph_cache_attend_f32: past must hold 1 or one per context")
        var end = Int(end_t.unsafe_ptr()[0])
        if end < 0 or end > cap:
            raise Error("kvgraph_cache_attend_f32: the view is longer than the cache")
        var pp = past_t.unsafe_ptr()
        for c in range(npast):
            if Int(pp[c]) < 0:
                raise Error("kvgraph_cache_attend_f32: negative position")
        var group = heads // kvh
        var scale = scale_t.unsafe_ptr()[0]
        var qp = rebind[UnsafePointer[Float32, MutAnyOrigin]](q.unsafe_ptr())
        var kp = rebind[UnsafePointer[Float32, MutAnyOrigin]](k.unsafe_ptr())
        var vp = rebind[UnsafePointer[Float32, MutAnyOrigin]](v.unsafe_ptr())
        var op = rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr())

        def work(task: Int) {imm}:
            var c = task // heads
            var h = task % heads
            var p = Int(pp[c if npast > 1 else 0])
            var sk = min(p + rows, end)  # keys this context's last row sees
            var qo = c * rows * qs + h * dh
            var ko = c * cap * ks + (h // group) * dh
            attend_head_dh(dh, op + qo, qp + qo, kp + ko, vp + ko, rows, qs, ks, sk, p + 1, 1, scale)

        sync_parallelize(work, num_work_items=nctx * heads)


# Row c of new [b, s, w] into rows past[c] .. past[c] + s - 1 of row c of a cache buffer
# [b', capacity, w] (b <= b'), in place: a decode step's K or V with each row at its own
# position (one call, where a graph-level loop over the rows costs tens of microseconds a row).
@register("kvgraph_store_rows_f32")
struct StoreRowsF32:
    @staticmethod
    def execute[target: StaticString](
        cache: MutableInputTensor[dtype=DType.float32, rank=3, static_spec=_],
        new: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        past_t: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        var b = new.dim_size(0)
        var s = new.dim_size(1)
        var w = new.dim_size(2)
        var cap = cache.dim_size(1)
        if cache.dim_size(0) < b or cache.dim_size(2) != w or past_t.dim_size(0) != b:
            raise Error("kvgraph_store_rows_f32: cache, new rows and positions do not match")
        var pp = past_t.unsafe_ptr()
        for c in range(b):
            if Int(pp[c]) < 0 or Int(pp[c]) + s > cap:
                raise Error("kvgraph_store_rows_f32: a row's position is outside the cache")
        var cp = rebind[UnsafePointer[Float32, MutAnyOrigin]](cache.unsafe_ptr())
        var np_ = rebind[UnsafePointer[Float32, MutAnyOrigin]](new.unsafe_ptr())
        for c in range(b):
            var dst = cp + (c * cap + Int(pp[c])) * w
            var src = np_ + c * s * w
            for i in range(s * w):
                dst[i] = src[i]
