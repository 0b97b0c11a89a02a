"""Tests for models.whisper.audio.load.load_audio (soundfile + soxr, no ffmpeg)."""

import numpy as np
import pytest
import soundfile as sf

from models.whisper.audio.load import AudioError, decode_audio, load_audio

SR = 16000


def tone(freq, sr, seconds=1.0, amp=0.5):
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, sr):
    w = x * np.hanning(len(x))
    spec = np.abs(np.fft.rfft(w))
    return np.argmax(spec) * sr / len(x)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize(
    "sr_in,fmt,subtype,ext",
    [
        (8000, "WAV", "PCM_16", "wav"),
        (16000, "WAV", "PCM_16", "wav"),
        (22050, "FLAC", "PCM_16", "flac"),
        (44100, "WAV", "PCM_24", "wav"),
        (48000, "WAV", "FLOAT", "wav"),
        (48000, "OGG", "VORBIS", "ogg"),
    ],
)
def test_tone_resampled(tmp_path, sr_in, fmt, subtype, ext):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile lacks {fmt}")
    path = tmp_path / f"tone_{sr_in}.{ext}"
    sf.write(path, tone(440.0, sr_in, seconds=1.5), sr_in, format=fmt, subtype=subtype)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    expected_len = 1.5 * SR
    assert abs(len(x) - expected_len) <= 1, len(x)
    assert abs(peak_hz(x, SR) - 440.0) < 2.0
    # amplitude kept (0.5 peak sine -> rms 0.354), ignoring the edges
    assert rms(x[800:-800]) == pytest.approx(0.5 / np.sqrt(2), rel=0.03)
    assert np.max(np.abs(x)) <= 1.0


def test_other_target_rate(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, tone(1000.0, 44100), 44100)
    x = load_audio(path, sr=8000)
    assert abs(len(x) - 8000) <= 1
    assert abs(peak_hz(x, 8000) - 1000.0) < 3.0


def test_resampling_is_band_limited(tmp_path):
    # 12 kHz is above the 8 kHz Nyquist of 16 kHz output: a proper resampler
    # removes it; naive decimation/interpolation would alias it to 4 kHz.
    path = tmp_path / "hf.wav"
    sf.write(path, tone(12000.0, 48000), 48000, subtype="FLOAT")
    x = load_audio(path)
    assert rms(x[800:-800]) < 0.01


def test_stereo_is_averaged(tmp_path):
    left, right = tone(440.0, SR), tone(1000.0, SR, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SR, subtype="FLOAT")
    x = load_audio(path)
    np.testing.assert_allclose(x, (left + right) / 2, atol=1e-6)


def test_stereo_resampled(tmp_path):
    sig = tone(300.0, 44100)
    path = tmp_path / "stereo44.flac"
    sf.write(path, np.stack([sig, sig], axis=1), 44100)
    x = load_audio(path)
    assert abs(len(x) - SR) <= 1
    assert abs(peak_hz(x, SR) - 300.0) < 2.0


def test_16k_pcm_is_exact(tmp_path):
    pcm = (np.arange(-1000, 1000, dtype=np.int16) * 16).astype(np.int16)
    path = tmp_path / "pcm.wav"
    sf.write(path, pcm, SR, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(path), pcm.astype(np.float32) / 32768.0)


def test_array_passthrough():
    a = np.linspace(-1, 1, 100)
    out = load_audio(a)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a, atol=1e-7)


def test_jfk_example():
    from pathlib import Path

    x = load_audio(Path(__file__).resolve().parent.parent / "examples" / "jfk.wav")
    assert len(x) == 176000 and x.dtype == np.float32


# --------------------------------------------------------------------- errors


def _assert_names_file(exc_info, path):
    msg = str(exc_info.value)
    assert str(path) in msg
    assert "\n" not in msg
    assert isinstance(exc_info.value, ValueError)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    _assert_names_file(ei, path)
    assert "no such" in str(ei.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    _assert_names_file(ei, path)
    assert "empty" in str(ei.value)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    _assert_names_file(ei, path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.mp3"
    path.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioError) as ei:
        load_audio(str(path))
    _assert_names_file(ei, path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 30 / 32000])
def test_truncated_wav(tmp_path, keep):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(440.0, SR), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    _assert_names_file(ei, path)
    assert "truncated" in str(ei.value)


def test_zero_samples(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), SR, subtype="PCM_16")
    with pytest.raises(AudioError) as ei:
        load_audio(path)
    _assert_names_file(ei, path)
    assert "no samples" in str(ei.value)


def test_directory(tmp_path):
    with pytest.raises(AudioError) as ei:
        load_audio(tmp_path)
    _assert_names_file(ei, tmp_path)


# ------------------------------------------------------- bytes in memory (uploads)


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg")])
def test_decode_audio_equals_load_audio(tmp_path, fmt, ext):
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile lacks {fmt}")
    path = tmp_path / f"t.{ext}"
    sf.write(path, np.stack([tone(440.0, 22050), tone(660.0, 22050)], axis=1), 22050, format=fmt)
    x = decode_audio(path.read_bytes())
    assert x.dtype == np.float32 and x.ndim == 1
    np.testing.assert_array_equal(x, load_audio(path))


@pytest.mark.parametrize(
    "data,what",
    [
        (b"", "empty"),
        (np.random.default_rng(0).bytes(4096), "not a readable audio file"),
        (b"this is not audio\n" * 50, "not a readable audio file"),
    ],
)
def test_decode_audio_errors_name_the_upload(data, what):
    with pytest.raises(AudioError) as ei:
        decode_audio(data, name="upload.wav")
    msg = str(ei.value)
    assert msg.startswith("upload.wav: ") and what in msg and "\n" not in msg
    assert "BytesIO" not in msg


@pytest.mark.parametrize("keep", [0.5, 30 / 32000])
def test_decode_audio_truncated_wav(tmp_path, keep):
    path = tmp_path / "cut.wav"
    sf.write(path, tone(440.0, SR), SR, subtype="PCM_16")
    data = path.read_bytes()
    with pytest.raises(AudioError, match="truncated"):
        decode_audio(data[: int(len(data) * keep)])
    assert len(decode_audio(data)) == SR
