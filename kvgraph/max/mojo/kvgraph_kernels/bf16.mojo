# bfloat16 products with float32 accumulation: a GEMM against a packed weight
# (kvgraph_matmul_bf16_*) and unmasked attention (kvgraph_attend_bf16_*), each for two engines
# that run the same blocks of 32 x 32 outputs:
#   _amx:    Intel AMX tiles (Sapphire Rapids and later), a 2 x 2 block of 16 x 16 tiles;
#   _avx512: AVX512-BF16's VDPBF16PS on zmm registers (AMD Zen 4/5, Intel Cooper Lake and
#            later), the register tile of dpbf16.mojo.
#
#   out[r, j] = sum_k bf16(x[r, k]) * bf16(w[j, k])       x f32[m, k], out f32[m, n]
#
# bf16(v) rounds float32 to bfloat16, to nearest with ties to even (what the NumPy reference
# emulates: kvgraph/reference.py). Products of two bfloat16 values are exact in float32; both
# engines add them in pairs into float32 accumulators. The sum order is not a GEMM's: results
# agree with the reference to float32 rounding of the sums, not bit for bit.
#
# The weight comes packed by the lowering (kvgraph/max/lower.py, layout "bf16_panels"): panels
# of 16 outputs, each [kp / 2, 16, 2] bfloat16 bits (uint16), k zero-padded to kp (a multiple
# of 32) and the outputs to a multiple of 32 — the layout a B tile loads as 1 KB contiguous,
# and per k pair one zmm vector of 16 outputs for VDPBF16PS.
# Each task takes 32 rows of x, rounds them to bfloat16 into a zero-padded [32, kp] buffer (the
# A operand), and runs them against every pair of panels. AMX: a 2 x 2 block of 16 x 16 float32
# accumulator tiles (tiles 0-3; A in 4-5, B in 6-7), each loaded tile used twice.
#
# The tile instructions are emitted as bytes: MAX compiles kernels for the host CPU as LLVM
# names it, and LLVM names this VM's Sapphire Rapids "rocketlake" (no AMX features), so the
# AMX intrinsics do not select. The encodings (VEX, operands fixed: config address in rdi,
# tile memory as (rsi + rdx * 1)) come from the Intel SDM's AMX chapter, checked with GNU as.
# Linux grants a process the AMX tile state on request (arch_prctl ARCH_REQ_XCOMP_PERM with
# XFEATURE_XTILEDATA = 18, see the kernel's Documentation/arch/x86/xstate.rst); the kernel asks
# on every call (a syscall: microseconds) so that any process running it holds the right.
# The lowering picks the engine (kvgraph/max/isa.py, bf16_engine): AMX where /proc/cpuinfo
# lists amx_tile and amx_bf16, AVX512-BF16 where it lists avx512_bf16. The avx512 engine runs
# correctly anywhere (dpbf16.mojo falls back to float32 FMAs where the target lacks the
# instruction), so tests run it on every machine.

from extensibility import register
from extensibility.managed_tensor_slice import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp
from std.memory import alloc, bitcast
from std.sys import CompilationTarget
from std.sys._assembly import inlined_assembly
from std.ffi import external_call

from .dpbf16 import block32

comptime BLOCK = 32  # rows (and outputs) of one 2 x 2 block of 16 x 16 tiles
comptime CHUNKS = 16  # attention: tasks per call at most (each allocates its scratch once)


# (x86 only: elsewhere they compile to nothing, and the kernels refuse to run before any.)
@always_inline
def _at_rdi[code: StaticString](p: Int):
    comptime if CompilationTarget.is_x86():
        inlined_assembly[code, NoneType, constraints="{rdi},~{memory}", has_side_effect=True](p)


@always_inline
def _at_rsi_rdx[code: StaticString](p: Int, stride: Int):
    comptime if CompilationTarget.is_x86():
        inlined_assembly[code, NoneType, constraints="{rsi},{rdx},~{memory}", has_side_effect=True](p, stride)


