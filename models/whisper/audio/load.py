"""Audio loading without ffmpeg.

``load_audio(path, sr=16000)`` decodes a file with ``soundfile`` (libsndfile:
WAV, FLAC, OGG/Vorbis, ... whatever the installed libsndfile supports),
averages channels to mono, and resamples with ``soxr`` (high quality) to
``sr``. openai-whisper's own ``load_audio`` shells out to ffmpeg, which this
project does not require; never call it. ``decode_audio(data)`` does the same for bytes
held in memory (an HTTP upload), with the same checks and errors.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

__all__ = ["AudioError", "load_audio", "decode_audio", "check_file", "check_wav_header", "SAMPLE_RATE"]

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """An audio file is missing, empty, unreadable, truncated or silent."""


def _fail(path, what: str) -> AudioError:
    return AudioError(f"{path}: {what}")


def check_wav_header(f, size: int, path) -> None:
    """Detects a RIFF/WAVE file whose data chunk extends past the end of the
    file. libsndfile reads such files partially without complaint, so a file
    cut short (interrupted copy or recording) would otherwise go unnoticed.
    ``f`` is the file opened for binary reading (or a ``BytesIO``) at offset 0,
    ``size`` its length in bytes, ``path`` the name errors give."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return  # not plain RIFF/WAVE (RF64, AIFF, FLAC, ...): libsndfile decides
    pos = 12
    while True:
        hdr = f.read(8)
        if len(hdr) < 8:
            if len(hdr) > 0 or pos == 12:
                raise _fail(
                    path, f"truncated WAV file (chunk header cut at byte {pos}, file is {size} bytes)"
                )
            raise _fail(path, f"truncated WAV file (no data chunk in {size} bytes)")
        cid, csize = hdr[:4], struct.unpack("<I", hdr[4:])[0]
        body = pos + 8
        if cid == b"data":
            # 0xFFFFFFFF (and 0 with trailing bytes) mark a stream of unknown
            # length written by some tools; let libsndfile handle those.
            if csize == 0xFFFFFFFF or (csize == 0 and size > body):
                return
            if body + csize > size:
                raise _fail(
                    path,
                    f"truncated WAV file (data chunk declares {csize} bytes, only {size - body} present)",
                )
            return
        nxt = body + csize + (csize & 1)
        if nxt > size:
            raise _fail(
                path,
                f"truncated WAV file ('{cid.decode('latin-1')}' chunk declares {csize} bytes, "
                f"only {size - body} present)",
            )
        f.seek(nxt)
        pos = nxt


def _to_mono(x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float64) if x.shape[1] > 1 else x[:, 0]
    return np.ascontiguousarray(x, dtype=np.float32)


def load_audio(path: str | os.PathLike | np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Returns float32 mono samples in [-1, 1] at ``sr`` Hz.

    ``path`` may also be a numpy array, which is taken as already at ``sr``
    Hz: it is cast to float32 (a 2-D ``(frames, channels)`` array is averaged
    to mono) and returned.

    Raises ``AudioError`` (a ``ValueError``) whose one-line message names the
    file, for a missing or empty file, bytes that are not audio, a truncated
    WAV, or a file with no samples.
    """
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sr!r}")
    sr = int(sr)
    if isinstance(path, np.ndarray):
        if path.ndim not in (1, 2):
            raise AudioError(f"<array>: expected a 1-D or (frames, channels) array, got shape {path.shape}")
        return _to_mono(path)

    p = check_file(path)
    return _decode(str(p), p, sr)


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path once it is a non-empty regular file, not a WAV file cut short;
    AudioError naming it otherwise."""
    p = Path(path)
    if not p.exists():
        raise _fail(p, "no such audio file")
    if not p.is_file():
        raise _fail(p, "not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise _fail(p, "empty file (0 bytes)")
    with open(p, "rb") as f:
        check_wav_header(f, size, p)
    return p


def decode_audio(
    data: bytes | bytearray | memoryview, sr: int = SAMPLE_RATE, name: str = "<bytes>"
) -> np.ndarray:
    """:func:`load_audio` for an audio file's bytes held in memory (an upload): the same
    formats, mono mix, resampling, checks and :class:`AudioError` messages, which start with
    ``name``."""
    if int(sr) != sr or sr <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {sr!r}")
    data = bytes(data)
    if not data:
        raise _fail(name, "empty file (0 bytes)")
    check_wav_header(io.BytesIO(data), len(data), name)
    return _decode(io.BytesIO(data), name, int(sr))


def _decode(source, name, sr: int) -> np.ndarray:
    """Decodes ``source`` (a path string or a binary file object) with soundfile, mixes to
    mono and resamples to ``sr``; errors name ``name``."""
    import soundfile as sf
    import soxr

    try:
        data, in_sr = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        # a file object's repr in "Error opening <_io.BytesIO ...>: ..." says nothing
        detail = getattr(e, "error_string", None) if not isinstance(source, str) else None
        msg = " ".join(str(detail or e).split())  # one line
        raise _fail(name, f"not a readable audio file ({msg})") from None
    if data.shape[0] == 0:
        raise _fail(name, "audio file contains no samples")

    x = _to_mono(data)
    del data
    if not np.all(np.isfinite(x)):
        raise _fail(name, "audio contains NaN or infinite samples")
    if in_sr != sr:
        x = soxr.resample(x, in_sr, sr, quality="HQ").astype(np.float32, copy=False)
    # Float files may exceed full scale and band-limited resampling can
    # overshoot slightly; keep the documented range.
    np.clip(x, -1.0, 1.0, out=x)
    return x
