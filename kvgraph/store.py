"""A store of compiled programs on disk, safe under real conditions. MAX-free.

Compiling a program takes minutes; reading a persisted one back takes milliseconds. The
store keeps each compiled artifact under a key that covers everything that changes the
compiled code (the caller passes those parts: the lowered program's text, lowering options,
the compiler's version, the CPU), so a hit is always the right artifact.

Files are ``<root>/<key[:2]>/<key>.kvp``: a header (magic, format version, the key, payload
length and SHA-256) and the payload (the compiled artifact's bytes). A key may instead be a
*link* to another key's artifact, ``<root>/<key[:2]>/<key>.link`` holding the target key: one
artifact that holds several programs (a MAX Module) is found under each program's own key too.

What can go wrong, and what happens:

- two processes compile the same program at once: the first takes an advisory lock
  (``fcntl.flock`` on ``<key>.lock``), the second waits for it, then finds the artifact stored
  and reads it instead of compiling again;
- a writer dies half-way: artifacts are written to a temporary file in the same folder and
  renamed into place (``os.replace``, atomic), so a reader sees the old state or the whole file;
- a truncated, corrupt or foreign file (another key's artifact copied over, another tool's
  file): the header or the checksum does not match; it counts as a miss, one log line says
  why, the program is compiled and stored anew. The payload is checked before the compiler's
  reader ever sees it;
- a read-only, missing-permission or full cache folder: reads that fail are misses, writes
  that fail are logged once and skipped; the program still runs.

The root is ``$KVGRAPH_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/kvgraph`` or
``~/.cache/kvgraph``; ``KVGRAPH_CACHE_DIR=off`` (or ``0``, ``none``) turns the store off.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

log = logging.getLogger("kvgraph.store")

MAGIC = b"KVGRAPH-PROGRAM\n"
FORMAT = 1
_HEADER = struct.Struct("<16sI64sQ32s")  # magic, format, key (hex), payload length, sha256
_OFF = ("off", "0", "none", "false", "")


def default_root() -> Path | None:
    """The store's folder from the environment, or None when the store is turned off."""
    env = os.environ.get("KVGRAPH_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvgraph"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``path``, created if missing;
    blocks until it is free. Raises ``OSError`` where the file cannot be made."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def make_key(*parts) -> str:
    """A hex SHA-256 over ``parts`` (strings or bytes), each length-prefixed so that
    ``("ab", "c")`` and ``("a", "bc")`` differ."""
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else str(p).encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


@attrs.define
class StoreStats:
    """What the store did in this process (tests assert on these, not on time)."""

    hits: int = 0
    misses: int = 0
    writes: int = 0
    links: int = 0  # keys pointed at another key's artifact (see ProgramStore.link)
    bad: int = 0  # artifacts found but refused (truncated, corrupt, foreign, unreadable)
    write_errors: int = 0


class ProgramStore:
    """``get(key, read)`` / ``put(key, write)`` / ``lock(key)`` over one folder."""

    def __init__(self, root: os.PathLike | None = None, *, enabled: bool = True):
        self.root = Path(root) if root is not None else None
        self.enabled = enabled and self.root is not None
        self.stats = StoreStats()
        self._warned_write = False

    @classmethod
    def from_env(cls) -> ProgramStore:
        root = default_root()
        return cls(root, enabled=root is not None)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.kvp"

    def link_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.link"

    def target(self, key: str) -> str | None:
        """The key whose artifact serves ``key``: ``key`` itself when it has one, the target of
        its link when that target has one, else None. (An artifact found here may still be
        refused when read: :meth:`get` checks it.)"""
        if not self.enabled:
            return None
        if self.path(key).exists():
            return key
        try:
            to = self.link_path(key).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        ok = len(to) == 64 and all(c in "0123456789abcdef" for c in to)
        return to if ok and self.path(to).exists() else None

    # ------------------------------------------------------------------ reading
    def load_bytes(self, key: str) -> memoryview | None:
        """The stored payload for ``key`` (a view of the file's bytes past the header: a
        program is tens of MB, read once and not copied), or None (missing, or refused with
        one log line)."""
        if not self.enabled:
            return None
        p = self.path(key)
        try:
            data = _map(p)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            return self._refuse(p, f"cannot be read ({e.strerror or e})")
        why = _check(data, key)
        if why:
            return self._refuse(p, why)
        return memoryview(data)[_HEADER.size :]

    def get(self, key: str, read: Callable[[memoryview], object]):
        """``read(payload)`` of the artifact stored under ``key``; None on a miss. A payload
        that ``read`` rejects counts as a bad artifact (a miss), never as an error."""
        obj = self.read(key, read)
        if obj is None:
            self.stats.misses += 1
        return obj

    def read(self, key: str, read: Callable[[memoryview], object]):
        """As :meth:`get`, without counting a miss (the caller counts it, once, if it then
        compiles): hits and refused artifacts are counted."""
        data = self.load_bytes(key)
        if data is None:
            return None
        try:
            obj = read(data)
        except Exception as e:  # the compiler's reader refused it: recompile
            return self._refuse(self.path(key), f"was refused by the reader ({type(e).__name__}: {e})")
        self.stats.hits += 1
        return obj

    def _refuse(self, p: Path, why: str) -> None:
        self.stats.bad += 1
        log.warning("kvgraph store: ignoring %s: it %s; compiling instead", p, why)
        with contextlib.suppress(OSError):  # a bad file is replaced by the next put anyway
            p.unlink()
        return None

    # ------------------------------------------------------------------ writing
    def put(self, key: str, write: Callable[[str], None]) -> bool:
        """Store the artifact that ``write(path)`` writes to ``path``; atomic. Returns whether
        it was stored (False, with one log line per process, when the folder is unwritable)."""
        if not self.enabled:
            return False

        def fill(tmp: str) -> None:
            write(tmp)  # the compiler writes its artifact
            payload = Path(tmp).read_bytes()
            if not payload:
                raise OSError("the writer produced an empty artifact")
            with open(tmp, "wb") as f:  # header + payload, then rename
                f.write(
                    _HEADER.pack(MAGIC, FORMAT, key.encode(), len(payload), hashlib.sha256(payload).digest())
                )
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())

        final = self.path(key)
        try:
            _write_into_place(final, key, fill)
        except OSError as e:
            self.stats.write_errors += 1
            if not self._warned_write:
                self._warned_write = True
                log.warning(
                    "kvgraph store: cannot write %s (%s); programs will be compiled "
                    "each time until it is writable",
                    final.parent,
                    e.strerror or e,
                )
            return False
        self.stats.writes += 1
        return True

    def link(self, key: str, target: str) -> bool:
        """Make ``key`` find ``target``'s artifact (:meth:`target`); atomic, never over an
        artifact of its own. Returns whether the link was written."""
        if not self.enabled or key == target or self.path(key).exists():
            return False
        final = self.link_path(key)
        try:
            _write_into_place(final, key, lambda tmp: Path(tmp).write_text(target))
        except OSError as e:
            self.stats.write_errors += 1
            log.info("kvgraph store: cannot link %s (%s)", final, e.strerror or e)
            return False
        self.stats.links += 1
        return True

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s advisory lock (blocking): one process compiles a program, the
        others wait and then read what it stored. No lock where the folder is unwritable."""
        with contextlib.ExitStack() as held:
            if self.enabled:
                p = self.path(key).with_suffix(".lock")
                try:
                    p.parent.mkdir(parents=True, exist_ok=True)
                    held.enter_context(file_lock(p))
                except (OSError, ImportError):
                    pass
            yield

    def get_or_make(
        self,
        key: str,
        read: Callable[[bytes], object],
        make: Callable[[], object],
        write: Callable[[object, str], None],
    ):
        """``(artifact, hit)``: the stored artifact, or ``make()`` stored with ``write``.
        Concurrent callers of one key compile it once (see :meth:`lock`)."""
        obj = self.read(key, read)
        if obj is not None:
            return obj, True
        with self.lock(key):
            obj = self.read(key, read)  # another process may have stored it while we waited
            if obj is not None:
                return obj, True
            self.stats.misses += 1
            obj = make()
            self.put(key, lambda path: write(obj, path))
        return obj, False


def _write_into_place(final: Path, key: str, fill: Callable[[str], None]) -> None:
    """``fill(tmp)`` writes a temporary file beside ``final``, then it is renamed into place
    (atomic: a reader sees the old state or the whole file); nothing is left behind on error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}.", suffix=".part", dir=final.parent)
    os.close(fd)
    try:
        fill(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _map(p: Path) -> mmap.mmap | bytes:
    """File ``p``'s bytes, mapped read-only: pages come from the page cache as they are read,
    not copied into fresh memory (for a ~30 MB program, ~7,000 fewer page faults than reading
    it). An entry is only ever replaced by a rename, never rewritten in place, so the mapping
    keeps the bytes it was opened with."""
    with open(p, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return b""  # mmap refuses an empty file; _check reports it as truncated
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _check(data: bytes | mmap.mmap, key: str) -> str | None:
    """Why ``data`` is not a whole, intact artifact for ``key`` (None when it is)."""
    if len(data) < _HEADER.size:
        return f"is truncated ({len(data)} bytes, shorter than the header)"
    magic, fmt, k, n, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return "is not a kvgraph program (foreign file)"
    if fmt != FORMAT:
        return f"has format {fmt}, this kvgraph reads {FORMAT}"
    if k != key.encode():
        return "holds another program (its key differs)"
    body = memoryview(data)[_HEADER.size :]
    if len(body) != n:
        return f"is truncated ({len(body)} of {n} payload bytes)"
    if hashlib.sha256(body).digest() != digest:
        return "is corrupt (checksum mismatch)"
    return None


_DEFAULT: ProgramStore | None = None


def default_store() -> ProgramStore:
    """The process's store, configured from the environment on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = ProgramStore.from_env()
    return _DEFAULT


def set_default_store(store: ProgramStore | None) -> None:
    """Replace the process's store (None: read the environment again on next use)."""
    global _DEFAULT
    _DEFAULT = store
