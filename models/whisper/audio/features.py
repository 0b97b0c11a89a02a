"""Whisper's log-mel features in NumPy, for a whole recording or one 30 s window at a time.

:func:`log_mel_spectrogram` computes what openai-whisper's function of that name computes
(``torch.stft`` with ``center=True``, reflect padding, a periodic Hann window of 400 samples and a
hop of 160; power, mel filterbank, ``log10`` clamped at 1e-10, everything below the recording's
maximum minus 8 raised to it, then ``(x + 4) / 4``), without torch.

:class:`MelWindows` gives the windows openai's ``transcribe`` cuts from the mel of the whole
recording followed by 30 s of zeros, ``pad_or_trim(mel[:, seek:seek + n], N_FRAMES)``, without
ever holding that mel or the recording: a first streaming pass finds the recording's maximum
(the -8 floor is relative to it), then each window computes only the frames it asks for, from
the samples they need. Memory stays that of a few windows, whatever the length.

Both paths compute frames in tiles of :data:`TILE_FRAMES` on one grid starting at frame 0, so a
frame is always computed by the same operations on arrays of the same shapes: a window is
bitwise equal to the same slice of the whole-recording result.

Precision: the STFT, power and mel run in float64, the ``log10`` result is rounded to float32
and the floor and scaling are done in float32 as torch does them. Against openai's float32 torch
result the largest differences (up to ~5e-5) sit in low-energy cells just above the floor,
where torch's float32 FFT loses digits; against the same computation in float64 the result is
within ~1e-7.
"""

from __future__ import annotations

import os
import tempfile
from functools import cache, lru_cache
from importlib.util import find_spec
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.whisper.audio.load import AudioError, check_file

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "CHUNK_LENGTH",
    "N_SAMPLES",
    "N_FRAMES",
    "N_SAMPLES_PER_TOKEN",
    "FRAMES_PER_SECOND",
    "TOKENS_PER_SECOND",
    "TILE_FRAMES",
    "mel_filters",
    "log_mel_spectrogram",
    "pad_or_trim",
    "MelWindows",
    "open_samples",
]

# openai-whisper's audio.py: 16 kHz audio, 25 ms FFT windows, a 10 ms hop, 30 s chunks.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a chunk
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a chunk
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's convolutions halve the frame rate
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100: 10 ms a frame
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 50: 20 ms an audio token

#: frames computed together, on a grid from frame 0: the unit that makes windows bitwise equal
#: to the whole-recording result
TILE_FRAMES = 500
_HALF = N_FFT // 2  # torch.stft(center=True) reflect-pads this many samples on each side
_BLOCK_FRAMES = 6 * TILE_FRAMES  # frames per step of a streaming pass (30 s)
_SPOOL_SECONDS = 10  # seconds of a file read at a time when it is resampled into the spool


@cache
def mel_filters(n_mels: int) -> np.ndarray:
    """The mel filterbank f32[n_mels, N_FFT // 2 + 1] openai-whisper ships (librosa's, 80 or 128
    bands), read as data from its installed ``assets/mel_filters.npz`` without importing it.
    Cached; the array is read-only."""
    if n_mels not in (80, 128):
        raise ValueError(f"n_mels: only 80 and 128 mel bands exist, got {n_mels!r}")
    spec = find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("whisper: openai-whisper is not installed; its mel filters are needed")
    path = Path(spec.submodule_search_locations[0]) / "assets" / "mel_filters.npz"
    with np.load(path, allow_pickle=False) as data:
        filters = np.array(data[f"mel_{n_mels}"], dtype=np.float32)
    filters.setflags(write=False)
    return filters


