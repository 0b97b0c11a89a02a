# The AVX512-BF16 register tile of kvgraph's bfloat16 kernels (bf16.mojo, engine "avx512"):
# VDPBF16PS multiplies the bfloat16 pairs of two 512-bit vectors and adds each pair's two
# products into a float32 lane, odd element first, then even (Intel SDM, VDPBF16PS; the
# products of two bfloat16 values are exact in float32).
#
# _rows[R] runs R rows of A (bfloat16 pairs along k: one uint32 word per pair) against two
# panels of 16 outputs (the packed layout the AMX tiles load too: per k pair, 16 words),
# holding R x 2 float32 accumulators, the 2 panel vectors of the current pair and one
# broadcast row pair: 2R + 3 of the 32 zmm registers, R = 12 at most (27). _block32 runs the
# 32 x 32 block the AMX kernels run in tiles as 12 + 12 + 8 rows, each panel vector loaded once
# per 12 rows and each row pair once per 32 outputs.
#
# Where the compile target lacks AVX512-BF16 (LLVM names some CPUs that have it without it,
# and tests run this engine on any machine), _dp is the same arithmetic as two float32 FMAs
# per lane, odd element first: identical results, except that the instruction flushes
# subnormal inputs and outputs to zero. The tile is unrolled by hand (12 x 2 named
# accumulators, rows past R dropped at compile time): this Mojo has no register array a loop
# can index.

from std.memory import bitcast
from std.sys import CompilationTarget, llvm_intrinsic


@always_inline
def _dp(acc: SIMD[DType.float32, 16], a: SIMD[DType.uint32, 16], b: SIMD[DType.uint32, 16]) -> SIMD[DType.float32, 16]:
    """acc + a.odd * b.odd + a.even * b.even per lane (bfloat16 pairs in uint32 words)."""
    comptime if CompilationTarget._has_feature["avx512bf16"]():
        return llvm_intrinsic["llvm.x86.avx512bf16.dpbf16ps.512", SIMD[DType.float32, 16]](
            acc, bitcast[DType.bfloat16, 32](a), bitcast[DType.bfloat16, 32](b)
        )
    else:
        # x.fma(y, z) is x * y + z (Mojo's SIMD.fma): the products first, the sum last
        var hi = SIMD[DType.uint32, 16](0xFFFF0000)
        var r = bitcast[DType.float32, 16](a & hi).fma(bitcast[DType.float32, 16](b & hi), acc)
        return bitcast[DType.float32, 16](a << 16).fma(bitcast[DType.float32, 16](b << 16), r)


