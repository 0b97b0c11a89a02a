# torch's CPU float32 exp and log (SLEEF's expf / logf, u10, which Vectorized<float> calls) and
# its vectorised sums, as a shared library for torch_float.py (built by kvgraph/max/native.py);
# and, for search.py, torch.topk's order over log-probabilities and the sampler's probabilities.
# The same float32 operations in the same order as torch_float.py's NumPy twins, which
# document the algorithms (after SLEEF's sleefsimdsp.c: xexpf, xlogf_u1); the tests hold the
# two equal bit for bit. Fused multiply-adds are written as such; every other product passes an
# arithmetic fence first, so the compiler cannot fuse it into the add that follows (that would
# round once where SLEEF rounds twice).

from std.math import isnan
from std.memory import UnsafePointer, bitcast
from std.sys import llvm_intrinsic

comptime F = DType.float32
comptime Ptr = UnsafePointer[Float32, MutAnyOrigin]


@always_inline
def fence[W: Int](x: SIMD[F, W]) -> SIMD[F, W]:
    return llvm_intrinsic["llvm.arithmetic.fence", SIMD[F, W]](x)


@always_inline
def finite(x: Float32) -> Bool:
    """Neither infinite nor NaN (a scalar's comparisons are false for NaN)."""
    return x.ge(-Float32.MAX_FINITE) and x.le(Float32.MAX_FINITE)


@always_inline
def expf_core[W: Int](d: SIMD[F, W]) -> SIMD[F, W]:
    """SLEEF's expf without its range checks: q = rint(d / ln 2), s = d - q ln 2 (two
    constants), a degree-6 polynomial, times 2**q as two exact-then-rounding scalings."""
    var q = llvm_intrinsic["llvm.roundeven", SIMD[F, W]](fence(d * SIMD[F, W](1.44269502162933349609375)))
    var s = q.fma(SIMD[F, W](-0.693145751953125), d)
    s = q.fma(SIMD[F, W](-1.428606765330187045e-06), s)
    var u = SIMD[F, W](0.000198527617612853646278381)
    u = u.fma(s, SIMD[F, W](0.00139304355252534151077271))
    u = u.fma(s, SIMD[F, W](0.00833336077630519866943359))
    u = u.fma(s, SIMD[F, W](0.0416664853692054748535156))
    u = u.fma(s, SIMD[F, W](0.166666671633720397949219))
    u = u.fma(s, SIMD[F, W](0.5))
    u = fence(s * s).fma(u, s)
    u = u + SIMD[F, W](1.0)
    var qi = q.cast[DType.int32]()
    var h = qi >> 1
    u = fence(u * bitcast[F, W]((h + 127) << 23))
    return u * bitcast[F, W](((qi - h) + 127) << 23)


@always_inline
def expf[W: Int](d_in: SIMD[F, W]) -> SIMD[F, W]:
    """SLEEF's expf: expf_core, 0 below -104, inf above 100, NaN as it came (isnan: a
    vector's ne is the ordered comparison here, false for NaN)."""
    var low = d_in.lt(SIMD[F, W](-104.0))
    var high = d_in.gt(SIMD[F, W](100.0))
    var nan = isnan(d_in)
    var u = expf_core[W]((low | high | nan).select(SIMD[F, W](0.0), d_in))
    u = low.select(SIMD[F, W](0.0), u)
    u = high.select(SIMD[F, W](Float32.MAX_FINITE) * SIMD[F, W](2.0), u)
    return nan.select(d_in, u)


@always_inline
def expf_nonpositive[W: Int](d: SIMD[F, W]) -> SIMD[F, W]:
    """expf of d in [-inf, 0] (no NaN), bit for bit: expf_core without the checks for NaN and
    overflow, which cannot occur there, and the zero of those below -104 taken at the end only
    (an exhaustive run over every such float32 found no difference). Rows whose maximum is
    subtracted first (finite) take it: ~25 % fewer instructions a vector."""
    return d.lt(SIMD[F, W](-104.0)).select(SIMD[F, W](0.0), expf_core[W](d))


