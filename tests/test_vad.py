"""The voice-activity detector (``models/whisper/vad/``) against silero-vad itself.

Oracles: onnxruntime running the ORIGINAL Silero VAD graph one window per call exactly as
silero-vad 6.2's ``OnnxWrapper`` does (written out below: 64 samples of context, zeros first,
the last window zero-padded), and silero-vad's own ``get_speech_timestamps`` fed our
probabilities through a stand-in model. silero_vad's ``__init__`` imports torchaudio, which is
not installed (it pins another torch): a stub module stands in while it is imported.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from models.whisper.audio.features import open_samples  # noqa: E402
from models.whisper.audio.load import load_audio  # noqa: E402
from models.whisper.vad.silero import (  # noqa: E402
    RUN_WINDOWS,
    SileroVad,
    VadModelError,
    VadState,
    packaged_model_path,
)
from models.whisper.vad.speech import (  # noqa: E402
    VadOptions,
    VadOptionsError,
    detect_speech,
    speech_duration,
    speech_timestamps,
)

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "examples" / "jfk.wav"
SPEECH = sorted((ROOT / "tests" / "data" / "speech").glob("*.wav"))
SR = 16000

#: |ours - OnnxWrapper's| on every probability. Both are float32 evaluations of the same
#: network, summing in different orders (our matrix products batch the windows and gather a
#: convolution's taps differently): each is within 3e-6 of the network in float64 on these clips
#: (measured once with a float64 NumPy transcription of the graph), and they differ by at most
#: 4.7e-6 on these clips and 6.6e-6 over benchmarks/vad.py's 10 minutes (Intel Xeon SPR,
#: 2026-12-05). 2e-5 leaves room for other CPUs' GEMM kernels; a real mistake (a gate order, a
#: tap, the context, the padding) moves probabilities by 1e-2 or more.
TOL = 2e-5


@pytest.fixture(scope="module")
def model_path() -> Path:
    try:
        return packaged_model_path()
    except VadModelError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def vad(model_path) -> SileroVad:
    return SileroVad.load(model_path)


@pytest.fixture(scope="module")
def original(model_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def reference_probs(session, audio: np.ndarray) -> np.ndarray:
    """silero-vad 6.2's ``OnnxWrapper.audio_forward`` at 16 kHz, in NumPy: zero-pad to whole
    512-sample windows; each call gets the previous input's last 64 samples (zeros first)
    before the window, the state it returned, and sr."""
    n = -(-len(audio) // 512)
    x = np.zeros(n * 512, np.float32)
    x[: len(audio)] = audio
    state, context, sr = np.zeros((2, 1, 128), np.float32), np.zeros((1, 64), np.float32), np.array(SR)
    out = np.empty(n, np.float32)
    for i in range(n):
        inp = np.concatenate([context, x[None, i * 512 : (i + 1) * 512]], axis=1)
        prob, state = session.run(None, {"input": inp, "state": state, "sr": sr})
        out[i], context = prob[0, 0], inp[:, -64:]
    return out


def noise(seconds: float, scale: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * scale).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return load_audio(JFK)


def clips(jfk) -> dict[str, np.ndarray]:
    """Real speech with digital silence and white noise inserted, and lengths off the 512 grid."""
    out = {
        "jfk": np.concatenate([silence(1.5), jfk[: 5 * SR], noise(2, 0.01, 1), jfk[5 * SR :], silence(0.7)])
    }
    for i, path in enumerate(SPEECH):
        speech = load_audio(path)
        half = len(speech) // 2
        out[path.stem] = np.concatenate([speech[:half], silence(1), noise(1, 0.1, i), speech[half:]])
    out["odd_length"] = jfk[: 3 * SR + 123]
    out["white_noise"] = np.clip(noise(4, 0.3, 7)[:-29], -1, 1)
    return out


def test_probs_equal_onnxwrapper(vad, original, jfk):
    for name, audio in clips(jfk).items():
        ref = reference_probs(original, audio)
        got = vad.speech_probs(audio)
        assert got.shape == ref.shape == (math.ceil(len(audio) / 512),), name
        assert np.abs(got - ref).max() <= TOL, (name, float(np.abs(got - ref).max()))
        assert ref.max() > 0.9 or name == "white_noise", name  # speech was seen: not a vacuous match
    # float64 samples are taken as their float32 values
    audio = clips(jfk)["odd_length"]
    np.testing.assert_array_equal(vad.speech_probs(audio.astype(np.float64)), vad.speech_probs(audio))


def test_the_other_packaged_graph_gives_the_same(vad, model_path, jfk):
    op15 = SileroVad.load(model_path.with_name("silero_vad_16k_op15.onnx"))
    np.testing.assert_array_equal(op15.speech_probs(jfk), vad.speech_probs(jfk))


def test_blocks_equal_one_call(vad, jfk):
    audio = np.concatenate([jfk, noise(3, 0.02, 3), jfk])[: 25 * SR + 77]
    whole = vad.speech_probs(audio)
    for windows in (1, 7, 300, RUN_WINDOWS, 3 * RUN_WINDOWS):
        state, parts = None, []
        for start in range(0, len(audio), windows * 512):
            probs, state = vad.probs(audio[start : start + windows * 512], state)
            parts.append(probs)
        got = np.concatenate(parts)
        if windows % RUN_WINDOWS == 0:  # the same onnxruntime calls on the same inputs
            np.testing.assert_array_equal(got, whole)
        else:  # other shapes: bitwise equal on the machines seen, float noise at most
            np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6)
    # an empty block changes nothing
    probs, state2 = vad.probs(np.zeros(0, np.float32), state)
    assert probs.shape == (0,) and state2 is state


def test_detect_speech_reads_a_file_as_the_array(vad, tmp_path):
    import soundfile as sf

    audio = np.concatenate([silence(2), load_audio(JFK), noise(62, 0.005, 4), load_audio(JFK)])  # > one block
    path = tmp_path / "long.wav"
    sf.write(path, audio, SR, subtype="FLOAT")
    expected = speech_timestamps(vad.speech_probs(audio), len(audio), VadOptions())
    assert detect_speech(path, model=vad) == detect_speech(audio, model=vad) == expected
    assert len(expected) == 2
    source = open_samples(path)  # an open source is read, and left open for its owner
    try:
        assert detect_speech(source, model=vad) == expected
        np.testing.assert_array_equal(source.read(SR, SR + 5), audio[SR : SR + 5])
    finally:
        source.close()


# ---- timestamps against silero-vad's get_speech_timestamps ----------------------------


@pytest.fixture(scope="module")
def silero_timestamps():
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    stub = "torchaudio" not in sys.modules
    if stub:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        from silero_vad.utils_vad import get_speech_timestamps
    finally:
        torch.set_num_threads(threads)  # silero_vad.model sets one thread on import
        if stub:
            del sys.modules["torchaudio"]

    class Replay:
        """Stands in for silero's model: returns the given probabilities in order."""

        def __init__(self, probs):
            self.probs = torch.from_numpy(np.asarray(probs, np.float32))

        def reset_states(self):
            self.i = 0

        def __call__(self, chunk, sr):
            self.i += 1
            return self.probs[self.i - 1]

    def run(probs, n_samples, options: VadOptions):
        kwargs = {f: getattr(options, f) for f in options.__dataclass_fields__}
        return get_speech_timestamps(torch.zeros(n_samples), Replay(probs), sampling_rate=SR, **kwargs)

    return run