@always_inline
def _op[code: StaticString]():
    comptime if CompilationTarget.is_x86():
        inlined_assembly[code, NoneType, constraints="~{memory}", has_side_effect=True]()


comptime LDTILECFG_RDI = ".byte 0xc4,0xe2,0x78,0x49,0x07"  # ldtilecfg (%rdi)
comptime TILERELEASE = ".byte 0xc4,0xe2,0x78,0x49,0xc0"
comptime TILEZERO_0 = ".byte 0xc4,0xe2,0x7b,0x49,0xc0"
comptime TILEZERO_1 = ".byte 0xc4,0xe2,0x7b,0x49,0xc8"
comptime TILEZERO_2 = ".byte 0xc4,0xe2,0x7b,0x49,0xd0"
comptime TILEZERO_3 = ".byte 0xc4,0xe2,0x7b,0x49,0xd8"
comptime TILELOADD_4 = ".byte 0xc4,0xe2,0x7b,0x4b,0x24,0x16"  # tileloadd (%rsi,%rdx,1), %tmm4
comptime TILELOADD_5 = ".byte 0xc4,0xe2,0x7b,0x4b,0x2c,0x16"
comptime TILELOADD_6 = ".byte 0xc4,0xe2,0x7b,0x4b,0x34,0x16"
comptime TILELOADD_7 = ".byte 0xc4,0xe2,0x7b,0x4b,0x3c,0x16"
comptime TDPBF16PS_0_4_6 = ".byte 0xc4,0xe2,0x4a,0x5c,0xc4"  # tmm0 += tmm4 . tmm6
comptime TDPBF16PS_1_4_7 = ".byte 0xc4,0xe2,0x42,0x5c,0xcc"
comptime TDPBF16PS_2_5_6 = ".byte 0xc4,0xe2,0x4a,0x5c,0xd5"
comptime TDPBF16PS_3_5_7 = ".byte 0xc4,0xe2,0x42,0x5c,0xdd"
comptime TILESTORED_0 = ".byte 0xc4,0xe2,0x7a,0x4b,0x04,0x16"  # tilestored %tmm0, (%rsi,%rdx,1)
comptime TILESTORED_1 = ".byte 0xc4,0xe2,0x7a,0x4b,0x0c,0x16"
comptime TILESTORED_2 = ".byte 0xc4,0xe2,0x7a,0x4b,0x14,0x16"
comptime TILESTORED_3 = ".byte 0xc4,0xe2,0x7a,0x4b,0x1c,0x16"


def request_amx() -> Bool:
    """Ask Linux for the AMX tile state (a no-op once granted); False off x86."""
    comptime if not CompilationTarget.is_x86():
        return False
    # arch_prctl is syscall 158 on x86-64; ARCH_REQ_XCOMP_PERM = 0x1023; XFEATURE_XTILEDATA = 18
    return external_call["syscall", Int](Int(158), Int(0x1023), Int(18)) == 0


@always_inline
def to_bf16[W: Int](v: SIMD[DType.float32, W]) -> SIMD[DType.uint16, W]:
    """Float32 to bfloat16 bits, to nearest, ties to even (finite inputs)."""
    var u = bitcast[DType.uint32, W](v)
    var r = u + SIMD[DType.uint32, W](0x7FFF) + ((u >> 16) & SIMD[DType.uint32, W](1))
    return (r >> 16).cast[DType.uint16]()