@always_inline
def exp_of[W: Int, NONPOSITIVE: Bool](d: SIMD[F, W]) -> SIMD[F, W]:
    comptime if NONPOSITIVE:
        return expf_nonpositive[W](d)
    return expf[W](d)


@always_inline
def two_sum[W: Int](x: SIMD[F, W], y: SIMD[F, W]) -> Tuple[SIMD[F, W], SIMD[F, W]]:
    var r = x + y
    var v = r - x
    return (r, (x - (r - v)) + (y - v))


@always_inline
def logf[W: Int, GETMANT: Bool](x: SIMD[F, W]) -> SIMD[F, W]:
    """SLEEF's logf (u10) of positive finite x: x = m 2**e, log m = 2 atanh((m-1)/(m+1)) in
    double-float arithmetic, plus e ln 2. GETMANT: m as AVX-512's vgetmant gives it."""
    var xb = bitcast[DType.int32, W](fence(x * SIMD[F, W](1.33333337306976318359375)))
    var e = (((xb >> 23) & 0xFF) - 127).cast[F]()
    var m: SIMD[F, W]
    if GETMANT:
        var mant = bitcast[F, W]((bitcast[DType.int32, W](x) & 0x007FFFFF) | 0x3F800000)
        m = mant.ge(SIMD[F, W](1.5)).select(mant * SIMD[F, W](0.5), mant)
    else:
        m = x * bitcast[F, W]((127 - e.cast[DType.int32]()) << 23)
    var s_hi = fence(SIMD[F, W](0.69314718246459960938) * e)
    var s_lo = SIMD[F, W](-1.904654323148236017e-09).fma(e, SIMD[F, W](0.69314718246459960938).fma(e, -s_hi))
    var num = two_sum(SIMD[F, W](-1.0), m)
    var den = two_sum(SIMD[F, W](1.0), m)
    var t = SIMD[F, W](1.0) / den[0]
    var q_hi = fence(num[0] * t)
    var u = t.fma(num[0], -q_hi)
    var q_lo = (-den[1]).fma(t, (-den[0]).fma(t, SIMD[F, W](1.0)))
    q_lo = q_hi.fma(q_lo, num[1].fma(t, u))
    var x2 = fence(q_hi * q_hi)
    var poly = SIMD[F, W](0.3027294874).fma(x2, SIMD[F, W](0.3996108174)).fma(x2, SIMD[F, W](0.6666694880))
    var q2 = fence(q_hi * SIMD[F, W](2.0))
    var r_hi = s_hi + q2
    var r_lo = (((s_hi - r_hi) + q2) + s_lo) + fence(q_lo * SIMD[F, W](2.0))
    var tail = fence(fence(x2 * q_hi) * poly)
    var out_hi = r_hi + tail
    var out_lo = ((r_hi - out_hi) + tail) + r_lo
    return out_hi + out_lo


@export
def kv_expf(src: Ptr, dst: Ptr, n: Int):
    """dst[i] = expf(src[i]), i < n."""
    comptime W = 16
    var i = 0
    while i + W <= n:
        dst.unsafe_store(i, expf[W](src.unsafe_load[width=W](i)))
        i += W
    while i < n:
        dst.unsafe_store(i, expf[1](src.unsafe_load[width=1](i)))
        i += 1


@export
def kv_logf(src: Ptr, dst: Ptr, n: Int, getmant: Int):
    """dst[i] = logf(src[i]), i < n (getmant: AVX-512's mantissa)."""
    for i in range(n):
        var x = src.unsafe_load[width=1](i)
        dst.unsafe_store(i, logf[1, True](x) if getmant != 0 else logf[1, False](x))