OPTION_SETS = [
    VadOptions(),  # faster-whisper's defaults
    VadOptions(min_speech_duration_ms=250, min_silence_duration_ms=100, speech_pad_ms=30),  # silero's
    VadOptions(max_speech_duration_s=3, min_silence_duration_ms=100, speech_pad_ms=30),
    VadOptions(max_speech_duration_s=1.5),
    VadOptions(threshold=0.6, neg_threshold=0.2, min_speech_duration_ms=500, max_speech_duration_s=5),
    VadOptions(threshold=0.3, min_silence_duration_ms=0, speech_pad_ms=0),
    VadOptions(threshold=0.1, max_speech_duration_s=2.5, min_silence_duration_ms=300),  # floor 0.01
    VadOptions(speech_pad_ms=30.03, min_silence_duration_ms=99.9, min_speech_duration_ms=33.3),
    VadOptions(min_speech_duration_ms=64, min_silence_duration_ms=32, speech_pad_ms=0),  # whole windows: ties
]


def random_probs(rng, thresholds) -> np.ndarray:
    """Runs of speech, hysteresis band and silence, with values exactly at the thresholds
    (as float32, which rounds 0.35 below 0.35: compared as silero compares, in float64)."""
    on, off = thresholds
    levels = [
        lambda n: rng.uniform(on, 1, n),
        lambda n: rng.uniform(off, on, n),
        lambda n: rng.uniform(0, off, n),
        lambda n: np.full(n, on),
        lambda n: np.full(n, off),
        lambda n: rng.uniform(0, 1, n),
    ]
    runs, total = [], int(rng.integers(1, 1200))
    while sum(map(len, runs)) < total:
        n = int(rng.choice([1, 2, 3, 5, 20, 60, 150, 400]))
        runs.append(levels[int(rng.integers(len(levels)))](n))
    return np.concatenate(runs)[:total].astype(np.float32)


def test_timestamps_equal_silero(silero_timestamps):
    rng = np.random.default_rng(2026)
    cases = 0
    for options in OPTION_SETS:
        for _ in range(12):
            probs = random_probs(rng, (options.threshold, options.exit_threshold))
            n_samples = (len(probs) - 1) * 512 + int(rng.integers(1, 513))
            expected = silero_timestamps(probs, n_samples, options)
            assert speech_timestamps(probs, n_samples, options) == expected, (options, probs.tolist())
            cases += bool(expected)
    assert cases > 60  # most cases have speech