def _matmul[AMX: Bool, NAME: StaticString](
    xp: UnsafePointer[Float32, MutAnyOrigin],
    wp: UnsafePointer[UInt16, MutAnyOrigin],
    op: UnsafePointer[Float32, MutAnyOrigin],
    m: Int, k: Int, n: Int, kp: Int, np_: Int, last: Int,
) raises:
    """out[m, n] = bf16(x[m, k]) . panels (kp inner, np_ outputs); last: the panels' last dim."""
    if last != 32 or kp % BLOCK != 0 or kp < k or kp >= k + BLOCK or np_ % BLOCK != 0:
        raise Error(String(NAME, ": the weight is not in bf16 panels of this inner dim"))
    if np_ < n or np_ >= n + BLOCK:
        raise Error(String(NAME, ": the weight's panels do not hold the outputs"))
    comptime if AMX:
        if not request_amx():
            raise Error(String(NAME, ": Linux refused this process the AMX tile state"))
    var blocks = (m + BLOCK - 1) // BLOCK

    def work(blk: Int) {imm}:
        var i0 = blk * BLOCK
        var rows = min(BLOCK, m - i0)
        var cfg = rebind[UnsafePointer[UInt8, MutAnyOrigin]](alloc[UInt8](64))
        var a = rebind[UnsafePointer[UInt16, MutAnyOrigin]](alloc[UInt16](BLOCK * kp))
        var scratch = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](BLOCK * BLOCK))
        # A: this block's rows of x in bfloat16, zero-padded to [BLOCK, kp]
        for r in range(BLOCK):
            var kk = 0
            if r < rows:
                var src = xp + (i0 + r) * k
                while kk + 16 <= k:
                    a.unsafe_store(r * kp + kk, to_bf16[16](src.unsafe_load[width=16](kk)))
                    kk += 16
                while kk < k:
                    a.unsafe_store(r * kp + kk, to_bf16[1](src.unsafe_load[width=1](kk)))
                    kk += 1
            while kk < kp:
                a.unsafe_store(r * kp + kk, UInt16(0))
                kk += 1
        comptime if AMX:
            _tile_config(cfg)
        var panel = kp * 16  # uint16 elements of one 16-output panel
        for j in range(0, np_, BLOCK):
            var b0 = wp + (j // 16) * panel
            var whole = rows == BLOCK and j + BLOCK <= n
            # a whole block straight into the output; an edge block through the scratch
            var c = op + i0 * n + j if whole else scratch
            var ldc = n if whole else BLOCK
            comptime if AMX:
                _tile_block(Int(a), kp * 2, Int(b0), Int(b0 + panel), kp, Int(c), ldc * 4)
            else:
                block32(a.bitcast[UInt32](), kp // 2, b0.bitcast[UInt32](), (b0 + panel).bitcast[UInt32](), kp // 2, c, ldc)
            if not whole:
                var cols = min(BLOCK, n - j)
                for r in range(rows):
                    for cc in range(cols):
                        op.unsafe_store((i0 + r) * n + j + cc, scratch.unsafe_load[width=1](r * BLOCK + cc))
        comptime if AMX:
            _op[TILERELEASE]()
        cfg.unsafe_free()
        a.unsafe_free()
        scratch.unsafe_free()

    sync_parallelize(work, num_work_items=blocks)


@always_inline
def _tile_config(cfg: UnsafePointer[UInt8, MutAnyOrigin]):
    """Palette 1, every tile 16 rows of 64 bytes, loaded (AMX)."""
    for q in range(64):
        cfg.unsafe_store(q, UInt8(0))
    cfg.unsafe_store(0, UInt8(1))
    for t in range(8):
        cfg.unsafe_store(16 + 2 * t, UInt8(64))
        cfg.unsafe_store(48 + t, UInt8(16))
    _at_rdi[LDTILECFG_RDI](Int(cfg))


@always_inline
def _tile_block(a0: Int, lda: Int, b0: Int, b1: Int, depth: Int, c: Int, ldc: Int):
    """AMX: C[32, 32] (ldc bytes a row) = A[32, depth] (bfloat16, lda bytes a row) . the two
    16-output panels at b0 and b1 ([depth / 2, 16, 2] each)."""
    var a1 = a0 + 16 * lda
    _op[TILEZERO_0]()
    _op[TILEZERO_1]()
    _op[TILEZERO_2]()
    _op[TILEZERO_3]()
    for kk in range(0, depth, BLOCK):
        _at_rsi_rdx[TILELOADD_4](a0 + kk * 2, lda)
        _at_rsi_rdx[TILELOADD_6](b0 + kk * 32, 64)
        _op[TDPBF16PS_0_4_6]()
        _at_rsi_rdx[TILELOADD_7](b1 + kk * 32, 64)
        _op[TDPBF16PS_1_4_7]()
        _at_rsi_rdx[TILELOADD_5](a1 + kk * 2, lda)
        _op[TDPBF16PS_2_5_6]()
        _op[TDPBF16PS_3_5_7]()
    _at_rsi_rdx[TILESTORED_0](c, ldc)
    _at_rsi_rdx[TILESTORED_1](c + 64, ldc)
    _at_rsi_rdx[TILESTORED_2](c + 16 * ldc, ldc)
    _at_rsi_rdx[TILESTORED_3](c + 16 * ldc + 64, ldc)


@register("kvgraph_matmul_bf16_amx")
struct MatmulBf16Amx:
    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.uint16, rank=3, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_matmul_bf16_amx runs on the CPU only (Intel AMX)")
        _matmul[True, "kvgraph_matmul_bf16_amx"](
            rebind[UnsafePointer[Float32, MutAnyOrigin]](x.unsafe_ptr()),
            rebind[UnsafePointer[UInt16, MutAnyOrigin]](w.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr()),
            x.dim_size(0), x.dim_size(1), output.dim_size(1), w.dim_size(1) * 2, w.dim_size(0) * 16, w.dim_size(2),
        )


@register("kvgraph_matmul_bf16_avx512")
struct MatmulBf16Avx512:
    @staticmethod
    def execute[target: StaticString](
        output: OutputTensor[dtype=DType.float32, rank=2, static_spec=_],
        x: InputTensor[dtype=DType.float32, rank=2, static_spec=_],
        w: InputTensor[dtype=DType.uint16, rank=3, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_matmul_bf16_avx512 runs on the CPU only")
        _matmul[False, "kvgraph_matmul_bf16_avx512"](
            rebind[UnsafePointer[Float32, MutAnyOrigin]](x.unsafe_ptr()),
            rebind[UnsafePointer[UInt16, MutAnyOrigin]](w.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr()),
            x.dim_size(0), x.dim_size(1), output.dim_size(1), w.dim_size(1) * 2, w.dim_size(0) * 16, w.dim_size(2),
        )


# ---------------------------------------------------------------------------------- attention
# Unmasked multi-head attention (an encoder's self-attention) with bfloat16 products:
#
#   S = bf16(q_h) . bf16(k_h)^T           (float32 sums, per head h)
#   e = exp((S - rowmax(S)) * scale)      (float32)
#   out_h = (bf16(e) . bf16(v_h)) / rowsum(e)
#
# which the NumPy reference emulates (kvgraph/reference.py, attention with compute=bfloat16).
# q f32[b, s, heads * dh], k and v f32[b, t, kv_heads * dh] (heads a multiple of kv_heads,
# dh a multiple of 32). First every (batch row, kv head)'s K and V are rounded and packed as
# B tiles load them (K: panels of 16 keys [tp / 16, dh / 2, 32]; V: panels of 16 dims
# [dh / 16, tp / 2, 32]; keys zero-padded to tp, a multiple of 32). Then each task takes 32
# query rows of one head: S in 2 x 2 tile blocks into a [32, tp] float32 buffer (L2), the
# softmax row by row in float32 vectors (e rounded into a [32, tp] bfloat16 A operand, padded
# keys 0), then e . V in tile blocks, each row scaled by 1 / rowsum on the way out.


@always_inline
def _pack_k(kb: UnsafePointer[UInt16, MutAnyOrigin], src: UnsafePointer[Float32, MutAnyOrigin], t: Int, tp: Int, dh: Int, stride: Int):
    """K rows (t keys of dh, `stride` floats apart) as panels of 16 keys: the pair of dims
    (2i, 2i + 1) of key 16p + c at uint32 word (p * dh / 2 + i) * 16 + c. A panel's 16 rows
    are rounded in vectors into a [16, dh] buffer, whose pairs are then transposed."""
    var words = kb.bitcast[UInt32]()
    var rows = alloc[UInt16](16 * dh)
    var rw = rows.bitcast[UInt32]()
    var half = dh // 2
    for p in range(tp // 16):
        for c in range(16):
            var j = 16 * p + c
            for d in range(0, dh, 16):
                var v = SIMD[DType.uint16, 16](0)
                if j < t:
                    v = to_bf16[16](src.unsafe_load[width=16](j * stride + d))
                rows.unsafe_store(c * dh + d, v)
        for i in range(half):
            for c in range(16):
                words.unsafe_store((p * half + i) * 16 + c, rw.unsafe_load[width=1](c * half + i))
    rows.unsafe_free()


@always_inline
def _pack_v(vb: UnsafePointer[UInt16, MutAnyOrigin], src: UnsafePointer[Float32, MutAnyOrigin], t: Int, tp: Int, dh: Int, stride: Int):
    """V rows as panels of 16 dims: keys (2i, 2i + 1) of dims 16p .. 16p + 15 at uint32
    words (p * tp / 2 + i) * 16 + c."""
    var words = vb.bitcast[UInt32]()
    for i in range(tp // 2):
        for p in range(dh // 16):
            var lo = SIMD[DType.uint32, 16](0)
            var hi = SIMD[DType.uint32, 16](0)
            if 2 * i < t:
                lo = to_bf16[16](src.unsafe_load[width=16](2 * i * stride + 16 * p)).cast[DType.uint32]()
            if 2 * i + 1 < t:
                hi = to_bf16[16](src.unsafe_load[width=16]((2 * i + 1) * stride + 16 * p)).cast[DType.uint32]()
            words.unsafe_store((p * (tp // 2) + i) * 16, lo | (hi << 16))


@always_inline
def _attend_block[AMX: Bool](
    task: Int, qblocks: Int, heads: Int, group: Int, kvh: Int, s: Int, t: Int, w: Int, dh: Int, tp: Int, per: Int,
    scale: Float32,
    qp: UnsafePointer[Float32, MutAnyOrigin],
    op: UnsafePointer[Float32, MutAnyOrigin],
    kbuf: UnsafePointer[UInt16, MutAnyOrigin],
    vbuf: UnsafePointer[UInt16, MutAnyOrigin],
    aq: UnsafePointer[UInt16, MutAnyOrigin],
    sc: UnsafePointer[Float32, MutAnyOrigin],
    pe: UnsafePointer[UInt16, MutAnyOrigin],
    ob: UnsafePointer[Float32, MutAnyOrigin],
    linv: UnsafePointer[Float32, MutAnyOrigin],
):
    """One task: 32 query rows of one head (AMX: the tile configuration already loaded)."""
    var qb = task % qblocks
    var h = (task // qblocks) % heads
    var bi = task // (qblocks * heads)
    var i0 = qb * BLOCK
    var rows = min(BLOCK, s - i0)
    var kv = bi * kvh + h // group
    for r in range(BLOCK):  # this block's query rows of head h in bfloat16
        for d in range(0, dh, 16):
            var val = SIMD[DType.uint16, 16](0)
            if r < rows:
                val = to_bf16[16](qp.unsafe_load[width=16](((bi * s) + i0 + r) * w + h * dh + d))
            aq.unsafe_store(r * dh + d, val)
    var half = dh // 2
    for j in range(0, tp, BLOCK):  # S = Q K^T
        var k0 = kbuf + kv * per + (j // 16) * half * 32
        comptime if AMX:
            _tile_block(Int(aq), dh * 2, Int(k0), Int(k0 + half * 32), dh, Int(sc + j), tp * 4)
        else:
            block32(aq.bitcast[UInt32](), half, k0.bitcast[UInt32](), (k0 + half * 32).bitcast[UInt32](), half, sc + j, tp)
    for r in range(BLOCK):  # the softmax's numerators (bfloat16) and 1 / rowsum
        var row = sc + r * tp
        var prow = pe + r * tp
        if r >= rows:
            for j in range(0, tp, 16):
                prow.unsafe_store(j, SIMD[DType.uint16, 16](0))
            continue
        var mv = SIMD[DType.float32, 16](row.unsafe_load[width=1](0)[0])
        var j = 0
        while j + 16 <= t:
            mv = max(mv, row.unsafe_load[width=16](j))
            j += 16
        var m = mv.reduce_max()
        while j < t:
            m = max(m, row.unsafe_load[width=1](j)[0])
            j += 1
        var sv = SIMD[DType.float32, 16](0)
        var ssum = Float32(0)
        j = 0
        while j + 16 <= t:
            var e = exp((row.unsafe_load[width=16](j) - m) * scale)
            sv += e
            prow.unsafe_store(j, to_bf16[16](e))
            j += 16
        while j < t:
            var e1 = exp((row.unsafe_load[width=1](j) - m) * scale)
            ssum += e1[0]
            prow.unsafe_store(j, to_bf16[1](e1))
            j += 1
        while j < tp:
            prow.unsafe_store(j, UInt16(0))
            j += 1
        linv.unsafe_store(r, 1.0 / (sv.reduce_add() + ssum))
    var vhalf = tp // 2
    for jd in range(0, dh, BLOCK):  # out = e V
        var v0 = vbuf + kv * per + (jd // 16) * vhalf * 32
        comptime if AMX:
            _tile_block(Int(pe), tp * 2, Int(v0), Int(v0 + vhalf * 32), tp, Int(ob + jd), dh * 4)
        else:
            block32(pe.bitcast[UInt32](), vhalf, v0.bitcast[UInt32](), (v0 + vhalf * 32).bitcast[UInt32](), vhalf, ob + jd, dh)
    for r in range(rows):
        var f = linv.unsafe_load[width=1](r)[0]
        var dst = op + ((bi * s) + i0 + r) * w + h * dh
        for d in range(0, dh, 16):
            dst.unsafe_store(d, ob.unsafe_load[width=16](r * dh + d) * f)


def _attend[AMX: Bool, NAME: StaticString](
    qp: UnsafePointer[Float32, MutAnyOrigin],
    kp: UnsafePointer[Float32, MutAnyOrigin],
    vp: UnsafePointer[Float32, MutAnyOrigin],
    op: UnsafePointer[Float32, MutAnyOrigin],
    scale: Float32, heads: Int, nb: Int, s: Int, w: Int, t: Int, kw: Int,
) raises:
    """q f32[nb, s, w], k and v f32[nb, t, kw] (shapes checked by the caller to match)."""
    var dh = w // heads
    if w % heads != 0 or dh % BLOCK != 0 or kw % dh != 0:
        raise Error(String(NAME, ": the head size must be a multiple of 32"))
    var kvh = kw // dh
    if heads % kvh != 0:
        raise Error(String(NAME, ": q, k and v do not match"))
    if t < 1:
        raise Error(String(NAME, ": no keys"))
    comptime if AMX:
        if not request_amx():
            raise Error(String(NAME, ": Linux refused this process the AMX tile state"))
    var group = heads // kvh
    var tp = (t + BLOCK - 1) // BLOCK * BLOCK
    var per = tp * dh  # uint16 elements of one head's packed K (and of its V)
    var kbuf = rebind[UnsafePointer[UInt16, MutAnyOrigin]](alloc[UInt16](nb * kvh * per))
    var vbuf = rebind[UnsafePointer[UInt16, MutAnyOrigin]](alloc[UInt16](nb * kvh * per))

    def pack(task: Int) {imm}:
        var bi = task // kvh
        var g = task % kvh
        var src = bi * t * kw + g * dh
        _pack_k(kbuf + task * per, kp + src, t, tp, dh, kw)
        _pack_v(vbuf + task * per, vp + src, t, tp, dh, kw)

    sync_parallelize(pack, num_work_items=nb * kvh)
    var qblocks = (s + BLOCK - 1) // BLOCK

    var items = nb * heads * qblocks
    var chunks = min(items, CHUNKS)

    def work(chunk: Int) {imm}:
        # scratch allocated once per chunk of tasks (the score rows are 192 KB at 1,500
        # keys: an allocation that size is an mmap, its pages faulted in anew each time)
        var cfg = rebind[UnsafePointer[UInt8, MutAnyOrigin]](alloc[UInt8](64))
        var aq = rebind[UnsafePointer[UInt16, MutAnyOrigin]](alloc[UInt16](BLOCK * dh))
        var sc = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](BLOCK * tp))
        var pe = rebind[UnsafePointer[UInt16, MutAnyOrigin]](alloc[UInt16](BLOCK * tp))
        var ob = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](BLOCK * dh))
        var linv = rebind[UnsafePointer[Float32, MutAnyOrigin]](alloc[Float32](BLOCK))
        comptime if AMX:
            _tile_config(cfg)
        for task in range(chunk * items // chunks, (chunk + 1) * items // chunks):
            _attend_block[AMX](task, qblocks, heads, group, kvh, s, t, w, dh, tp, per, scale, qp, op, kbuf, vbuf, aq, sc, pe, ob, linv)
        comptime if AMX:
            _op[TILERELEASE]()
        cfg.unsafe_free()
        aq.unsafe_free()
        sc.unsafe_free()
        pe.unsafe_free()
        ob.unsafe_free()
        linv.unsafe_free()

    sync_parallelize(work, num_work_items=chunks)
    kbuf.unsafe_free()
    vbuf.unsafe_free()


@register("kvgraph_attend_bf16_amx")
struct AttendBf16Amx:
    @staticmethod
    def execute[target: StaticString, heads: Int](
        output: OutputTensor[dtype=DType.float32, rank=3, static_spec=_],
        q: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        k: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        v: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        scale_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_attend_bf16_amx runs on the CPU only (Intel AMX)")
        var nb = q.dim_size(0)
        var t = k.dim_size(1)
        var kw = k.dim_size(2)
        if k.dim_size(0) != nb or v.dim_size(0) != nb or v.dim_size(1) != t or v.dim_size(2) != kw:
            raise Error("kvgraph_attend_bf16_amx: q, k and v do not match")
        _attend[True, "kvgraph_attend_bf16_amx"](
            rebind[UnsafePointer[Float32, MutAnyOrigin]](q.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](k.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](v.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr()),
            scale_t.unsafe_ptr().unsafe_load[width=1](0)[0], heads, nb, q.dim_size(1), q.dim_size(2), t, kw,
        )


@register("kvgraph_attend_bf16_avx512")
struct AttendBf16Avx512:
    @staticmethod
    def execute[target: StaticString, heads: Int](
        output: OutputTensor[dtype=DType.float32, rank=3, static_spec=_],
        q: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        k: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        v: InputTensor[dtype=DType.float32, rank=3, static_spec=_],
        scale_t: InputTensor[dtype=DType.float32, rank=1, static_spec=_],
        ctx: DeviceContext,
    ) raises:
        if target != "cpu":
            raise Error("kvgraph_attend_bf16_avx512 runs on the CPU only")
        var nb = q.dim_size(0)
        var t = k.dim_size(1)
        var kw = k.dim_size(2)
        if k.dim_size(0) != nb or v.dim_size(0) != nb or v.dim_size(1) != t or v.dim_size(2) != kw:
            raise Error("kvgraph_attend_bf16_avx512: q, k and v do not match")
        _attend[False, "kvgraph_attend_bf16_avx512"](
            rebind[UnsafePointer[Float32, MutAnyOrigin]](q.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](k.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](v.unsafe_ptr()),
            rebind[UnsafePointer[Float32, MutAnyOrigin]](output.unsafe_ptr()),
            scale_t.unsafe_ptr().unsafe_load[width=1](0)[0], heads, nb, q.dim_size(1), q.dim_size(2), t, kw,
        )