@always_inline
def _rows[R: Int](
    a: UnsafePointer[UInt32, MutAnyOrigin], lda: Int,
    b0: UnsafePointer[UInt32, MutAnyOrigin], b1: UnsafePointer[UInt32, MutAnyOrigin], pairs: Int,
    c: UnsafePointer[Float32, MutAnyOrigin], ldc: Int,
):
    """Rows 0 .. R of A (bfloat16 pairs, lda words apart) against two 16-output panels:
    R x 2 accumulators, 2 panel vectors and a broadcast row pair in registers."""
    var c00 = SIMD[DType.float32, 16](0)
    var c01 = SIMD[DType.float32, 16](0)
    var c10 = SIMD[DType.float32, 16](0)
    var c11 = SIMD[DType.float32, 16](0)
    var c20 = SIMD[DType.float32, 16](0)
    var c21 = SIMD[DType.float32, 16](0)
    var c30 = SIMD[DType.float32, 16](0)
    var c31 = SIMD[DType.float32, 16](0)
    var c40 = SIMD[DType.float32, 16](0)
    var c41 = SIMD[DType.float32, 16](0)
    var c50 = SIMD[DType.float32, 16](0)
    var c51 = SIMD[DType.float32, 16](0)
    var c60 = SIMD[DType.float32, 16](0)
    var c61 = SIMD[DType.float32, 16](0)
    var c70 = SIMD[DType.float32, 16](0)
    var c71 = SIMD[DType.float32, 16](0)
    var c80 = SIMD[DType.float32, 16](0)
    var c81 = SIMD[DType.float32, 16](0)
    var c90 = SIMD[DType.float32, 16](0)
    var c91 = SIMD[DType.float32, 16](0)
    var c100 = SIMD[DType.float32, 16](0)
    var c101 = SIMD[DType.float32, 16](0)
    var c110 = SIMD[DType.float32, 16](0)
    var c111 = SIMD[DType.float32, 16](0)
    for p in range(pairs):
        var w0 = b0.unsafe_load[width=16](p * 16)
        var w1 = b1.unsafe_load[width=16](p * 16)
        var x0 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](0 * lda + p)[0])
        c00 = _dp(c00, x0, w0)
        c01 = _dp(c01, x0, w1)
        comptime if R > 1:
            var x1 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](1 * lda + p)[0])
            c10 = _dp(c10, x1, w0)
            c11 = _dp(c11, x1, w1)
        comptime if R > 2:
            var x2 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](2 * lda + p)[0])
            c20 = _dp(c20, x2, w0)
            c21 = _dp(c21, x2, w1)
        comptime if R > 3:
            var x3 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](3 * lda + p)[0])
            c30 = _dp(c30, x3, w0)
            c31 = _dp(c31, x3, w1)
        comptime if R > 4:
            var x4 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](4 * lda + p)[0])
            c40 = _dp(c40, x4, w0)
            c41 = _dp(c41, x4, w1)
        comptime if R > 5:
            var x5 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](5 * lda + p)[0])
            c50 = _dp(c50, x5, w0)
            c51 = _dp(c51, x5, w1)
        comptime if R > 6:
            var x6 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](6 * lda + p)[0])
            c60 = _dp(c60, x6, w0)
            c61 = _dp(c61, x6, w1)
        comptime if R > 7:
            var x7 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](7 * lda + p)[0])
            c70 = _dp(c70, x7, w0)
            c71 = _dp(c71, x7, w1)
        comptime if R > 8:
            var x8 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](8 * lda + p)[0])
            c80 = _dp(c80, x8, w0)
            c81 = _dp(c81, x8, w1)
        comptime if R > 9:
            var x9 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](9 * lda + p)[0])
            c90 = _dp(c90, x9, w0)
            c91 = _dp(c91, x9, w1)
        comptime if R > 10:
            var x10 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](10 * lda + p)[0])
            c100 = _dp(c100, x10, w0)
            c101 = _dp(c101, x10, w1)
        comptime if R > 11:
            var x11 = SIMD[DType.uint32, 16](a.unsafe_load[width=1](11 * lda + p)[0])
            c110 = _dp(c110, x11, w0)
            c111 = _dp(c111, x11, w1)
    c.unsafe_store(0 * ldc, c00)
    c.unsafe_store(0 * ldc + 16, c01)
    comptime if R > 1:
        c.unsafe_store(1 * ldc, c10)
        c.unsafe_store(1 * ldc + 16, c11)
    comptime if R > 2:
        c.unsafe_store(2 * ldc, c20)
        c.unsafe_store(2 * ldc + 16, c21)
    comptime if R > 3:
        c.unsafe_store(3 * ldc, c30)
        c.unsafe_store(3 * ldc + 16, c31)
    comptime if R > 4:
        c.unsafe_store(4 * ldc, c40)
        c.unsafe_store(4 * ldc + 16, c41)
    comptime if R > 5:
        c.unsafe_store(5 * ldc, c50)
        c.unsafe_store(5 * ldc + 16, c51)
    comptime if R > 6:
        c.unsafe_store(6 * ldc, c60)
        c.unsafe_store(6 * ldc + 16, c61)
    comptime if R > 7:
        c.unsafe_store(7 * ldc, c70)
        c.unsafe_store(7 * ldc + 16, c71)
    comptime if R > 8:
        c.unsafe_store(8 * ldc, c80)
        c.unsafe_store(8 * ldc + 16, c81)
    comptime if R > 9:
        c.unsafe_store(9 * ldc, c90)
        c.unsafe_store(9 * ldc + 16, c91)
    comptime if R > 10:
        c.unsafe_store(10 * ldc, c100)
        c.unsafe_store(10 * ldc + 16, c101)
    comptime if R > 11:
        c.unsafe_store(11 * ldc, c110)
        c.unsafe_store(11 * ldc + 16, c111)


@always_inline
def block32(
    a: UnsafePointer[UInt32, MutAnyOrigin], lda: Int,
    b0: UnsafePointer[UInt32, MutAnyOrigin], b1: UnsafePointer[UInt32, MutAnyOrigin], pairs: Int,
    c: UnsafePointer[Float32, MutAnyOrigin], ldc: Int,
):
    """C[32, 32] = A[32, 2 * pairs] . [panel b0 | panel b1] (rows lda words apart in A, ldc
    floats apart in C)."""
    _rows[12](a, lda, b0, b1, pairs, c, ldc)
    _rows[12](a + 12 * lda, lda, b0, b1, pairs, c + 12 * ldc, ldc)
    _rows[8](a + 24 * lda, lda, b0, b1, pairs, c + 24 * ldc, ldc)
