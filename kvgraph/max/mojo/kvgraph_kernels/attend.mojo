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
#
# Per instruction-set class (the lowering passes `lanes`, `regs` and `l1`, the L1d bytes; see
# kvgraph/max/isa.py): a row is NC = dh / lanes vectors. A tile has up to RT_MAX rows (6 at
# head size 64, 3 at 128: the rows that share one read of K and V), fewer when its scores
# (rows x keys x 4 bytes) would not leave 8 KB of L1d for the K/V rows in flight (36 KB of
# scores for 6 rows over 1500 keys: 6 rows in Sapphire Rapids' or Zen 5's 48 KB, 4 in Zen 3's
# 32 KB). The outputs accumulate in registers in column chunks of CH vectors, CH the widest
# divisor of NC with RT x CH accumulators + CH V vectors within the register file: AVX-512
# (16 lanes, 32 zmm) one chunk at both head sizes; AVX2 (8 lanes, 16 ymm) chunks of 2
# vectors at 64, 4 at 128; NEON (4 lanes, 32 v) chunks of 4 and 8. The scores' query vectors
# are read from L1 where the registers do not hold them.

from std.collections import Array
from std.math import exp
from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from extensibility.managed_tensor_slice import _MutableInputTensor as MutableInputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.memory import alloc

comptime NEG = Float32(-3.0e38)


# Rows r0 .. r0+RT of one (context, head): NC = dh / W vectors per row, outputs in column
# chunks of CH vectors. Row r sees keys t < min(lim0 + r * grow, sk_all) (grow 0: unmasked,
# 1: causal).
@always_inline
def attend_tile[W: Int, RT: Int, NC: Int, CH: Int](
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
    # outputs, V read once for the tile's rows (a chunk of CH vectors of each V row per pass)
    comptime for c0 in range(0, NC, CH):
        var ov = Array[SIMD[DType.float32, W], RT * CH](fill=SIMD[DType.float32, W](0))
        for t in range(sk):
            var vv = Array[SIMD[DType.float32, W], CH](fill=SIMD[DType.float32, W](0))
            comptime for c in range(CH):
                vv[c] = vp.unsafe_load[width=W](t * ks + (c0 + c) * W)
            comptime for r in range(RT):
                var p = SIMD[DType.float32, W](sp[r * skp + t])
                comptime for c in range(CH):
                    ov[r * CH + c] += p * vv[c]
        comptime for r in range(RT):
            comptime for c in range(CH):
                op.unsafe_store(r * qs + (c0 + c) * W, ov[r * CH + c] * inv[r])


def tile_rows(dh: Int) -> Int:
    """Rows sharing one read of a head's K and V: 6 at head size 64, 3 at 128."""
    return 6 if dh <= 64 else 3


def out_chunk(nc: Int, rt: Int, regs: Int) -> Int:
    """The widest divisor of nc with rt x chunk accumulators + chunk V vectors in regs."""
    var ch = nc
    while ch > 1 and (nc % ch != 0 or (rt + 1) * ch > regs):
        ch -= 1
    return ch


# All rows of one (context, head), in tiles of up to RT_MAX rows (fewer when the scores would
# crowd L1d, see the top), then one of the rows left; row r sees keys
# t < min(lim0 + r * grow, sk). The scores buffer (rt rows of skp) is its own.
@always_inline
def attend_head[W: Int, DH: Int, REGS: Int, L1: Int](
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
    comptime NC = DH // W
    comptime RT_MAX = tile_rows(DH)
    comptime assert NC >= 1 and NC * W == DH, "attend: head size is not a multiple of the lanes"
    var skp = (sk + W - 1) // W * W
    var rt = min(RT_MAX, max(1, (L1 - 8192) // (skp * 4)))  # the tile's scores in L1d
    var sp = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](rt * skp))
    var r = 0
    comptime for h in range(RT_MAX, 0, -1):  # tiles of rt rows, then the rows left
        if h == rt:
            while r + h <= rows:
                comptime CH = out_chunk(NC, h, REGS)
                attend_tile[W, h, NC, CH](
                    op + r * qs, qp + r * qs, kp, vp, sp, qs, ks, sk, skp, lim0 + r * grow, grow, scale
                )
                r += h
        if h < rt and rows - r == h:
            comptime CH = out_chunk(NC, h, REGS)
            attend_tile[W, h, NC, CH](op + r * qs, qp + r * qs, kp, vp, sp, qs, ks, sk, skp, lim0 + r * grow, grow, scale)
            r += h
    sp.unsafe_free()


# attend_head for head size dh (64 or 128: the kernels check), its vectors per row unrolled.
@always_inline
def attend_head_dh[W: Int, REGS: Int, L1: Int](
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
        attend_head[W, 64, REGS, L1](op, qp, kp, vp, rows, qs, ks, sk, lim0, grow, scale)
    else:
        attend_head[W, 128, REGS, L1](op, qp, kp, vp, rows, qs, ks, sk, lim0, grow, scale)


def check_isa[target: StaticString, lanes: Int, regs: Int, l1: Int](name: StaticString) raises:
    comptime assert lanes == 4 or lanes == 8 or lanes == 16, "attend: lanes must be 4, 8 or 16"
    comptime assert regs >= 8, "attend: fewer than 8 vector registers"
    comptime assert l1 >= 16384, "attend: an L1d under 16 KB"
    if target != "cpu":
        raise Error(String(name, " runs on the CPU only (it reads host memory)"))


@register("kvgraph_attend_f32")
struct AttendF32:
    @staticmethod
    def execute[target: StaticString, heads: Int, lanes: Int, regs: Int, l1: Int](
        output: OutputTensor[dtype=DType.float32, rank=3, static_spec=_],
        q: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        k: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        v: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        scale_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        check_isa[target, lanes, regs, l1]("kvgraph_attend_f32")
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
            attend_head_dh[lanes, regs, l1](dh, op + qo, qp + qo, kp + ko, vp + ko, rows, qs, ks, sk, sk, 0, scale)

        sync_parallelize(work, num_work_items=nctx * heads)


# Causal attention of a step's rows over a cache buffer, read in place (no copy of the
# buffer): context c's query rows sit at positions past[c] .. past[c] + rows - 1 (past of
# one element: the same for every context) and see keys t <= their position, t < end[0].
# The step's own K/V must already be in the cache (stored before, in the graph's order).
@register("kvgraph_cache_attend_f32")
struct CacheAttendF32:
    @staticmethod
    def execute[target: StaticString, heads: Int, lanes: Int, regs: Int, l1: Int](
        output: OutputTensor[dtype=DType.float32, rank=3, static_spec=_],
        q: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        k: MutableInputTensor[dtype=DType.float32, rank=3, static_spec=_],
        v: MutableInputTensor[dtype=DType.float32, rank=3, static_spec=_],
        past_t: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        end_t: InputTensor[dtype=DType.int64, rank=1, static_spec=_],
        scale_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        check_isa[target, lanes, regs, l1]("kvgraph_cache_attend_f32")
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
            attend_head_dh[lanes, regs, l1](dh, op + qo, qp + qo, kp + ko, vp + ko, rows, qs, ks, sk, p + 1, 1, scale)

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
        if target != "cpu":
            raise Error("kvgraph_store_rows_f32 runs on the CPU only (it reads host memory)")
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
