"""16 kHz mono PCM as it arrives: from stdin (a pipe), or from a file that may still be growing.

A source is raw little-endian PCM, ``s16le`` (16-bit integers, the default) or ``f32le``
(32-bit floats), 16 000 samples a second, one channel. A WAV file (or stream) is recognised by its
``RIFF``/``WAVE`` header, which is skipped; its ``fmt`` chunk then decides the sample format, and
must say 16 kHz mono 16-bit PCM or 32-bit float (anything else is a :class:`SourceError`).

When the source ends:

- a pipe, a FIFO, a terminal or a socket: at end of file (the writer closed it);
- a regular file (stdin redirected from one included): it is followed as it grows (as ``tail -f`` does) and ends once it has reached
  its end and not grown for ``idle_timeout`` seconds (0: read what is there and stop); with
  ``follow=True`` it never ends (stop it with Ctrl-C). A WAV file whose header declares its data
  size ends after that many bytes.

:meth:`PcmSource.chunks` yields float32 arrays as the bytes arrive (whatever a read returns,
at most :data:`BLOCK_BYTES`), so a reader never waits for more audio than is there.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
import time
from collections.abc import Iterator

import numpy as np

SAMPLE_RATE = 16000
FORMATS = {"s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
#: the most bytes one read asks for (~2 s of s16le)
BLOCK_BYTES = 1 << 16
#: how often a followed file is looked at again once its end is reached
POLL_S = 0.02
#: WAV data sizes that mean "unknown, read to the end" (written by recorders that stream)
_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


class SourceError(ValueError):
    """A source that cannot be read as 16 kHz mono PCM (a bad format, an unsupported WAV)."""


class HeaderCutShort(SourceError):
    """A WAV header that ends before its data chunk (an error once the source has ended)."""


class PcmSource:
    """PCM samples from a binary stream: a path, ``"-"`` (stdin), a file descriptor or a binary
    file object (see the module docstring for when it ends). Open it with :func:`open_source`."""

    def __init__(
        self,
        stream,
        *,
        name: str,
        fmt: str = "s16le",
        follow: bool = False,
        idle_timeout: float = 2.0,
        owns: bool = False,
    ):
        if fmt not in FORMATS:
            raise SourceError(f"{name}: unknown sample format {fmt!r} (expected one of {', '.join(FORMATS)})")
        self.stream, self.name, self.fmt = stream, name, fmt
        self.follow, self.idle_timeout, self.owns = follow, idle_timeout, owns
        self.fd = _fileno(stream)
        self.growing = self.fd is not None and stat.S_ISREG(os.fstat(self.fd).st_mode)
        self.wav = False  # set once a WAV header was read

    def close(self) -> None:
        if self.owns:
            self.stream.close()

    def check(self) -> None:
        """Raise :class:`SourceError` now if a regular file already holds an unsupported WAV
        header (so that the error comes before a model is loaded); reads nothing away."""
        if not self.growing:
            return
        head = os.pread(self.fd, BLOCK_BYTES, 0)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        fmt = self.fmt
        try:
            self._wav_header(bytearray(head), iter(()))
        except HeaderCutShort:
            pass  # still being written: judged when read
        finally:
            self.fmt, self.wav = fmt, False

    def blocks(self) -> Iterator[bytes]:
        """The bytes as they arrive; a regular file is followed (see the module docstring)."""
        idle_since = None
        while True:
            data = os.read(self.fd, BLOCK_BYTES) if self.fd is not None else self.stream.read(BLOCK_BYTES)
            if data:
                idle_since = None
                yield data
                continue
            if not self.growing:
                return
            now = time.monotonic()
            idle_since = now if idle_since is None else idle_since
            if not self.follow and now - idle_since >= self.idle_timeout:
                return
            time.sleep(POLL_S)

    def chunks(self) -> Iterator[np.ndarray]:
        """float32 samples in [-1, 1) (s16le scaled by 1/32768) as they arrive; a WAV header
        skipped and obeyed; a sample cut by the end of the source dropped."""
        blocks = self.blocks()
        buf = bytearray()
        limit = None
        if _fill(buf, blocks, 12) and buf[:4] == b"RIFF" and buf[8:12] == b"WAVE":
            buf, limit = self._wav_header(buf, blocks)
        width = FORMATS[self.fmt].itemsize
        seen, rest = 0, b""
        for data in _chain(bytes(buf), blocks):
            if limit is not None:
                data = data[: max(0, limit - seen)]
            seen += len(data)
            data = rest + data
            usable = len(data) - len(data) % width
            if usable:
                yield self._decode(data[:usable])
            rest = data[usable:]
            if limit is not None and seen >= limit:
                return

    def _decode(self, data: bytes) -> np.ndarray:
        samples = np.frombuffer(data, FORMATS[self.fmt])
        if self.fmt == "s16le":
            return samples.astype(np.float32) / np.float32(32768.0)
        return samples.astype(np.float32)

    def _wav_header(self, buf: bytearray, blocks: Iterator[bytes]) -> tuple[bytearray, int | None]:
        """Read the header's chunks up to ``data``: ``(the bytes after it, data size or None)``;
        ``self.fmt`` set from the ``fmt`` chunk."""
        pos = 12
        fmt_seen = False
        while True:
            if not _fill(buf, blocks, pos + 8):
                raise HeaderCutShort(f"{self.name}: WAV header cut short (no data chunk in {len(buf)} bytes)")
            cid, size = bytes(buf[pos : pos + 4]), struct.unpack("<I", buf[pos + 4 : pos + 8])[0]
            body = pos + 8
            if cid == b"data":
                if not fmt_seen:
                    raise SourceError(f"{self.name}: WAV file has no fmt chunk before its data")
                self.wav = True
                return buf[body:], (None if size in _UNKNOWN_SIZES else size)
            if not _fill(buf, blocks, body + size):
                raise HeaderCutShort(f"{self.name}: WAV header cut short in its {cid!r} chunk")
            if cid == b"fmt ":
                self.fmt = wav_format(bytes(buf[body : body + size]), self.name)
                fmt_seen = True
            pos = body + size + (size & 1)


def wav_format(fmt_chunk: bytes, name: str) -> str:
    """``"s16le"`` or ``"f32le"`` from a WAV ``fmt`` chunk; :class:`SourceError` unless it says
    16 kHz mono 16-bit PCM or 32-bit IEEE float."""
    if len(fmt_chunk) < 16:
        raise SourceError(f"{name}: WAV fmt chunk too short ({len(fmt_chunk)} bytes)")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if tag == 0xFFFE and len(fmt_chunk) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format's tag
        tag = struct.unpack("<H", fmt_chunk[24:26])[0]
    kind = {(1, 16): "s16le", (3, 32): "f32le"}.get((tag, bits))
    if kind is None or channels != 1 or rate != SAMPLE_RATE:
        what = {1: "PCM", 3: "float"}.get(tag, f"format {tag}")
        raise SourceError(
            f"{name}: WAV is {bits}-bit {what}, {channels} channel(s) at {rate} Hz; kvgraph listen "
            "reads 16 kHz mono 16-bit PCM or 32-bit float (convert it, e.g. "
            "sox IN -r 16000 -c 1 -b 16 OUT.wav)"
        )
    return kind


def open_source(source, *, fmt: str = "s16le", follow: bool = False, idle_timeout: float = 2.0) -> PcmSource:
    """A :class:`PcmSource` for ``source``: ``"-"`` (stdin), a path (opened now: a missing or
    unreadable file raises here, before any model is loaded), a file descriptor or a binary
    file object."""
    if source == "-":
        return PcmSource(sys.stdin.buffer, name="stdin", fmt=fmt, follow=follow, idle_timeout=idle_timeout)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise IsADirectoryError(21, "Is a directory", path)
        f = open(path, "rb")  # noqa: SIM115 - closed by PcmSource.close
        return PcmSource(f, name=path, fmt=fmt, follow=follow, idle_timeout=idle_timeout, owns=True)
    name = f"fd {source}" if isinstance(source, int) else getattr(source, "name", type(source).__name__)
    return PcmSource(source, name=str(name), fmt=fmt, follow=follow, idle_timeout=idle_timeout)


def _fileno(stream) -> int | None:
    if isinstance(stream, int):
        return stream
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # BytesIO and other in-memory streams
        return None


def _fill(buf: bytearray, blocks: Iterator[bytes], n: int) -> bool:
    """Pull blocks into ``buf`` until it holds ``n`` bytes; False if the source ends first."""
    while len(buf) < n:
        data = next(blocks, None)
        if data is None:
            return False
        buf += data
    return True


def _chain(first: bytes, blocks: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from blocks
