"""``models/whisper/audio/features.py`` against openai-whisper's ``audio.py`` (the oracle).

Precision: ours runs the STFT and mel in float64, openai's in float32 torch. Against the same
definition computed in float64 torch ours is within ~7e-8 (asserted <= 2e-7: only the float32
rounding of the log and the result is left). Against openai's float32 output the largest
difference measured on JFK and the 28 recorded prompts is 5.4e-5, in low-energy cells just above
the -8 floor where torch's float32 FFT keeps few digits (openai's own output is that far from
the float64 value); cells two decades above the floor differ by <= 1.1e-5 and the mean by
~1e-7. The bounds below leave about 2x room over those measurements.

Windows: ``MelWindows.window(seek, n)`` must be bitwise equal to openai's ``pad_or_trim`` of
the slice of our own whole-recording spectrogram (padding N_SAMPLES), for every seek kind
``transcribe`` makes and past the end; ``from_file`` must equal ``from_array(load_audio(...))``.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import whisper
import whisper.audio as oa
from whisper_clips import JFK, SPEECH

from models.whisper.audio import features as ft
from models.whisper.audio.features import N_FRAMES, N_SAMPLES, MelWindows, log_mel_spectrogram
from models.whisper.audio.load import AudioError, load_audio

ROOT = Path(__file__).resolve().parents[1]
SHARED_SPEECH = next(
    (
        p
        for p in (ROOT / "shared" / "data" / "speech", ROOT.parent / "shared" / "data" / "speech")
        if p.is_dir()
    ),
    None,
)
#: a few of the recorded prompts in shared/, the longest (31 s) among them
SHARED_CLIPS = ("priv-callee-options", "all-circuits-busy-now", "conf-adminmenu-menu8", "dir-instr")

MAX_VS_FLOAT64 = 2e-7  # measured 7.5e-8
MAX_VS_OPENAI = 1e-4  # measured 5.4e-5 (torch's float32 FFT near the floor)
MAX_VS_OPENAI_LOUD = 2.5e-5  # cells >= 0.5 (two decades) above the floor; measured 1.1e-5
MEAN_VS_OPENAI = 1e-6  # measured 1.9e-7


def shared_clip(name: str) -> np.ndarray:
    if SHARED_SPEECH is None or not (SHARED_SPEECH / f"{name}.wav").is_file():
        pytest.skip(f"shared/data/speech/{name}.wav is absent")
    return load_audio(SHARED_SPEECH / f"{name}.wav")


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(JFK)


def openai_mel(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    return whisper.log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding=padding).numpy()


def float64_mel(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """openai's definition evaluated in float64 torch (its filters' float32 values widened)."""
    x = torch.from_numpy(np.concatenate([audio, np.zeros(padding, np.float32)]).astype(np.float64))
    window = torch.hann_window(ft.N_FFT, dtype=torch.float64)
    stft = torch.stft(x, ft.N_FFT, ft.HOP_LENGTH, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2
    log_spec = (oa.mel_filters("cpu", n_mels).double() @ power).clamp(min=1e-10).log10()
    return ((torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0).numpy()


def assert_close_to_openai(audio: np.ndarray, n_mels: int = 80, padding: int = 0) -> float:
    """Ours against openai's float32 output and the float64 evaluation; returns the max
    difference to openai's."""
    ours = log_mel_spectrogram(audio, n_mels, padding)
    ref = openai_mel(audio, n_mels, padding)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - float64_mel(audio, n_mels, padding)).max() <= MAX_VS_FLOAT64
    diff = np.abs(ours - ref)
    assert diff.max() <= MAX_VS_OPENAI
    assert diff.mean() <= MEAN_VS_OPENAI
    loud = ref >= ref.min() + 0.5
    assert not loud.any() or diff[loud].max() <= MAX_VS_OPENAI_LOUD
    return float(diff.max())


# --- constants, filters, pad_or_trim ---------------------------------------------------------


def test_constants_are_openais():
    names = (
        "SAMPLE_RATE N_FFT HOP_LENGTH CHUNK_LENGTH N_SAMPLES N_FRAMES N_SAMPLES_PER_TOKEN "
        "FRAMES_PER_SECOND TOKENS_PER_SECOND"
    ).split()
    for name in names:
        assert getattr(ft, name) == getattr(oa, name), name
        assert type(getattr(ft, name)) is int


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_openais(n_mels):
    ours = ft.mel_filters(n_mels)
    assert ours.dtype == np.float32 and np.array_equal(ours, oa.mel_filters("cpu", n_mels).numpy())
    assert ft.mel_filters(n_mels) is ours and not ours.flags.writeable  # cached, read-only


