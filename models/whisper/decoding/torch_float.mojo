# torch's CPU float32 exp and log (SLEEF's expf / logf, u10, which Vectorized<float> calls) and
# its vectorised sums, as a shared library for torch_float.py (built by kvgraph/max/native.py);
# and, for search.py, torch.topk's order over log-probabilities and the sampler's probabilities.
# The same float32 operations in the same order as torch_float.py's NumPy twins, which
# document the algorithms (after SLEEF's sleefsimdsp.c: xexpf, xlogf_u1); the tests hold the
# two equal bit for bit. Fused multiply-adds are written as such; every other product passes an
# arithmetic fence first, so the compiler cannot fuse it into the add that follows (that would
# round once where SLEEF rounds twice).

from std.memory import UnsafePointer, bitcast
from std.sys import llvm_intrinsic

comptime F = DType.float32
comptime Ptr = UnsafePointer[Float32, MutAnyOrigin]


@always_inline
def fence[W: Int](x: SIMD[F, W]) -> SIMD[F, W]:
    return llvm_intrinsic["llvm.arithmetic.fence", SIMD[F, W]](x)


@always_inline
def expf[W: Int](d_in: SIMD[F, W]) -> SIMD[F, W]:
    """SLEEF's expf: q = rint(d / ln 2), s = d - q ln 2 (two constants), a degree-6
    polynomial, times 2**q as two exact-then-rounding scalings; 0 below -104, inf above 100."""
    var low = d_in.lt(SIMD[F, W](-104.0))
    var high = d_in.gt(SIMD[F, W](100.0))
    var nan = d_in.ne(d_in)
    var d = (low | high | nan).select(SIMD[F, W](0.0), d_in)
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
    u = u * bitcast[F, W](((qi - h) + 127) << 23)
    u = low.select(SIMD[F, W](0.0), u)
    u = high.select(SIMD[F, W](Float32.MAX) * SIMD[F, W](2.0), u)
    return nan.select(d_in, u)


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
def row_sum[L: Int](x: Ptr, n: Int, top: Float32) -> Float32:
    """The sum of expf(x[i] - top), i < n, in torch's order for L lanes: lane j adds elements
    j, j + L, ... in turn, the tail joins the first lanes last, then the lanes fold by halves;
    a row shorter than L adds left to right."""
    var t = SIMD[F, 1](top)
    if n < L:
        var acc = SIMD[F, 1](0.0)
        for i in range(n):
            var e = expf[1](x.unsafe_load[width=1](i) - t)
            acc = e if i == 0 else acc + e
        return acc[0]
    var acc = expf[L](x.unsafe_load[width=L](0) - SIMD[F, L](top))
    var i = L
    while i + L <= n:
        acc += expf[L](x.unsafe_load[width=L](i) - SIMD[F, L](top))
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
    a row-major x whose rows are stride elements apart; lanes is 16 or 8."""
    for r in range(rows):
        var t = top.unsafe_load[width=1](r)[0]
        var s = row_sum[16](x + r * stride, n, t) if lanes == 16 else row_sum[8](x + r * stride, n, t)
        sums.unsafe_store(r, s)


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
            if (v.gt(SIMD[F, W](hv[0])) | v.ne(v)).reduce_or():
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
# Sampling's probabilities (search.py's sampling_probs): exps are SLEEF's, sums float64 in
# eight lanes (lane j adds elements j, j + 8, ... in turn; the lanes fold by halves).

comptime D = DType.float64
comptime DPtr = UnsafePointer[Float64, MutAnyOrigin]


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


@export
def kv_sampling_probs(
    x: Ptr, rows: Int, n: Int, stride: Int, temperature: Float32, tops: Ptr, probs: Ptr, blocks: DPtr, block: Int
):
    """For each row r of x (rows stride elements apart): z = x[r] / temperature (float32), m =
    tops[r] / temperature (tops: the rows' maxima of x, so m is z's; NaN if a row holds one),
    0 where infinite; e = expf(z - m); total = the lane-ordered float64 sum of e rounded to
    float32; probs[r] = e * (1 / total) (float32; probs' rows contiguous); blocks[r, b] = the
    lane-ordered float64 sum of those probabilities over block b of block elements (a multiple
    of 16; the last block may be shorter)."""
    comptime W = 16
    var nb = (n + block - 1) // block
    for r in range(rows):
        var xr = x + r * stride
        var pr = probs + r * n
        var m = tops[r] / temperature
        if m.eq(m) and (m.gt(Float32.MAX) or m.lt(-Float32.MAX)):
            m = 0.0
        var tw = SIMD[F, W](temperature)
        var mv = SIMD[F, W](m)
        var acc = SIMD[D, 8](0.0)
        var i = 0
        while i + W <= n:
            var e = expf[W](xr.unsafe_load[width=W](i) / tw - mv)
            pr.unsafe_store(i, e)
            acc = add16(acc, e)
            i += W
        while i < n:
            var e = expf[1](xr[i] / temperature - m)
            pr[i] = e[0]
            acc[i % 8] = acc[i % 8] + e.cast[D]()[0]
            i += 1
        var total = fold8(acc).cast[F]()
        var one = SIMD[F, 1](1.0) / total
        var scale = SIMD[F, W](one)
        for b in range(nb):
            var lo = b * block
            var hi = min(lo + block, n)
            var bacc = SIMD[D, 8](0.0)
            var j = lo
            while j + W <= hi:
                var p = pr.unsafe_load[width=W](j) * scale
                pr.unsafe_store(j, p)
                bacc = add16(bacc, p)
                j += W
            while j < hi:
                var p = pr[j] * one
                pr[j] = p
                bacc[(j - lo) % 8] = bacc[(j - lo) % 8] + p.cast[D]()
                j += 1
            blocks[r * nb + b] = fold8(bacc)


@export
def kv_sample_rows(probs: Ptr, blocks: DPtr, rows: Int, n: Int, block: Int, uniforms: DPtr, tokens: IPtr):
    """For each row r of probs (contiguous, kv_sampling_probs' output, with its blocks' sums):
    the CDF's blocks' running total cum (float64, in order), draw = uniforms[r] * cum[-1], the
    block b = how many running totals are <= draw (at most the last), then inside it the
    running float64 sum of its probabilities plus cum[b - 1] (for b > 0), and tokens[r] = the
    block's start + how many of those are <= draw; a draw past the block's end (a rounding)
    takes the last token before it with a probability > 0. tokens[r] = -1 where cum[-1] is
    not finite and > 0 (no entry to draw from)."""
    var nb = (n + block - 1) // block
    for r in range(rows):
        var br = blocks + r * nb
        var pr = probs + r * n
        var total = Float64(0.0)
        for b in range(nb):
            total = br[b] if b == 0 else total + br[b]
        if not (total.eq(total) and total > 0.0 and total <= Float64.MAX):
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