@always_inline
def row_sum[L: Int, NONPOSITIVE: Bool](x: Ptr, n: Int, top: Float32) -> Float32:
    """The sum of expf(x[i] - top), i < n, in torch's order for L lanes: lane j adds elements
    j, j + L, ... in turn, the tail joins the first lanes last, then the lanes fold by halves;
    a row shorter than L adds left to right. NONPOSITIVE: top is the row's finite maximum."""
    var t = SIMD[F, 1](top)
    if n < L:
        var acc = SIMD[F, 1](0.0)
        for i in range(n):
            var e = expf[1](x.unsafe_load[width=1](i) - t)
            acc = e if i == 0 else acc + e
        return acc[0]
    var acc = exp_of[L, NONPOSITIVE](x.unsafe_load[width=L](0) - SIMD[F, L](top))
    var i = L
    while i + L <= n:
        acc += exp_of[L, NONPOSITIVE](x.unsafe_load[width=L](i) - SIMD[F, L](top))
        i += L
    var j = 0
    while i < n:
        acc[j] = acc[j] + expf[1](x.unsafe_load[width=1](i) - t)[0]
        i += 1
        j += 1
    var width = L
    while width > 1:
        width //= 2
        for k in range(width):
            acc[k] = acc[k] + acc[k + width]
    return acc[0]


@export
def kv_exp_lane_sums(x: Ptr, rows: Int, n: Int, stride: Int, top: Ptr, lanes: Int, sums: Ptr):
    """sums[r] = the lane-ordered sum of expf(x[r, i] - top[r]), i < n, for rows r < rows of
    a row-major x whose rows are stride elements apart; lanes is 16 or 8. top[r] must be the
    row's maximum (NaN where the row holds one)."""
    for r in range(rows):
        var t = top.unsafe_load[width=1](r)[0]
        var s: Float32
        if finite(t):  # x - t <= 0
            s = row_sum[16, True](x + r * stride, n, t) if lanes == 16 else row_sum[8, True](x + r * stride, n, t)
        else:
            s = row_sum[16, False](x + r * stride, n, t) if lanes == 16 else row_sum[8, False](x + r * stride, n, t)
        sums.unsafe_store(r, s)


@always_inline
def part_max(x: Ptr, lo: Int, hi: Int) -> Float32:
    """The maximum of x[lo:hi] (hi > lo), NaN where one is there (as NumPy's max). (isnan:
    a vector's ne is the ordered comparison here, false for NaN.)"""
    comptime W = 16
    var m0 = SIMD[F, W](-Float32.MAX_FINITE * 2.0)
    var m1 = m0
    var m2 = m0
    var m3 = m0
    var nan = SIMD[DType.bool, W](fill=False)
    var i = lo
    while i + 4 * W <= hi:  # four chains: a max's latency hidden
        var v0 = x.unsafe_load[width=W](i)
        var v1 = x.unsafe_load[width=W](i + W)
        var v2 = x.unsafe_load[width=W](i + 2 * W)
        var v3 = x.unsafe_load[width=W](i + 3 * W)
        nan |= isnan(v0) | isnan(v1) | isnan(v2) | isnan(v3)
        m0 = max(m0, v0)
        m1 = max(m1, v1)
        m2 = max(m2, v2)
        m3 = max(m3, v3)
        i += 4 * W
    while i + W <= hi:
        var v = x.unsafe_load[width=W](i)
        nan |= isnan(v)
        m0 = max(m0, v)
        i += W
    var out = max(max(m0, m1), max(m2, m3)).reduce_max()
    while i < hi:
        var v = x[i]
        if isnan(v):
            return v
        out = max(out, v)
        i += 1
    if nan.reduce_or():
        return bitcast[F, 1](SIMD[DType.uint32, 1](0x7FC00000))
    return out