@cache
def _banded_filters(n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mel_filters` as bands: ``(rows i64[width, n_mels], weights f64[width, n_mels])``,
    the ``j``-th frequency bin of each band and its weight (0 past the band's end). Each band's
    nonzero weights are contiguous bins, at most 14 of them, so the projection is ``width``
    multiply-adds in a fixed order: no BLAS, whose speed and summation depend on its threads."""
    filters = mel_filters(n_mels).astype(np.float64)
    starts, widths = [], []
    for band in filters:
        nonzero = np.flatnonzero(band)
        start = nonzero[0] if len(nonzero) else 0
        starts.append(start)
        widths.append(nonzero[-1] - start + 1 if len(nonzero) else 0)
    offsets = np.arange(max(widths))[:, None]
    rows = np.minimum(np.array(starts)[None, :] + offsets, filters.shape[1] - 1)
    inside = offsets < np.array(widths)[None, :]
    weights = np.where(inside, filters[np.arange(n_mels)[None, :], rows], 0.0)
    return rows, weights


@lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    """The periodic Hann window of N_FFT samples (torch.hann_window's default), float64."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)
    window.setflags(write=False)
    return window


class _Source(Protocol):
    """Audio samples at 16 kHz, mono float32, read by range."""

    n: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples ``[start, stop)`` for ``0 <= start <= stop <= n``."""
        ...

    def close(self) -> None:
        """Releases what the source holds open."""
        ...


def _extended(source: _Source, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of the recording followed by zeros (the ``padding``), for
    ``0 <= start <= stop``."""
    out = np.zeros(stop - start, dtype=np.float32)
    end = min(stop, source.n)
    if start < end:
        out[: end - start] = source.read(start, end)
    return out


def _reflected(source: _Source, total: int, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of the zero-extended signal of ``total`` samples, reflected
    beyond both ends as ``torch.stft(center=True)`` pads it: index ``-i`` is ``i`` and index
    ``total - 1 + i`` is ``total - 1 - i``. Needs ``-_HALF <= start``, ``stop <= total + _HALF``
    and ``total > _HALF``."""
    parts = []
    if start < 0:
        parts.append(_extended(source, 1 - min(stop, 0), 1 - start)[::-1])
    if start < total and stop > 0:
        parts.append(_extended(source, max(start, 0), min(stop, total)))
    if stop > total:
        last = 2 * total - 1
        parts.append(_extended(source, last - stop, last - max(start, total))[::-1])
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


#: the log-mel of a silent frame, as :func:`_tile_log_mel` computes it for zeros (bit for bit)
_SILENCE = np.log10(np.maximum(np.float64(0.0), 1e-10)).astype(np.float32)


def _tile_log_mel(samples: np.ndarray, n_frames: int, n_mels: int) -> np.ndarray:
    """``log10`` of the mel power f32[n_mels, n_frames] of the frames starting every HOP_LENGTH
    samples of ``samples`` (the first at 0): windowed rfft, ``|X|^2``, mel projection, clamp at
    1e-10, all in float64; the log rounded to float32. A tile of silence (all zeros: the 30 s
    openai-whisper pads every recording with) is the clamp's log everywhere, without the work."""
    if not samples[: (n_frames - 1) * HOP_LENGTH + N_FFT].any():
        return np.full((n_mels, n_frames), _SILENCE, dtype=np.float32)
    frames = sliding_window_view(samples, N_FFT)[::HOP_LENGTH][:n_frames]
    spectrum = np.fft.rfft(frames * _hann(), axis=-1).T  # [bins, frames]
    power = spectrum.real**2 + spectrum.imag**2
    rows, weights = _banded_filters(n_mels)
    mel = power[rows[0]] * weights[0][:, None]
    for j in range(1, len(rows)):
        mel += power[rows[j]] * weights[j][:, None]
    return np.log10(np.maximum(mel, 1e-10)).astype(np.float32)


def _log_mel_frames(source: _Source, total: int, first: int, stop: int, n_mels: int) -> np.ndarray:
    """Un-normalised log-mel f32[n_mels, stop - first] of frames ``[first, stop)`` of the signal
    of ``total`` samples, tile by tile; ``first`` must lie on the TILE_FRAMES grid so that every
    tile is the one the whole-recording computation makes."""
    if first % TILE_FRAMES:
        raise ValueError(f"first: frame {first} is not on the {TILE_FRAMES}-frame tile grid")
    out = np.empty((n_mels, stop - first), dtype=np.float32)
    if stop <= first:
        return out
    offset = first * HOP_LENGTH - _HALF
    samples = _reflected(source, total, offset, (stop - 1) * HOP_LENGTH + _HALF)
    for lo in range(first, stop, TILE_FRAMES):
        hi = min(lo + TILE_FRAMES, stop)
        at = lo * HOP_LENGTH - _HALF - offset
        tile = samples[at : at + (hi - lo - 1) * HOP_LENGTH + N_FFT]
        out[:, lo - first : hi - first] = _tile_log_mel(tile, hi - lo, n_mels)
    return out


def _normalise(log_spec: np.ndarray, log_max: np.float32) -> np.ndarray:
    """Floors ``log_spec`` at ``log_max - 8`` and maps it to ``(x + 4) / 4``, in place and in
    float32 as torch does; returns it."""
    np.maximum(log_spec, np.float32(log_max) - np.float32(8.0), out=log_spec)
    log_spec += np.float32(4.0)
    log_spec /= np.float32(4.0)
    return log_spec


def _check_total(total: int) -> None:
    """Refuses signals torch.stft cannot reflect-pad (it needs more than N_FFT // 2 samples)."""
    if total <= _HALF:
        raise ValueError(
            f"audio: {total} samples (padding included) is too short for the STFT's reflect "
            f"padding; it needs at least {_HALF + 1}"
        )


class _ArraySource:
    """A 1-D float32 array as a :class:`_Source`."""

    def __init__(self, audio: np.ndarray):
        self.audio = audio
        self.n = len(audio)

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.audio[start:stop]

    def close(self) -> None:
        pass


def _as_mono_f32(audio: np.ndarray, name: str = "audio") -> np.ndarray:
    """``audio`` as a contiguous 1-D float32 array; anything else is refused."""
    if not isinstance(audio, np.ndarray):
        raise TypeError(f"{name}: expected a NumPy array of samples, got {type(audio).__name__}")
    if audio.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of 16 kHz samples, got shape {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """The log-mel spectrogram f32[n_mels, (len(audio) + padding) // HOP_LENGTH] of 16 kHz
    ``audio`` followed by ``padding`` zeros, as openai-whisper's ``log_mel_spectrogram`` computes
    it (``transcribe`` passes ``padding=N_SAMPLES``). The floor is relative to the maximum over
    the whole result. Raises ValueError when fewer than N_FFT // 2 + 1 samples remain."""
    audio = _as_mono_f32(audio)
    if padding < 0:
        raise ValueError(f"padding: expected a number of zero samples >= 0, got {padding}")
    mel_filters(n_mels)  # refuses an unknown n_mels before any work
    total = len(audio) + int(padding)
    _check_total(total)
    log_spec = _log_mel_frames(_ArraySource(audio), total, 0, total // HOP_LENGTH, n_mels)
    return _normalise(log_spec, log_spec.max())


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, axis: int = -1) -> np.ndarray:
    """``array`` cut to its first ``length`` entries along ``axis``, or padded there with zeros
    to ``length`` (openai-whisper's ``pad_or_trim`` for NumPy arrays); unchanged when it already
    has that length."""
    size = array.shape[axis]
    if size > length:
        index = [slice(None)] * array.ndim
        index[axis] = slice(0, length)
        array = array[tuple(index)].copy()
    elif size < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - size)
        array = np.pad(array, widths)
    return array


def _mono_clipped(data: np.ndarray) -> np.ndarray:
    """(frames, channels) float32 samples to mono float32 as ``load_audio`` mixes them (the
    channels' float64 mean), clipped to [-1, 1]."""
    mono = data.mean(axis=1, dtype=np.float64) if data.shape[1] > 1 else data[:, 0]
    mono = np.array(mono, dtype=np.float32)
    return np.clip(mono, -1.0, 1.0, out=mono)


def _finite(samples: np.ndarray, name: str) -> np.ndarray:
    """``samples``, refused when any is NaN or infinite (as ``load_audio`` refuses them)."""
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: audio contains NaN or infinite samples")
    return samples


class _SoundFileSource:
    """A 16 kHz file read in place: seek, read, mono mix, clip."""

    def __init__(self, handle, name: str):
        self.handle = handle
        self.name = name
        self.n = handle.frames

    def read(self, start: int, stop: int) -> np.ndarray:
        self.handle.seek(start)
        data = self.handle.read(stop - start, dtype="float32", always_2d=True)
        if len(data) != stop - start:
            raise AudioError(f"{self.name}: read {len(data)} samples at {start}, expected {stop - start}")
        return _finite(_mono_clipped(data), self.name)

    def close(self) -> None:
        self.handle.close()


class _SpoolSource:
    """A file of another sample rate, resampled block by block (soxr, as ``load_audio`` does)
    into an unnamed temporary file of raw float32 samples, read back by range."""

    def __init__(self, handle, name: str):
        self.name = name
        self.spool: BinaryIO = tempfile.TemporaryFile()
        try:
            self.n = self._fill(handle)
        except BaseException:
            self.spool.close()
            raise

    def _fill(self, handle) -> int:
        """Streams ``handle`` through the resampler into the spool; returns the sample count."""
        import soxr

        stream = soxr.ResampleStream(handle.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        count = 0
        size = handle.samplerate * _SPOOL_SECONDS
        for block in handle.blocks(blocksize=size, dtype="float32", always_2d=True):
            mono = np.array(block.mean(axis=1, dtype=np.float64) if block.shape[1] > 1 else block[:, 0])
            out = stream.resample_chunk(_finite(mono.astype(np.float32), self.name), last=False)
            count += self._write(out)
        return count + self._write(stream.resample_chunk(np.zeros(0, np.float32), last=True))

    def _write(self, samples: np.ndarray) -> int:
        """Clips ``samples`` to [-1, 1] and appends them to the spool; returns their count."""
        samples = np.clip(samples, -1.0, 1.0, out=samples)
        self.spool.write(memoryview(samples))
        return len(samples)

    def read(self, start: int, stop: int) -> np.ndarray:
        self.spool.seek(start * 4)
        return np.frombuffer(self.spool.read((stop - start) * 4), dtype=np.float32)

    def close(self) -> None:
        self.spool.close()


def _open_file(path: str | os.PathLike) -> _SoundFileSource | _SpoolSource:
    """The :class:`_Source` of an audio file: read in place at 16 kHz, spooled otherwise."""
    import soundfile as sf

    p = check_file(path)
    try:
        handle = sf.SoundFile(str(p))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{p}: not a readable audio file ({' '.join(str(e).split())})") from None
    if handle.samplerate == SAMPLE_RATE:
        return _SoundFileSource(handle, str(p))
    try:
        return _SpoolSource(handle, str(p))
    finally:
        handle.close()


def open_samples(audio) -> _Source:
    """A recording's 16 kHz mono float32 samples read by range (``n``, ``read(start, stop)``,
    ``close()``): a file read in place or spooled as :meth:`MelWindows.from_file` reads it, or
    a 1-D array. What reads a recording in pieces (the voice-activity detector, a chunk's
    audio) uses this rather than holding it whole. Raises AudioError."""
    if isinstance(audio, (str, os.PathLike)):
        source = _open_file(audio)
        if source.n == 0:
            source.close()
            raise AudioError(f"{source.name}: audio file contains no samples")
        return source
    return _ArraySource(_as_mono_f32(audio))


class MelWindows:
    """openai-whisper's 30 s mel windows of one recording, computed on demand.

    ``window(seek, n)`` equals ``pad_or_trim(mel[:, seek:seek + n], N_FRAMES)`` where ``mel`` is
    ``log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)`` of the whole recording, bitwise,
    but neither ``mel`` nor (for a file) the recording is ever held: the recording's maximum
    log-mel value is found by one streaming pass when this is built, and each window computes
    only its frames. Build with :meth:`from_array` or :meth:`from_file`; close a file's (or use
    ``with``)."""

    def __init__(self, source: _Source, n_mels: int = 80):
        """Runs the streaming pass over ``source``; prefer :meth:`from_array` and :meth:`from_file`."""
        mel_filters(n_mels)  # refuses an unknown n_mels before any work
        self.n_mels = n_mels
        self._source = source
        self.n_samples = source.n
        self._total = source.n + N_SAMPLES
        self._frames = self._total // HOP_LENGTH
        #: the streaming pass's first block, ``(first, stop, log_spec)``, until a window takes
        #: it: a transcription's first window is these frames, not computed twice (~1 MB)
        self._head: tuple[int, int, np.ndarray] | None = None
        self._log_max = self._streamed_max()

    @classmethod
    def from_array(cls, audio: np.ndarray, n_mels: int = 80) -> MelWindows:
        """The windows of 16 kHz mono ``audio`` (a 1-D array; float32 is used without a copy)."""
        return cls(_ArraySource(_as_mono_f32(audio)), n_mels)

    @classmethod
    def from_file(cls, path: str | os.PathLike, n_mels: int = 80) -> MelWindows:
        """The windows of an audio file, read as ``load_audio`` reads it (mono mix, soxr HQ to
        16 kHz when needed, clip to [-1, 1]) but block by block. Raises AudioError."""
        source = _open_file(path)
        try:
            if source.n == 0:
                raise AudioError(f"{source.name}: audio file contains no samples")
            return cls(source, n_mels)
        except BaseException:
            source.close()
            raise

    def _streamed_max(self) -> np.float32:
        """The largest un-normalised log-mel value of the whole padded recording, block by block."""
        best = np.float32(-np.inf)
        for first in range(0, self._frames, _BLOCK_FRAMES):
            stop = min(first + _BLOCK_FRAMES, self._frames)
            block = _log_mel_frames(self._source, self._total, first, stop, self.n_mels)
            best = max(best, block.max())
            if first == 0:
                self._head = (first, stop, block)
        return best

    @property
    def content_frames(self) -> int:
        """Mel frames of the recording itself (openai's ``mel.shape[-1] - N_FRAMES``)."""
        return self._frames - N_FRAMES

    @property
    def duration(self) -> float:
        """The recording's length in seconds."""
        return self.n_samples / SAMPLE_RATE

    @property
    def log_max(self) -> np.float32:
        """The recording's largest ``log10`` mel power, the reference of the -8 floor."""
        return self._log_max

    def window(self, seek: int, n_frames: int = N_FRAMES) -> np.ndarray:
        """f32[n_mels, N_FRAMES]: frames ``[seek, seek + n_frames)`` of the padded recording's
        mel, cut at its end, then cut or zero-padded to N_FRAMES (openai's
        ``pad_or_trim(mel[:, seek:seek + n_frames], N_FRAMES)``)."""
        if seek < 0:
            raise ValueError(f"seek: expected a frame index >= 0, got {seek}")
        if n_frames < 0:
            raise ValueError(f"n_frames: expected a frame count >= 0, got {n_frames}")
        stop = min(seek + min(n_frames, N_FRAMES), self._frames)
        out = np.zeros((self.n_mels, N_FRAMES), dtype=np.float32)
        if stop <= seek:
            return out
        first = seek - seek % TILE_FRAMES
        last = min(-(-stop // TILE_FRAMES) * TILE_FRAMES, self._frames)
        if self._head is not None and self._head[:2] == (first, last):
            log_spec, self._head = self._head[2], None  # handed over once: normalised in place
        else:
            log_spec = _log_mel_frames(self._source, self._total, first, last, self.n_mels)
        out[:, : stop - seek] = _normalise(log_spec[:, seek - first : stop - first], self._log_max)
        return out

    def close(self) -> None:
        """Closes the file or spool behind the windows (nothing for an array)."""
        self._source.close()

    def __enter__(self) -> MelWindows:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
