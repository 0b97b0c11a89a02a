"""The instruction-set class kvgraph's custom kernels are instantiated for.

The kernels (``kvgraph/max/mojo/kvgraph_kernels``) take their vector width, register count
and L1d size as compile-time parameters, passed by the lowering through ``ops.custom``; this
module says which values this machine gets. One documented choice per class:

========  =====  =========  ================================================
class     lanes  registers  machines
========  =====  =========  ================================================
avx512      16     32 zmm   Intel Skylake-SP .. Sapphire Rapids, AMD Zen 4/5
avx2         8     16 ymm   AMD Zen 1-3, Intel Haswell .. Alder Lake
neon         4     32 v     AArch64 (Graviton, Apple silicon, Ampere)
sse          4     16 xmm   any other x86-64
========  =====  =========  ================================================

The L1d size is read from ``/sys/devices/system/cpu/cpu0/cache`` (32 KiB when it cannot be).
The code the Mojo compiler emits always targets the machine it runs on, so every class runs
correctly on every machine (a 16-lane vector is two 8-lane ones on AVX2): the class only
shapes the tiles. ``KVGRAPH_ISA=avx2`` (etc.) forces a class — for tests, and to measure one
class's tiles on another machine.

The row-count thresholds of the lowering (up to how many rows the few-row programs and the
float16 GEMV run) are a table keyed by class too (:func:`thresholds`): measured on one AVX-512
machine (``benchmarks/gemv_kernel.py`` and ``benchmarks/step_rows.py``, AMD EPYC Zen 5); the
other classes start from the same values until measured there.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import attrs

from . import native

__all__ = [
    "Isa",
    "CLASSES",
    "classify",
    "host",
    "l1d_bytes",
    "thresholds",
    "ENV",
    "amx",
    "AMX_ENV",
    "BF16_ENV",
    "BF16_ENGINES",
    "bf16_engine",
    "note_bfloat16",
]

ENV = "KVGRAPH_ISA"
AMX_ENV = "KVGRAPH_AMX"
BF16_ENV = "KVGRAPH_BF16"


@attrs.frozen
class Isa:
    name: str
    lanes: int  # float32 lanes per vector register
    registers: int  # vector registers the code may use
    l1d: int = 32 * 1024  # L1 data cache of one core, bytes

    def gemv_parameters(self) -> dict[str, int]:
        return {"lanes": self.lanes, "regs": self.registers}

    def attend_parameters(self) -> dict[str, int]:
        return {"lanes": self.lanes, "regs": self.registers, "l1": self.l1d}

    def describe(self) -> str:
        return f"{self.name} ({self.lanes} float32 lanes, {self.registers} registers, L1d {self.l1d // 1024} KiB)"


CLASSES: dict[str, tuple[int, int]] = {
    "avx512": (16, 32),
    "avx2": (8, 16),
    "neon": (4, 32),
    "sse": (4, 16),
}


@attrs.frozen
class Thresholds:
    #: GEMVs of at most this many rows read the float16 weight with kvgraph's kernel (beyond:
    #: MAX's float32 GEMM)
    few_rows_custom: int
    #: steps of at most this many rows run the few-row step program
    step_few_rows_custom: int


# AVX-512: kvgraph_gemv_f16 beat MAX's float32 GEMM up to 16 rows for the 51864x384 projection
# (benchmarks/gemv_kernel.py, AMD EPYC Zen 5, 2026-11-30), and the few-row step program the
# per-row one up to 16 rows (benchmarks/step_rows.py). Not measured on the other classes.
_THRESHOLDS = {
    "avx512": Thresholds(16, 16),
    "avx2": Thresholds(16, 16),
    "neon": Thresholds(16, 16),
    "sse": Thresholds(16, 16),
}


def classify(machine: str, flags: set[str] | frozenset[str]) -> str:
    """The class of a CPU from its architecture and its ``/proc/cpuinfo`` flags."""
    m = machine.lower()
    if m in ("aarch64", "arm64"):
        return "neon"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return "sse"


def l1d_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """One core's L1 data cache in bytes (32 KiB where the system does not say)."""
    try:
        for d in sorted(root.glob("index*")):
            level = (d / "level").read_text().strip()
            kind = (d / "type").read_text().strip()
            if level == "1" and kind in ("Data", "Unified"):
                size = (d / "size").read_text().strip().upper()
                mult = {"K": 1024, "M": 1024 * 1024}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return 32 * 1024