@export
def kv_split_exp_lane_sums(
    x: Ptr, rows: Int, n: Int, stride: Int, split: Int, lanes: Int, front: Ptr, top: Ptr, sums: Ptr
):
    """For each row r < rows of x (rows stride elements apart), 0 < split < n: front[r] = the
    maximum of x[r, :split], top[r] = the row's (NaN where the row holds one), and sums[r] as
    kv_exp_lane_sums gives it with that top; the row is read from cache the second time."""
    for r in range(rows):
        var xr = x + r * stride
        var f = part_max(xr, 0, split)
        var b = part_max(xr, split, n)
        var t = f if isnan(f) else (b if isnan(b) else max(f, b))
        front[r] = f
        top[r] = t
        kv_exp_lane_sums(xr, 1, n, stride, top + r, lanes, sums + r)


@export
def kv_stamps_beat(
    x: Ptr, rows: Int, n: Int, stride: Int, split: Int, front: Ptr, top: Ptr, logs: Ptr, getmant: Int, forced: IPtr
):
    """The timestamp rule's decision for each row r < rows of x (rows stride elements apart):
    forced[r] = 1 where logsumexp of the timestamps' log-probabilities s = (x[r, split:] - top[r])
    - logs[r] beats the best text token's (front[r] - top[r]) - logs[r], else 0 (float32, as
    torch_float.logsumexp: m = max s, 0 where infinite; expf(s - m) summed in eight float64
    lanes, lane j adding elements j, j + 8, ... in turn, folded by halves; SLEEF's logf of
    that sum in float32, plus m). getmant: AVX-512's mantissa in logf."""
    comptime W = 16
    for r in range(rows):
        var xr = x + r * stride + split
        var k = n - split
        var t = top[r]
        var lg = logs[r]
        var best = (front[r] - t) - lg
        var tv = SIMD[F, W](t)
        var lv = SIMD[F, W](lg)
        # the log-probabilities' maximum: subtracting constants keeps the order (and a NaN
        # among them, or one the subtractions make, leaves m NaN)
        var m = (part_max(xr, 0, k) - t) - lg
        if isnan(m):
            forced[r] = 0  # NaN > anything is false
            continue
        if not finite(m):
            m = 0.0
        var mm = SIMD[F, W](m)
        var acc = SIMD[D, 8](0.0)
        var i = 0
        while i + W <= k:
            acc = add16(acc, expf[W](((xr.unsafe_load[width=W](i) - tv) - lv) - mm))
            i += W
        while i < k:
            var e = expf[1](((xr[i] - t) - lg) - m)
            acc[i % 8] = acc[i % 8] + e.cast[D]()[0]
            i += 1
        var total = fold8(acc).cast[F]()
        var lse: Float32
        if total > 0.0 and finite(total):
            lse = (logf[1, True](total) if getmant != 0 else logf[1, False](total))[0] + m
        elif total == 0.0:
            lse = -Float32.MAX_FINITE * 2.0
        else:
            lse = total + m  # inf
        forced[r] = 1 if lse > best else 0


# --------------------------------------------------------------------------
# torch.topk's order: libstdc++'s std::partial_sort over (value, index) pairs with torch's
# comparator (NaN ranks above numbers, otherwise larger first), as search.py's _heap_topk.

comptime IPtr = UnsafePointer[Int64, MutAnyOrigin]


@always_inline
def before(a: Float32, b: Float32) -> Bool:
    return (a.ne(a) and b.eq(b)) or a.gt(b)