def test_mel_filters_refuse_other_sizes():
    with pytest.raises(ValueError, match="n_mels"):
        ft.mel_filters(64)


def test_pad_or_trim_is_openais():
    rng = np.random.default_rng(3)
    for shape, axis, length in [
        ((7,), -1, 5),
        ((7,), 0, 9),
        ((3, 7), -1, 7),
        ((3, 7), 0, 5),
        ((2, 3, 4), 1, 6),
    ]:
        array = rng.standard_normal(shape).astype(np.float32)
        ours, ref = ft.pad_or_trim(array, length, axis=axis), oa.pad_or_trim(array, length, axis=axis)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype and np.array_equal(ours, ref)
    audio = rng.standard_normal(1000).astype(np.float32)
    assert np.array_equal(ft.pad_or_trim(audio), oa.pad_or_trim(audio))  # N_SAMPLES by default


# --- the whole-recording spectrogram ------------------------------------------------------------


@pytest.mark.parametrize("padding", [0, N_SAMPLES])
def test_jfk_matches_openai(jfk, padding):
    assert_close_to_openai(jfk, 80, padding)


def test_jfk_128_mels_matches_openai(jfk):
    assert_close_to_openai(jfk, 128, N_SAMPLES)


@pytest.mark.parametrize("name", [p.stem for p in sorted(SPEECH.glob("*.wav"))])
def test_recorded_speech_matches_openai(name):
    audio = load_audio(SPEECH / f"{name}.wav")
    assert_close_to_openai(audio, 80, N_SAMPLES)
    assert_close_to_openai(audio, 80, 0)


@pytest.mark.parametrize("name", SHARED_CLIPS)
def test_shared_speech_matches_openai(name):
    audio = shared_clip(name)
    assert_close_to_openai(audio, 80, N_SAMPLES)
    assert_close_to_openai(audio, 128, 0)


@pytest.mark.parametrize("padding", [0, 1234])
def test_noise_matches_openai(padding):
    rng = np.random.default_rng(11)
    noise = (0.2 * rng.standard_normal(7 * 16000 + 77)).astype(np.float32)
    assert_close_to_openai(noise, 80, padding)
    loud = np.clip(rng.standard_normal(16000) * 3, -1, 1).astype(np.float32)
    assert_close_to_openai(loud, 128, padding)


@pytest.mark.parametrize("padding", [0, N_SAMPLES])
def test_silence_is_exactly_openais(padding):
    silence = np.zeros(5 * 16000 + 3, np.float32)
    ours = log_mel_spectrogram(silence, 80, padding)
    assert np.array_equal(ours, openai_mel(silence, 80, padding))  # all (-10 + 4) / 4


@pytest.mark.parametrize("length", [0, 1, 2, 150, 199, 200, 201, 202, 300, 319, 320, 399, 400, 401, 481])
@pytest.mark.parametrize("padding", [0, 100, N_SAMPLES])
def test_short_recordings_as_openai(length, padding):
    """Shorter than a hop, an FFT window, or the reflect padding: the same frames as openai, or
    an error where torch.stft refuses to reflect-pad (201 samples at least)."""
    audio = (0.3 * np.random.default_rng(length).standard_normal(length)).astype(np.float32)
    try:
        openai_mel(audio, 80, padding)
    except RuntimeError:
        with pytest.raises(ValueError, match="too short"):
            log_mel_spectrogram(audio, 80, padding)
        assert length + padding <= 200
        return
    assert length + padding >= 201
    assert_close_to_openai(audio, 80, padding)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="1-D"):
        log_mel_spectrogram(np.zeros((2, 1000), np.float32))
    with pytest.raises(TypeError, match="NumPy"):
        log_mel_spectrogram([0.0] * 1000)
    with pytest.raises(ValueError, match="padding"):
        log_mel_spectrogram(np.zeros(1000, np.float32), padding=-1)
    with pytest.raises(ValueError, match="n_mels"):
        log_mel_spectrogram(np.zeros(1000, np.float32), n_mels=40)


# --- window by window -----------------------------------------------------------------------------


def transcribe_seeks(content_frames: int) -> list[tuple[int, int]]:
    """(seek, n) pairs as ``transcribe`` makes them: full windows, a window advanced to a
    timestamp inside the previous one, and the last partial window."""
    pairs, seek = [], 0
    while seek < content_frames:
        size = min(N_FRAMES, content_frames - seek)
        pairs.append((seek, size))
        seek += size if len(pairs) % 2 else max(1, size - 1237)
    return pairs


