"""Host-side Mojo: a Mojo source file built into a shared library with the ``mojo`` compiler
that the ``max`` wheel installs, loaded with :mod:`ctypes`. For arithmetic that runs on the
host between MAX programs (a decode loop's per-token statistics), where NumPy's many passes
over a row cost more than the MAX program itself.

The library is kept beside the custom kernels (:func:`kvgraph.max.custom.kernels_root`,
folder ``native``) under a key over the source, the compiler's version and this CPU (its
model and feature flags): the compiler targets the CPU it runs on, so a library built on one
kind of machine is never loaded on another. The build writes a temporary file and renames it
into place under a lock. Where the compiler is missing or the build fails, :func:`library`
returns None with one log line and callers use their NumPy code (same values).

``KVGRAPH_NATIVE=off`` turns the libraries off.

``KVGRAPH_CPU_TARGET=<LLVM CPU name>`` (e.g. ``x86-64-v3``, ``znver3``) makes a process build
everything for another x86-64 CPU than this one, so that one machine can run the code another
kind gets: MAX compiles every program for it (``max.driver.set_virtual_cpu_target``, set when
the session starts: :func:`kvgraph.max.runtime.session`), these libraries are built for it,
and :func:`cpuinfo` answers as that CPU (:data:`TARGET_FLAGS`), so the instruction-set class,
the bfloat16 engine and every key of compiled code follow. The target must be a subset of this
CPU (an AVX-512 machine runs ``x86-64-v3``'s code; the reverse is an error). A check of code
paths, not of speed: docs/testing.md says what it found and what MAX 26.7 gets wrong under it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import subprocess
from pathlib import Path

from ..store import file_lock, make_key
from . import custom

log = logging.getLogger("kvgraph")

__all__ = [
    "enabled",
    "cpuinfo",
    "host_cpuinfo",
    "cpu_id",
    "library",
    "library_path",
    "TARGET_ENV",
    "TARGET_FLAGS",
    "virtual_target",
]

_OFF = ("off", "0", "none", "false")


def enabled() -> bool:
    return os.environ.get("KVGRAPH_NATIVE", "on").strip().lower() not in _OFF


TARGET_ENV = "KVGRAPH_CPU_TARGET"

# The /proc/cpuinfo flags kvgraph's choices read (isa.classify, isa.bf16_engine, isa.amx),
# by the x86-64 levels' definitions (the x86-64 psABI's microarchitecture levels) and the CPUs'
# documented extensions; abridged to what kvgraph asks.
_V2 = ("sse2", "ssse3", "sse4_1", "sse4_2", "popcnt")
_V3 = (*_V2, "avx", "avx2", "fma", "f16c", "bmi2")
_V4 = (*_V3, "avx512f", "avx512bw", "avx512dq", "avx512vl")
_BF16 = (*_V4, "avx512_vnni", "avx512_bf16")
#: LLVM CPU names a process may target (:data:`TARGET_ENV`) and the flags each has
TARGET_FLAGS: dict[str, tuple[str, ...]] = {
    "x86-64-v2": _V2,
    "x86-64-v3": _V3,
    "haswell": _V3,
    "znver2": _V3,
    "znver3": _V3,
    "x86-64-v4": _V4,
    "skylake-avx512": _V4,
    "icelake-server": (*_V4, "avx512_vnni"),
    "znver4": _BF16,
    "znver5": _BF16,
    "sapphirerapids": (*_BF16, "amx_tile", "amx_bf16", "amx_int8"),
}


def virtual_target() -> str | None:
    """The CPU this process builds for instead of its own (:data:`TARGET_ENV`), or None.
    Raises ``InputError`` for a name not in :data:`TARGET_FLAGS` or a CPU this one cannot run
    the code of."""
    name = os.environ.get(TARGET_ENV, "").strip().lower()
    if not name:
        return None
    from ..errors import InputError

    if name not in TARGET_FLAGS:
        raise InputError(
            f"{TARGET_ENV}={name!r} is not a CPU kvgraph can target: one of {', '.join(TARGET_FLAGS)}"
        )
    here = set(host_cpuinfo().get("flags", "").split())
    if platform.machine() != "x86_64" or not here:
        raise InputError(
            f"{TARGET_ENV}={name}: targets are x86-64 CPUs, and this machine is {platform.machine()}"
        )
    missing = sorted(set(TARGET_FLAGS[name]) - here)
    if missing:
        raise InputError(
            f"{TARGET_ENV}={name}: this CPU lacks {', '.join(missing)}, so code built for {name} cannot run here"
        )
    return name


def cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none), or, under
    a virtual target (:func:`virtual_target`), the target's: this CPU's model name marked with
    the target, and the target's flags."""
    target = virtual_target()
    info = host_cpuinfo()
    if target is None:
        return info
    model = info.get("model name", platform.processor())
    return {"model name": f"{model} as virtual CPU target {target}", "flags": " ".join(TARGET_FLAGS[target])}


@functools.cache
def host_cpuinfo() -> dict[str, str]:
    """This machine's first processor's fields in ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().split("\n\n", 1)[0]
    except OSError:
        return {}
    fields = {}
    for line in info.splitlines():
        k, _, v = line.partition(":")
        fields.setdefault(k.strip(), v.strip())
    return fields


def cpu_id() -> str:
    """What code compiled for this CPU depends on: the architecture, the model name and the
    instruction-set flags (``/proc/cpuinfo`` where there is one; a virtual target's own,
    :func:`cpuinfo`). Part of every key of compiled code (these libraries, the program store's
    programs)."""
    return _cpu_id(virtual_target())


@functools.cache
def _cpu_id(target: str | None) -> str:
    info = cpuinfo()
    if not info:
        return "|".join([platform.machine(), platform.processor()])
    keys = ("model name", "flags", "Features", "CPU part")
    return "|".join([platform.machine(), *(info[k] for k in keys if k in info)])


def library_path(source: Path) -> tuple[Path, Path] | None:
    """``(compiler, where the library of source goes)``; None without a compiler."""
    mojo = custom.mojo_compiler()
    if mojo is None:
        return None
    key = make_key(source.read_bytes(), custom.compiler_version(mojo), cpu_id())[:20]
    return mojo, custom.kernels_root() / "native" / key / f"lib{source.stem}.so"


@functools.cache
def library(source: Path) -> ctypes.CDLL | None:
    """The shared library built from the Mojo file ``source`` (its ``@export`` functions),
    building it on first use; None when native code is off or cannot be built (logged)."""
    if not enabled():
        return None
    found = library_path(source)
    if found is None:
        log.info("no mojo compiler: %s runs in NumPy", source.name)
        return None
    mojo, target = found
    try:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(target.parent / "build.lock"):
                if not target.exists():  # else another process built it while we waited
                    _build(mojo, source, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", None) or str(e)
        last = next((ln.strip() for ln in reversed(str(err).splitlines()) if ln.strip()), type(e).__name__)
        log.warning(
            "%s did not build (%s): running its NumPy twin instead (same results, slower; "
            "KVGRAPH_NATIVE=off skips the build)",
            source.name,
            last[:300],
        )
        return None


def _build(mojo: Path, source: Path, target: Path) -> None:
    log.info("building %s into %s", source.name, target.parent)
    cpu = virtual_target()
    where = ["--target-cpu", cpu] if cpu else []
    custom.build_into(target, [str(mojo), "build", "--emit", "shared-lib", *where, str(source)])