@always_inline
def sift(vals: Ptr, idx: IPtr, hole0: Int, length: Int, v: Float32, i: Int64):
    """libstdc++'s __adjust_heap then __push_heap on the heap vals/idx[0:length]: sink the
    hole to a leaf along the preferred children, then float (v, i) up from there."""
    var hole = hole0
    var child = hole0
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if before(vals[child], vals[child - 1]):
            child -= 1
        vals[hole] = vals[child]
        idx[hole] = idx[child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        vals[hole] = vals[child - 1]
        idx[hole] = idx[child - 1]
        hole = child - 1
    while hole > hole0:
        var parent = (hole - 1) // 2
        if not before(vals[parent], v):
            break
        vals[hole] = vals[parent]
        idx[hole] = idx[parent]
        hole = parent
    vals[hole] = v
    idx[hole] = i


@export
def kv_topk_log_probs(x: Ptr, rows: Int, n: Int, stride: Int, top: Ptr, logs: Ptr, k: Int, vals: Ptr, idx: IPtr):
    """For each row r < rows of x (rows stride elements apart): torch.topk of the row's
    log-probabilities (x[r, i] - top[r]) - logs[r] (float32, rounded twice), k of them, into
    vals[r * k:] and idx[r * k:] in torch's order (std::partial_sort's heap; 1 <= k <= n)."""
    comptime W = 16
    for r in range(rows):
        var xr = x + r * stride
        var t = top[r]
        var lg = logs[r]
        var hv = vals + r * k
        var hi = idx + r * k
        for j in range(k):
            hv[j] = (xr[j] - t) - lg
            hi[j] = Int64(j)
        if k >= 2:  # make_heap
            var parent = (k - 2) // 2
            while True:
                sift(hv, hi, parent, k, hv[parent], hi[parent])
                if parent == 0:
                    break
                parent -= 1
        var pos = k
        var tv = SIMD[F, W](t)
        var lv = SIMD[F, W](lg)
        while pos + W <= n and hv[0].eq(hv[0]):  # a NaN at the top: nothing enters any more
            var v = (xr.unsafe_load[width=W](pos) - tv) - lv
            if (v.gt(SIMD[F, W](hv[0])) | isnan(v)).reduce_or():  # (a vector's ne is ordered)
                for c in range(W):
                    if before(v[c], hv[0]):
                        sift(hv, hi, 0, k, v[c], Int64(pos + c))
            pos += W
        while pos < n:
            var v = (xr[pos] - t) - lg
            if before(v, hv[0]):
                sift(hv, hi, 0, k, v, Int64(pos))
            pos += 1
        var last = k - 1
        while last > 0:  # sort_heap
            var v = hv[last]
            var i = hi[last]
            hv[last] = hv[0]
            hi[last] = hi[0]
            sift(hv, hi, 0, last, v, i)
            last -= 1


# --------------------------------------------------------------------------
# Sampling's weights (search.py's _exps_and_blocks): exps are SLEEF's; a block's sum adds its
# runs of 64 weights as sixteen float32 lanes (lane j adds the run's elements j, j + 16, ... in
# turn), then those lanes into eight float64 ones (lanes 0-7, then 8-15), folded by halves.

comptime D = DType.float64
comptime DPtr = UnsafePointer[Float64, MutAnyOrigin]
comptime RUN = 64


@always_inline
def fold8(acc: SIMD[D, 8]) -> Float64:
    var a0 = acc[0] + acc[4]
    var a1 = acc[1] + acc[5]
    var a2 = acc[2] + acc[6]
    var a3 = acc[3] + acc[7]
    return (a0 + a2) + (a1 + a3)


@always_inline
def add16(acc: SIMD[D, 8], v: SIMD[F, 16]) -> SIMD[D, 8]:
    """acc plus the 16 values of v in turn: elements 0-7, then 8-15, lane by lane."""
    return (acc + v.slice[8, offset=0]().cast[D]()) + v.slice[8, offset=8]().cast[D]()


@always_inline
def tempered_row[
    NONPOSITIVE: Bool
](xr: Ptr, er: Ptr, n: Int, temperature: Float32, m: Float32, blocks: DPtr, block: Int):
    comptime W = 16
    var nb = (n + block - 1) // block
    var tw = SIMD[F, W](temperature)
    var mv = SIMD[F, W](m)
    for b in range(nb):
        var j = b * block
        var hi = min(j + block, n)
        var acc = SIMD[D, 8](0.0)
        while j < hi:
            var end = min(j + RUN, hi)
            var lo = j
            var a32 = SIMD[F, W](0.0)
            while j + W <= end:
                var e = exp_of[W, NONPOSITIVE](xr.unsafe_load[width=W](j) / tw - mv)
                er.unsafe_store(j, e)
                a32 += e
                j += W
            while j < end:
                var e = expf[1](xr[j] / temperature - m)
                er[j] = e[0]
                a32[(j - lo) % W] = a32[(j - lo) % W] + e[0]
                j += 1
            acc = add16(acc, a32)
        blocks[b] = fold8(acc)


@export
def kv_sampling_exps(
    x: Ptr, rows: Int, n: Int, stride: Int, temperature: Float32, tops: Ptr, exps: Ptr, blocks: DPtr, block: Int
):
    """For each row r of x (rows stride elements apart), in one pass: z = x[r] / temperature
    (float32), m = tops[r] / temperature (tops: the rows' maxima of x, so m is z's; NaN if a
    row holds one), 0 where infinite; exps[r] = expf(z - m) (float32; exps' rows contiguous);
    blocks[r, b] = the sum of those exps over block b of block elements (a multiple of 64; the
    last block may be shorter): each run of 64 (or what is left of the row) summed in sixteen
    float32 lanes, each run's lanes added into eight float64 lanes, folded by halves. (A
    float64 sum of every weight costs a third more here than the exps themselves; runs of 64
    keep each float32 lane to four terms.)"""
    var nb = (n + block - 1) // block
    for r in range(rows):
        var xr = x + r * stride
        var er = exps + r * n
        var m = tops[r] / temperature
        if finite(m):
            tempered_row[True](xr, er, n, temperature, m, blocks + r * nb, block)  # z - m <= 0
        else:
            if m.eq(m):  # infinite: nothing subtracted
                m = 0.0
            tempered_row[False](xr, er, n, temperature, m, blocks + r * nb, block)


@export
def kv_sample_rows(weights: Ptr, blocks: DPtr, rows: Int, n: Int, block: Int, uniforms: DPtr, tokens: IPtr):
    """For each row r of weights (contiguous, kv_sampling_exps' output, with its blocks' sums):
    the CDF's blocks' running total cum (float64, in order), draw = uniforms[r] * cum[-1], the
    block b = how many running totals are <= draw (at most the last), then inside it the
    running float64 sum of its weights plus cum[b - 1] (for b > 0), and tokens[r] = the
    block's start + how many of those are <= draw; a draw past the block's end (a rounding)
    takes the last token before it with a weight > 0. tokens[r] = -1 where cum[-1] is
    not finite and > 0 (no entry to draw from)."""
    var nb = (n + block - 1) // block
    for r in range(rows):
        var br = blocks + r * nb
        var pr = weights + r * n
        var total = Float64(0.0)
        for b in range(nb):
            total = br[b] if b == 0 else total + br[b]
        if not (total.eq(total) and total > 0.0 and total <= Float64.MAX_FINITE):
            tokens[r] = -1
            continue
        var draw = uniforms[r] * total
        # the running totals of all blocks but the last: how many are <= draw is the block
        # (at most the last), and the last of them that is, the total before it
        var cum = Float64(0.0)
        var chosen = 0
        var before = Float64(0.0)
        for b in range(nb - 1):
            cum = br[b] if b == 0 else cum + br[b]
            if cum <= draw:
                chosen = b + 1
                before = cum
        var lo = chosen * block
        var hi = min(lo + block, n)
        var s = Float64(0.0)
        var count = 0
        for j in range(lo, hi):
            s = s + pr[j].cast[D]()
            var v = s + before if chosen > 0 else s
            if v <= draw:
                count += 1
        var out = lo + count
        if out >= hi:
            out -= 1
            while out > 0 and not (pr[out] > 0.0):
                out -= 1
        tokens[r] = Int64(out)