def edge_seeks(content_frames: int) -> list[tuple[int, int]]:
    """Seeks on and beside tile boundaries, at and past the end of the content and of the
    padded mel, with whole, short, empty and over-long lengths."""
    total = content_frames + N_FRAMES
    seeks = {0, 1, 499, 500, 501, 2999, 3001, content_frames - 1, content_frames, content_frames + 1}
    seeks |= {max(0, content_frames - N_FRAMES + 7), total - 1, total, total + 500}
    return [(s, n) for s in sorted(x for x in seeks if x >= 0) for n in (N_FRAMES, 1, 0, 1733, 4000)]


def assert_windows_exact(windows: MelWindows, audio: np.ndarray, n_mels: int, pairs=None) -> None:
    whole = log_mel_spectrogram(audio, n_mels, padding=N_SAMPLES)
    assert windows.content_frames == whole.shape[-1] - N_FRAMES == len(audio) // ft.HOP_LENGTH
    assert windows.duration == len(audio) / ft.SAMPLE_RATE
    pairs = pairs or transcribe_seeks(windows.content_frames) + edge_seeks(windows.content_frames)
    for seek, n in pairs:
        window = windows.window(seek, n)
        assert window.shape == (n_mels, N_FRAMES) and window.dtype == np.float32
        assert np.array_equal(window, oa.pad_or_trim(whole[:, seek : seek + n], N_FRAMES)), (seek, n)


def test_windows_of_jfk_are_the_whole_slices(jfk):
    windows = MelWindows.from_array(jfk)
    assert_windows_exact(windows, jfk, 80)
    ref = openai_mel(jfk, 80, N_SAMPLES)  # and close to openai's own windows
    ours = windows.window(0, windows.content_frames)
    assert np.abs(ours - oa.pad_or_trim(ref[:, : windows.content_frames], N_FRAMES)).max() <= MAX_VS_OPENAI


