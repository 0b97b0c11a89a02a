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

__all__ = ["enabled", "cpuinfo", "cpu_id", "library", "library_path"]

_OFF = ("off", "0", "none", "false")


def enabled() -> bool:
    return os.environ.get("KVGRAPH_NATIVE", "on").strip().lower() not in _OFF


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none)."""
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


@functools.cache
def cpu_id() -> str:
    """What code compiled for this CPU depends on: the architecture, the model name and the
    instruction-set flags (``/proc/cpuinfo`` where there is one). Part of every key of
    compiled code (these libraries, the program store's programs)."""
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
    custom.build_into(target, [str(mojo), "build", "--emit", "shared-lib", str(source)])