def test_max_speech_cuts_equal_silero(silero_timestamps):
    """Long speech with dips: cut at the longest silence inside, or hard when there is none."""
    speech = np.full(int(10 * SR / 512), 0.9, np.float32)
    dips = speech.copy()
    dips[125:132] = 0.1  # 224 ms of silence at 4 s
    dips[219:224] = 0.1  # 160 ms at 7 s
    dips[250:252] = 0.1  # 64 ms: too short to cut at
    options = VadOptions(max_speech_duration_s=6, min_silence_duration_ms=500, speech_pad_ms=30)
    for probs, pieces in ((dips, 2), (speech, 2)):
        got = speech_timestamps(probs, len(probs) * 512, options)
        assert got == silero_timestamps(probs, len(probs) * 512, options)
        assert len(got) == pieces
    assert speech_timestamps(dips, len(dips) * 512, options)[0]["end"] == 125 * 512 + 480  # at 4 s, padded


def test_jfk_between_silence_and_noise(vad, jfk):
    before, after = [silence(5), noise(5, 0.01, 11)], [silence(5), noise(5, 0.01, 12)]
    audio = np.concatenate([*before, jfk, *after])
    start, end = 10 * SR, 10 * SR + len(jfk)
    pad = VadOptions().speech_pad_ms * SR // 1000
    found = detect_speech(audio, VadOptions(), vad)
    assert len(found) == 1, found
    # JFK speaks from ~0.35 s to ~10.6 s of the clip; nothing beyond the padding is speech
    assert start - pad <= found[0]["start"] <= start + SR // 2
    assert end - SR // 2 <= found[0]["end"] <= end + pad
    assert 10 < speech_duration(found) < 11.8


def test_silence_has_no_speech(vad):
    assert detect_speech(silence(12), model=vad) == []
    assert detect_speech(np.zeros(0, np.float32), model=vad) == []
    assert speech_timestamps(np.zeros(3, np.float32), 1100) == []


# ---- errors ---------------------------------------------------------------------------


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


def test_model_errors(tmp_path, monkeypatch):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(VadModelError) as e:
        SileroVad.load(missing)
    assert str(missing) in one_line(e) and "pip install --no-deps silero-vad" in str(e.value)
    junk = tmp_path / "junk.onnx"
    junk.write_text("this is not an ONNX model\n" * 20)
    with pytest.raises(VadModelError) as e:
        SileroVad.load(junk)
    assert str(junk) in one_line(e)
    other = tmp_path / "other.onnx"
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    other.write_bytes(
        helper.make_model(
            helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [])
        ).SerializeToString()
    )
    with pytest.raises(VadModelError, match="not a Silero VAD") as e:
        SileroVad.load(other)
    assert str(other) in one_line(e)

    import importlib.metadata

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(VadModelError, match="pip install --no-deps silero-vad"):
        SileroVad.load()


@pytest.mark.parametrize(
    "options, key",
    [
        ({"treshold": 0.5}, "treshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"threshold": "0.5"}, "threshold"),
        ({"neg_threshold": -0.1}, "neg_threshold"),
        ({"min_speech_duration_ms": -1}, "min_speech_duration_ms"),
        ({"max_speech_duration_s": 0}, "max_speech_duration_s"),
        ({"min_silence_duration_ms": True}, "min_silence_duration_ms"),
        ({"speech_pad_ms": math.nan}, "speech_pad_ms"),
        ({"speech_pad_ms": math.inf}, "speech_pad_ms"),
    ],
)
def test_bad_options(options, key):
    with pytest.raises(VadOptionsError) as e:
        VadOptions.from_mapping(options)
    assert key in one_line(e)


def test_options_from_mapping():
    assert VadOptions.from_mapping(None) == VadOptions.from_mapping({}) == VadOptions()
    o = VadOptions.from_mapping({"threshold": 0.6, "neg_threshold": None, "max_speech_duration_s": 30})
    assert (o.threshold, o.exit_threshold, o.max_speech_duration_s) == (0.6, max(0.6 - 0.15, 0.01), 30)
    assert VadOptions(threshold=0.1).exit_threshold == 0.01
    assert (VadOptions().min_silence_duration_ms, VadOptions().speech_pad_ms) == (2000, 400)


@pytest.mark.parametrize(
    "audio",
    [
        [0.0] * 600,
        np.zeros((2, 600), np.float32),
        np.zeros(600, np.int16),
        np.array([0.0, np.nan], np.float32),
    ],
)
def test_bad_audio(vad, audio):
    with pytest.raises(ValueError, match="audio") as e:
        vad.probs(audio)
    one_line(e)


def test_bad_state_and_probs(vad):
    with pytest.raises(ValueError, match="state"):
        vad.probs(np.zeros(512, np.float32), state=(1, 2))
    with pytest.raises(ValueError, match=r"VadState\.h"):
        VadState(np.zeros(3, np.float32), np.zeros(128, np.float32), np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="probs"):
        speech_timestamps(np.zeros(3, np.float32), 512)
