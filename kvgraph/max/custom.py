"""kvgraph's custom MAX kernels: the Mojo package ``kvgraph/max/mojo/kvgraph_kernels``, built
on first use with the ``mojo`` compiler that the ``max`` wheel installs, kept in one folder
per user (:func:`kernels_root`), and loaded into graphs through ``custom_extensions``.

The built package (``.mojoc``) is keyed by a hash of the kernel sources and the compiler's
version, so an edit or an upgrade builds it anew; the build writes a temporary file and
renames it into place under a lock, like :mod:`kvgraph.store`. ``kvgraph prepare`` builds it
ahead of time. When the compiler is missing or the build fails, :func:`kernel_package`
returns None with one log line and the lowering uses MAX's built-in ops instead (slower for
several rows, same values to float32 rounding) — never a different engine.

``KVGRAPH_CUSTOM_KERNELS=off`` turns the custom kernels off (the built-in forms are used);
``KVGRAPH_MOJO`` names the Mojo compiler to build them with.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..store import file_lock

log = logging.getLogger("kvgraph")

SOURCE = Path(__file__).parent / "mojo" / "kvgraph_kernels"
PACKAGE = "kvgraph_kernels.mojoc"  # the built package's file name (MAX imports it by that name)
_OFF = ("off", "0", "none", "false")


def enabled() -> bool:
    return os.environ.get("KVGRAPH_CUSTOM_KERNELS", "on").strip().lower() not in _OFF


def mojo_compiler() -> Path | None:
    """The Mojo compiler: ``$KVGRAPH_MOJO`` when set, else the one the ``max`` wheel installed
    beside this Python, else ``mojo`` on the PATH."""
    env = os.environ.get("KVGRAPH_MOJO")
    if env:
        return Path(env)
    here = Path(sys.executable).parent / "mojo"
    if here.exists():
        return here
    found = shutil.which("mojo")
    return Path(found) if found else None


def _mojo_libs() -> Path | None:
    """The folder of MAX's precompiled Mojo packages (``extensibility``, ``max``, ``std``...)."""
    try:
        import modular  # the `max` wheel's data package
    except ImportError:
        return None
    for base in getattr(modular, "__path__", []):
        p = Path(base) / "lib" / "mojo"
        if (p / "extensibility.mojoc").exists():
            return p
    return None


def kernel_names() -> list[str]:
    """The kernels the package registers (``@register("name")`` in its sources)."""
    names = []
    for f in sorted(SOURCE.glob("*.mojo")):
        names += re.findall(r'@register\("([^"]+)"\)', f.read_text())
    return names


@functools.cache
def compiler_version(mojo: Path) -> str:
    """The installed compiler's version (read from its package: no process to start)."""
    try:
        return importlib.metadata.version("mojo-compiler")
    except importlib.metadata.PackageNotFoundError:
        try:
            return subprocess.run([str(mojo), "--version"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"


def source_hash(mojo: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(SOURCE.glob("*.mojo")):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(compiler_version(mojo).encode())
    return h.hexdigest()[:20]


def kernels_root() -> Path:
    """Where the built package is kept: ``$KVGRAPH_KERNELS_DIR``, else ``kernels`` in the user's
    cache folder (``$XDG_CACHE_HOME/kvgraph`` or ``~/.cache/kvgraph``) — one place per user
    whatever program store a process uses (``KVGRAPH_CACHE_DIR``): MAX keys its compiled
    programs by the package's path too, so processes with other stores share MAX's cache."""
    env = os.environ.get("KVGRAPH_KERNELS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvgraph" / "kernels"


@functools.cache
def kernel_package() -> Path | None:
    """The built kernel package, building it if needed; None when custom kernels are off or
    cannot be built (logged once)."""
    if not enabled():
        return None
    mojo, libs = mojo_compiler(), _mojo_libs()
    if mojo is None or libs is None:
        log.warning("custom kernels unavailable (no mojo compiler or MAX Mojo libraries): using MAX's ops")
        return None
    key = source_hash(mojo)
    folders = [kernels_root(), Path(tempfile.gettempdir()) / f"kvgraph-kernels-{os.getuid()}"]
    for folder in folders:
        # MAX imports the package under its file's name: the key goes in the folder's
        target = folder / key / PACKAGE
        if target.exists():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(target.parent / "build.lock"):
                if target.exists():  # another process built it while we waited
                    return target
                _build(mojo, libs, target)
            return target
        except OSError as e:  # read-only or full folder: try the next one
            log.info("cannot build custom kernels in %s (%s)", folder, e)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            log.debug("mojo precompile's output:\n%s", err)
            last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), type(e).__name__)
            log.warning(
                "custom kernels %s did not build (%s): running MAX's own ops instead "
                "(same results, slower; KVGRAPH_CUSTOM_KERNELS=off skips the build)",
                ", ".join(kernel_names()),
                last[:300],
            )
            return None
    return None


def _build(mojo: Path, libs: Path, target: Path) -> None:
    log.info("building kvgraph's custom kernels into %s", target.parent)
    build_into(target, [str(mojo), "precompile", "-I", str(libs), str(SOURCE)])


def build_into(target: Path, command: list[str]) -> None:
    """Run the compiler ``command`` with ``-o`` a file of ``target``'s name in a temporary
    folder beside it, then rename that into place (atomic: a reader never sees half a file).
    The built file keeps its final name throughout: a Mojo package records its file's name
    as its module name. Raises ``subprocess.CalledProcessError`` / ``TimeoutExpired``."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        out = tmp / target.name
        subprocess.run([*command, "-o", str(out)], check=True, capture_output=True, text=True, timeout=600)
        os.replace(out, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