def test_windows_of_75_seconds_are_the_whole_slices(jfk):
    parts = [jfk, np.zeros(16000 * 2 + 37, np.float32), load_audio(SPEECH / "basic-pbx-ivr-main.wav")]
    parts += [load_audio(SPEECH / "demo-nogo.wav"), jfk, jfk, jfk]
    audio = np.concatenate(parts)[: 75 * 16000 + 123]
    assert len(audio) == 75 * 16000 + 123
    assert_windows_exact(MelWindows.from_array(audio), audio, 80)
    assert_windows_exact(MelWindows.from_array(audio, 128), audio, 128, transcribe_seeks(len(audio) // 160))


@pytest.mark.parametrize("length", [0, 1, 300, 2 * 16000 + 11, N_SAMPLES - 1, N_SAMPLES, N_SAMPLES + 160])
def test_windows_of_short_recordings_are_the_whole_slices(jfk, length):
    audio = np.resize(jfk, length)
    assert_windows_exact(MelWindows.from_array(audio), audio, 80, edge_seeks(length // 160))


def test_the_first_window_is_the_streaming_pass_block_handed_over_once(jfk, monkeypatch):
    """A transcription's first window is the streaming pass's first block, not computed again;
    the block is normalised in place when handed over, so a second window(0) computes anew."""
    windows = MelWindows.from_array(jfk)
    calls = []
    real = ft._log_mel_frames
    monkeypatch.setattr(ft, "_log_mel_frames", lambda *a: calls.append(a[2:4]) or real(*a))
    first = windows.window(0)
    assert calls == []
    again = windows.window(0)
    assert calls == [(0, N_FRAMES)]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(
        first, np.asarray(log_mel_spectrogram(jfk, 80, padding=N_SAMPLES))[:, :N_FRAMES]
    )


def test_window_arguments_are_checked(jfk):
    windows = MelWindows.from_array(jfk)
    with pytest.raises(ValueError, match="seek"):
        windows.window(-1)
    with pytest.raises(ValueError, match="n_frames"):
        windows.window(0, -5)
    with pytest.raises(ValueError, match="1-D"):
        MelWindows.from_array(np.zeros((100, 2), np.float32))


# --- from files -----------------------------------------------------------------------------------


def assert_file_is_array(path: Path, n_mels: int = 80) -> None:
    audio = load_audio(path)
    with MelWindows.from_file(path, n_mels) as from_file:
        from_array = MelWindows.from_array(audio, n_mels)
        assert from_file.n_samples == len(audio) and from_file.content_frames == from_array.content_frames
        assert from_file.log_max == from_array.log_max and from_file.duration == from_array.duration
        for seek, n in transcribe_seeks(from_file.content_frames) + edge_seeks(from_file.content_frames)[::7]:
            assert np.array_equal(from_file.window(seek, n), from_array.window(seek, n)), (path, seek, n)


def test_from_file_16k_is_from_array():
    assert_file_is_array(JFK)


def test_from_file_resampled_is_from_array():
    """8 kHz prompts, resampled by soxr as a stream into the spool: the same samples as
    ``load_audio``'s one-shot resampling."""
    assert_file_is_array(SPEECH / "basic-pbx-ivr-main.wav", 128)
    if SHARED_SPEECH is not None:
        assert_file_is_array(SHARED_SPEECH / "priv-callee-options.wav")


@pytest.mark.parametrize(
    "rate, subtype", [(16000, "PCM_16"), (16000, "FLOAT"), (44100, "FLOAT"), (22050, "PCM_24")]
)
def test_from_file_stereo_is_from_array(tmp_path, jfk, rate, subtype):
    """Two channels mixed to mono; float samples beyond full scale clipped like load_audio."""
    import soxr

    left = soxr.resample(np.concatenate([jfk, jfk, jfk]), 16000, rate).astype(np.float32)
    if subtype == "FLOAT":
        left *= 4.0  # float files may exceed full scale
    right = np.roll(left, 1234) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype=subtype)
    assert_file_is_array(path)


def test_from_file_errors(tmp_path):
    with pytest.raises(AudioError, match="no such audio file"):
        MelWindows.from_file(tmp_path / "absent.wav")
    (tmp_path / "text.wav").write_text("not audio at all")
    with pytest.raises(AudioError, match="not a readable audio file"):
        MelWindows.from_file(tmp_path / "text.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="no samples"):
        MelWindows.from_file(tmp_path / "empty.wav")
    bad = np.zeros(40000, np.float32)
    bad[33333] = np.nan
    for rate in (16000, 8000):
        sf.write(tmp_path / f"nan{rate}.wav", bad, rate, subtype="FLOAT")
        with pytest.raises(AudioError, match="NaN"):
            MelWindows.from_file(tmp_path / f"nan{rate}.wav")


# --- memory -----------------------------------------------------------------------------------------


def write_long_wav(path: Path, minutes: int, rate: int) -> int:
    """A synthetic recording written 30 s at a time (tones, noise, one loud burst late on, so
    the maximum is not in the first window); returns its length in samples."""
    rng = np.random.default_rng(5)
    block = 30 * rate
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as out:
        for i in range(minutes * 2):
            t = np.arange(block) / rate
            x = 0.1 * np.sin(2 * np.pi * (200 + 40 * i) * t) + 0.02 * rng.standard_normal(block)
            if i == minutes * 2 - 3:
                x[block // 2 : block // 2 + rate] *= 8
            out.write(x.astype(np.float32))
    return minutes * 2 * block


@pytest.mark.parametrize("minutes, rate", [(20, 16000), (12, 8000)])
def test_memory_does_not_grow_with_the_recording(tmp_path, minutes, rate):
    """A 20-minute file read in place (and a 12-minute 8 kHz one resampled into the spool): peak traced
    memory under a quarter of the 16 kHz recording's float32 size, and windows still exact."""
    path = tmp_path / "long.wav"
    n16 = write_long_wav(path, minutes, rate) * 16000 // rate
    tracemalloc.start()
    try:
        windows = MelWindows.from_file(path)
        seeks = [0, windows.content_frames // 2 + 17, windows.content_frames - 1000]
        got = [windows.window(s, min(N_FRAMES, windows.content_frames - s)) for s in seeks]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    windows.close()
    assert peak < n16 * 4 / 4, f"peak {peak / 2**20:.1f} MiB for a {n16 * 4 / 2**20:.0f} MiB recording"
    assert windows.content_frames == n16 // 160
    if rate == 16000:  # the whole-recording reference is worth computing once
        whole = log_mel_spectrogram(load_audio(path), 80, padding=N_SAMPLES)
        for seek, window in zip(seeks, got):
            n = min(N_FRAMES, windows.content_frames - seek)
            assert np.array_equal(window, oa.pad_or_trim(whole[:, seek : seek + n], N_FRAMES))


def test_a_silent_tile_is_what_the_full_computation_makes():
    """The shortcut for all-zero tiles (openai's 30 s of padding) against the computation it
    skips: a tile with one sample of 1e-30 goes the whole way (its power lies far below the
    1e-10 clamp) and must come out bit for bit the same."""
    from models.whisper.audio import features as F

    z = np.zeros((F.TILE_FRAMES - 1) * F.HOP_LENGTH + F.N_FFT, np.float32)
    nearly = z.copy()
    nearly[-1] = np.float32(1e-30)
    for mels in (80, 128):
        np.testing.assert_array_equal(
            F._tile_log_mel(z, F.TILE_FRAMES, mels), F._tile_log_mel(nearly, F.TILE_FRAMES, mels)
        )