def make(name: str, l1d: int = 32 * 1024) -> Isa:
    lanes, regs = CLASSES[name]
    return Isa(name, lanes, regs, l1d)


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: ``/proc/cpuinfo``'s ``flags`` (x86) or ``Features`` (Arm),
    read once; empty where there is none. Under a virtual CPU target (``KVGRAPH_CPU_TARGET``,
    :mod:`kvgraph.max.native`) the target's."""
    return _flags(native.virtual_target())


@functools.cache
def _flags(target: str | None) -> frozenset[str]:
    info = native.cpuinfo()
    return frozenset(info.get("flags", info.get("Features", "")).split())


@functools.cache
def _detected(target: str | None = None) -> Isa:
    return make(classify(platform.machine(), cpu_flags()), l1d_bytes())


def host() -> Isa:
    """This machine's class (``KVGRAPH_ISA`` forces one, keeping the machine's L1d; a virtual
    CPU target's class under ``KVGRAPH_CPU_TARGET``)."""
    det = _detected(native.virtual_target())
    forced = os.environ.get(ENV, "").strip().lower()
    if not forced or forced == det.name:
        return det
    if forced not in CLASSES:
        from ..errors import InputError

        raise InputError(f"{ENV}={forced!r} is not an instruction-set class: one of {', '.join(CLASSES)}")
    return make(forced, det.l1d)


def thresholds(isa: Isa | None = None) -> Thresholds:
    return _THRESHOLDS[(isa or host()).name]


@functools.cache
def _amx_granted() -> bool:
    """Does this CPU list AMX tiles with bfloat16 (``amx_tile``, ``amx_bf16``), and does Linux
    grant this process the tile state? (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA,
    Linux's Documentation/arch/x86/xstate.rst; a process must ask before its first tile
    instruction. The kernel asks again on each call: processes that never ran this.)"""
    if not {"amx_tile", "amx_bf16"} <= cpu_flags() or platform.machine() != "x86_64":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syscall(158, 0x1023, 18) == 0  # arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)
    except (OSError, AttributeError):
        return False


def amx() -> bool:
    """Do ``bfloat16`` products run on AMX tiles here (``kvgraph_matmul_bf16_amx``)?
    ``KVGRAPH_AMX=off`` says no (then :func:`bf16_engine` picks the next engine)."""
    if os.environ.get(AMX_ENV, "on").strip().lower() in ("off", "0", "no", "false"):
        return False
    return _amx_granted()


#: the engines of the ``bfloat16`` compute type's products, fastest first: Intel AMX tiles,
#: AVX512-BF16 (``vdpbf16ps``), or MAX's float32 ops on rounded operands (no custom kernel)
BF16_ENGINES = ("amx", "avx512", "emulate")


def bf16_engine() -> str:
    """Which engine runs ``bfloat16`` products here (:data:`BF16_ENGINES`): ``amx`` where
    :func:`amx`, ``avx512`` where ``/proc/cpuinfo`` lists ``avx512_bf16``, else ``emulate``.
    ``KVGRAPH_BF16=<engine>`` forces one (``avx512`` runs on any CPU: its kernel falls back to
    float32 FMAs where the compiler's target lacks the instruction); ``amx`` where the tiles are
    not granted is an error."""
    forced = os.environ.get(BF16_ENV, "").strip().lower()
    if forced in ("", "auto"):
        if amx():
            return "amx"
        x86_bf16 = platform.machine() == "x86_64" and {"avx512f", "avx512_bf16"} <= cpu_flags()
        return "avx512" if x86_bf16 else "emulate"
    from ..errors import InputError

    if forced not in BF16_ENGINES:
        raise InputError(
            f"{BF16_ENV}={forced!r} is not a bfloat16 engine: one of auto, {', '.join(BF16_ENGINES)}"
        )
    if forced == "amx" and not _amx_granted():
        raise InputError(
            f"{BF16_ENV}=amx: this CPU or process has no AMX tiles with bfloat16 (amx_tile, amx_bf16)"
        )
    return forced


@functools.cache
def note_bfloat16() -> bool:
    """Say once per process, where bfloat16 products will be emulated (neither AMX nor
    AVX512-BF16 here), that they run slower than float32; True where a kernel runs them."""
    if bf16_engine() != "emulate":
        return True
    import logging

    logging.getLogger("kvgraph").warning(
        "compute_type bfloat16: this CPU offers neither AMX tiles with bfloat16 (amx_tile, amx_bf16) "
        "nor AVX512-BF16 (avx512_bf16 in /proc/cpuinfo), or %s=emulate: its products run emulated "
        "on float32 ops, the same arithmetic but slower than float32",
        BF16_ENV,
    )
    return False
