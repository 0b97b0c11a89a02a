"""``models.whisper.transcription.timing`` against openai-whisper's ``whisper.timing`` (the oracle):
median filter, DTW, the float32 statistics (bit for bit against torch's CPU kernels), punctuation
merging, ``find_alignment`` and ``add_word_timestamps`` end to end on random and real models."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import oracle
import pytest
import torch
import whisper
import whisper.timing as oai
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.model import ModelDimensions, Whisper
from whisper.tokenizer import get_tokenizer
from whisper_doubles import AligningTorchBackend, random_model

from models.whisper.decoding import torch_float as tf
from models.whisper.transcription import timing as ours

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "examples" / "jfk.wav"
SPEECH = Path("/work/shared/data/speech")


def load_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 (soundfile + soxr; this machine has no ffmpeg for whisper.load_audio)."""
    import soundfile
    import soxr

    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if rate != 16000:
        audio = soxr.resample(audio, rate, 16000)
    return np.ascontiguousarray(audio, dtype=np.float32)


def torch_cpu() -> ours.TorchCpu:
    """The TorchCpu of the torch these tests run (its capability and current thread count)."""
    lanes = 16 if torch.backends.cpu.get_cpu_capability() == "AVX512" else 8
    return ours.TorchCpu(softmax_lanes=lanes, sum_lanes=8, threads=torch.get_num_threads())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.fixture
def threads():
    """Sets torch's intra-op threads for a test, restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_detected_torch_cpu_is_this_torch():
    """What kvgraph detects is torch's default here: its thread count read in a fresh process
    (tests of this one set it, and openai's first word-timestamp run raises it)."""
    fresh = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    default = ours.TorchCpu(torch_cpu().softmax_lanes, 8, int(fresh.stdout.strip()))
    assert ours.detect_torch_cpu() == default


# --------------------------------------------------------------------------
# median filter and DTW


MEDIAN_SHAPES = [(1,), (1, 1), (7,), (1, 9), (9, 1), (3, 4), (4, 8), (2, 3, 5), (2, 5, 40), (3, 2, 6, 11)]


@pytest.mark.parametrize("width", [1, 3, 5, 7])
@pytest.mark.parametrize("shape", MEDIAN_SHAPES)
def test_median_filter_matches_openai(shape, width):
    rng = np.random.default_rng(hash((shape, width)) % 2**32)
    for x in (
        rng.standard_normal(shape).astype(np.float32),
        rng.integers(0, 3, shape).astype(np.float32),  # ties
        np.round(rng.standard_normal(shape), 1),  # float64, ties
    ):
        expected = oai.median_filter(torch.from_numpy(x.copy()), width).numpy()
        assert same_bits(ours.median_filter(x, width), expected)


def test_median_filter_nan_and_short_rows():
    x = np.array([[1.0, np.nan, 3.0, 2.0, 5.0, np.nan, 0.0, 4.0]], dtype=np.float32)
    expected = oai.median_filter(torch.from_numpy(x.copy()), 3).numpy()
    np.testing.assert_array_equal(ours.median_filter(x, 3), expected)
    short = np.arange(3, dtype=np.float32)[None]
    assert ours.median_filter(short, 7) is short  # too short to mirror: unchanged, as openai
    with pytest.raises(ValueError, match="filter_width 4"):
        ours.median_filter(np.zeros((2, 9), np.float32), 4)


DTW_SHAPES = [(1, 1), (1, 2), (2, 1), (1, 17), (17, 1), (2, 2), (3, 7), (7, 3), (12, 40), (40, 12), (60, 300)]


@pytest.mark.parametrize("shape", DTW_SHAPES)
def test_dtw_matches_openai(shape):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    cases = [
        rng.standard_normal(shape).astype(np.float32).astype(np.float64),
        rng.integers(0, 3, shape).astype(np.float64),  # many tied costs
        np.zeros(shape),  # every comparison tied
        rng.standard_normal(shape) * 1e6 + rng.standard_normal(shape),  # float64 sums rounded to float32
        np.where(rng.random(shape) < 0.1, np.inf, rng.standard_normal(shape)),
    ]
    for x in cases:
        expected = oai.dtw_cpu(x.copy())
        got = ours.dtw(x)
        assert got.dtype == np.int64 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_dtw_on_a_30s_window_is_fast():
    """A 30 s window's matrix is ~100 tokens x 1500 frames."""
    x = -np.random.default_rng(0).standard_normal((100, 1500)).astype(np.float32).astype(np.float64)
    t0 = time.perf_counter()
    got = ours.dtw(x)
    elapsed = time.perf_counter() - t0
    np.testing.assert_array_equal(got, oai.dtw_cpu(x.copy()))
    assert elapsed < 0.5, f"dtw took {elapsed * 1e3:.0f} ms"


# --------------------------------------------------------------------------
# float32 statistics, bit for bit against torch


def to_f32(v) -> np.float32:
    """A Fraction rounded once to the nearest float32, ties to even (no float64 on the way)."""
    from fractions import Fraction

    if v == 0:
        return np.float32(0)
    mag = abs(v)
    e = mag.numerator.bit_length() - mag.denominator.bit_length()
    e = e - 1 if Fraction(2) ** e > mag else e
    ulp = Fraction(2) ** (max(e, -126) - 23)
    return np.float32(float(round(mag / ulp) * ulp) * (1 if v > 0 else -1))


def test_fma_f32_rounds_once():
    """Against exact rational arithmetic, including sums whose float64 rounding lands exactly
    halfway between two float32 values (rounding twice would pick the even one)."""
    from fractions import Fraction

    rng = np.random.default_rng(4)
    scale = lambda n, lo, hi: np.exp2(rng.integers(lo, hi, n)).astype(np.float32)  # noqa: E731
    a = rng.standard_normal(3000).astype(np.float32) * scale(3000, -20, 20)
    b = rng.standard_normal(3000).astype(np.float32) * scale(3000, -20, 20)
    c = rng.standard_normal(3000).astype(np.float32) * scale(3000, -45, 45)
    crafted = [
        (-(64 + 2.0**-9), 1 - 2.0**-15, 2.0**30 + 128),  # exact: just above a midpoint -> up
        (64 + 2.0**-9, 1 - 2.0**-15, -(2.0**30 + 128)),  # mirrored
        (64 + 2.0**-9, 1 - 2.0**-15, 2.0**30),  # just below a midpoint -> down
        (2.0**-70, 2.0**-70, 2.0**-149),  # float32 subnormal results
        (3 * 2.0**-75, 2.0**-75, -(2.0**-149)),
    ]
    a = np.concatenate([a, np.array([x[0] for x in crafted], np.float32)])
    b = np.concatenate([b, np.array([x[1] for x in crafted], np.float32)])
    c = np.concatenate([c, np.array([x[2] for x in crafted], np.float32)])
    exact = [to_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))) for x, y, z in zip(a, b, c)]
    assert same_bits(tf.fma_f32(a, b, c), np.array(exact, dtype=np.float32))
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert not same_bits(naive, np.array(exact, dtype=np.float32))  # the crafted cases matter


SOFTMAX_LENGTHS = [1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 100, 750, 1500, 50256]


@pytest.mark.parametrize("n", SOFTMAX_LENGTHS)
def test_softmax_matches_torch_bits(n):
    rng = np.random.default_rng(n)
    rows = 3 if n > 10000 else 12
    x = rng.standard_normal((rows, n)) * rng.choice([0.01, 1.0, 5.0, 40.0], (rows, 1))
    x[0, : n // 2] -= 95  # exp of -87..-104: float32 subnormals (SLEEF builds them by two scalings)
    x[1, : n // 3] = -150  # below -104: exactly zero
    x = x.astype(np.float32)
    expected = torch.from_numpy(x).softmax(-1).numpy()
    assert same_bits(tf.softmax_f32(x, torch_cpu().softmax_lanes), expected)


def test_softmax_of_attention_weights_shape():
    x = np.random.default_rng(1).standard_normal((4, 30, 750)).astype(np.float32) * 3
    expected = torch.from_numpy(x).softmax(-1).numpy()
    assert same_bits(tf.softmax_f32(x, torch_cpu().softmax_lanes), expected)


AVX2_SCRIPT = """
import sys, numpy as np, torch
assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
d = np.load(sys.argv[1])
s = torch.from_numpy(d["x"]).softmax(-1).numpy()
m = torch.from_numpy(d["w"]).mean(axis=0).numpy()
np.savez(sys.argv[2], s=s, m=m)
"""


def test_avx2_torch_bits(tmp_path):
    """The 8-lane kernels, on a torch told to dispatch AVX2 (``ATEN_CPU_CAPABILITY``)."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((9, 1501)) * 4).astype(np.float32)
    w = rng.standard_normal((8, 5, 23)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x, w=w)
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    script = [sys.executable, "-c", AVX2_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")]
    subprocess.run(script, env=env, check=True, timeout=120)
    out = np.load(tmp_path / "out.npz")
    assert same_bits(tf.softmax_f32(x, 8), out["s"])
    cpu = ours.TorchCpu(softmax_lanes=8, sum_lanes=8, threads=1)
    assert same_bits(ours.mean_over_heads_f32(w, filtered=False, width=7, cpu=cpu), out["m"])


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 4), (2, 7, 5), (6, 40, 750), (4, 201, 1500), (8, 1, 33)])
def test_std_mean_matches_torch_bits(shape):
    rng = np.random.default_rng(sum(shape))
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).softmax(-1)
    std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
    got_std, got_mean = ours.std_mean_f32(w.numpy())
    assert same_bits(got_std, std.numpy()) and same_bits(got_mean, mean.numpy())


HEADS = [1, 2, 4, 5, 6, 8, 16, 19, 23, 40]
FRAMES_TOKENS = [
    (1, 3),
    (3, 5),
    (4, 5),
    (6, 4),
    (7, 3),
    (8, 6),
    (9, 2),
    (17, 1),
    (33, 50),
    (750, 45),
    (1500, 7),
]


@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("width", [1, 3, 7])
def test_mean_over_heads_matches_torch_bits(threads, n_threads, width):
    """openai's median filter then ``mean(axis=0)``: torch's summation order follows the
    filter's memory layout (frames fewer than the width, or no filtering at all) and threads."""
    threads(n_threads)
    cpu = ours.TorchCpu(softmax_lanes=torch_cpu().softmax_lanes, sum_lanes=8, threads=n_threads)
    rng = np.random.default_rng(n_threads * 10 + width)
    for heads in HEADS:
        for frames, tokens in FRAMES_TOKENS:
            w = rng.standard_normal((heads, tokens, frames)).astype(np.float32)
            expected = oai.median_filter(torch.from_numpy(w), width).mean(axis=0).numpy()
            filtered = frames > width // 2
            got = ours.mean_over_heads_f32(
                ours.median_filter(w, width), filtered=filtered, width=width, cpu=cpu
            )
            assert same_bits(got, expected), (heads, frames, tokens)


# --------------------------------------------------------------------------
# punctuation


PIECES = [
    " hello",
    " world",
    "world",
    ",",
    ".",
    "!",
    "?",
    '"',
    "'",
    " '",
    ' "',
    " (",
    ")",
    " -",
    "-",
    " ",
    "",
]
PIECES += ["“", "”", " ¿", "。", "，", "...", "?!", " [", "]", " {", "}", ":", " Mr", ".", "、", "([", " 'em"]


def test_merge_punctuations_matches_openai():
    rng = np.random.default_rng(3)
    for trial in range(600):
        n = int(rng.integers(0, 9))
        words = [PIECES[i] for i in rng.integers(0, len(PIECES), n)]
        if trial % 7 == 0:
            words = [w for w in words if w.strip() and not w.strip().isalpha()] or [","]  # all punctuation
        theirs = [oai.WordTiming(w, [i, 100 + i], i * 0.1, i * 0.1 + 0.05, 0.5) for i, w in enumerate(words)]
        mine = [ours.WordTiming(w, [i, 100 + i], i * 0.1, i * 0.1 + 0.05, 0.5) for i, w in enumerate(words)]
        oai.merge_punctuations(theirs, ours.PREPEND_PUNCTUATIONS, ours.APPEND_PUNCTUATIONS)
        ours.merge_punctuations(mine, ours.PREPEND_PUNCTUATIONS, ours.APPEND_PUNCTUATIONS)
        assert [(t.word, t.tokens) for t in mine] == [(t.word, t.tokens) for t in theirs], words


def test_default_punctuations_are_openais():
    import inspect

    params = inspect.signature(oai.add_word_timestamps).parameters
    assert params["prepend_punctuations"].default == ours.PREPEND_PUNCTUATIONS
    assert params["append_punctuations"].default == ours.APPEND_PUNCTUATIONS


# --------------------------------------------------------------------------
# end to end against openai's find_alignment / add_word_timestamps


WORDS = (
    "and so my fellow Americans ask not what your country can do for you it's don't New York 1999 3.14 e-mail"
)
WORDS = WORDS.split()
PUNCT = [",", ".", "!", "?", "...", ":", "-"]


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(multilingual=False)


@pytest.fixture(scope="module")
def jfk_mel():
    if not JFK.exists():
        pytest.skip(f"{JFK} missing")
    return pad_or_trim(log_mel_spectrogram(load_audio(JFK)), N_FRAMES)


def many_heads_model(n_layer: int, n_head: int, heads: list[tuple[int, int]], seed: int) -> Whisper:
    """A small random openai model whose alignment heads are ``heads``."""
    dims = ModelDimensions(80, 1500, 64, 2, 1, 51864, 448, 64, n_head, n_layer)
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0, 0.02)
    mask = torch.zeros(n_layer, n_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()


def sentence(rng, tokenizer) -> list[int]:
    """Random English with punctuation, quotes and brackets, as text tokens."""
    parts = []
    for _ in range(int(rng.integers(1, 12))):
        word = str(rng.choice(WORDS))
        roll = rng.random()
        if roll < 0.1:
            word = f'"{word}"'
        elif roll < 0.15:
            word = f"({word})"
        elif roll < 0.35:
            word += str(rng.choice(PUNCT))
        parts.append(word)
    if rng.random() < 0.1:
        parts = ["..."]
    return tokenizer.encode(" " + " ".join(parts))


def window_segments(rng, tokenizer, seek: int, num_frames: int) -> list[dict]:
    """Several consecutive segments of one window, with timestamp tokens, as transcribe makes."""
    offset = seek * 160 / 16000
    n = int(rng.integers(1, 5))
    edges = np.sort(rng.integers(0, max(2, num_frames // 2), 2 * n))
    segments = []
    for k in range(n):
        a, b = int(edges[2 * k]), int(edges[2 * k + 1])
        text = [] if rng.random() < 0.05 else sentence(rng, tokenizer)
        tokens = [tokenizer.timestamp_begin + a, *text, tokenizer.timestamp_begin + b]
        segments.append(
            {"seek": seek, "start": offset + a * 0.02, "end": offset + b * 0.02, "tokens": tokens}
        )
    return segments


def assert_same_segments(mine: list[dict], theirs: list[dict]):
    """Same dicts, same numbers and number types (times are rounded; probabilities exact)."""
    for a, b in zip(mine, theirs, strict=True):
        assert a.keys() == b.keys()
        for key in ("start", "end"):
            assert a[key] == b[key] and type(a[key]) is type(b[key]), (key, a[key], b[key])
        assert len(a["words"]) == len(b["words"]), (
            [w["word"] for w in a["words"]],
            [w["word"] for w in b["words"]],
        )
        for x, y in zip(a["words"], b["words"]):
            assert x["word"] == y["word"]
            for key in ("start", "end", "probability"):
                assert x[key] == y[key] and type(x[key]) is type(y[key]), (x, y)


def encode(model: Whisper, mel: torch.Tensor) -> np.ndarray:
    """The audio features openai's find_alignment computes: its forced pass re-encodes the mel
    with SDPA disabled (features differ in the last bits from the SDPA encoder's)."""
    from whisper.model import disable_sdpa

    with torch.no_grad(), disable_sdpa():
        return model.encoder(mel[None]).numpy()


@pytest.fixture
def dtw_inputs(monkeypatch):
    """Records the cost matrices both sides hand to DTW: {"theirs": [...], "mine": [...]}."""
    seen = {"theirs": [], "mine": []}

    def recording(fn, key, to_numpy):
        def wrapped(x):
            seen[key].append(to_numpy(x).copy())
            return fn(x)

        return wrapped

    monkeypatch.setattr(oai, "dtw", recording(oai.dtw, "theirs", lambda x: x.numpy()))
    monkeypatch.setattr(ours, "dtw", recording(ours.dtw, "mine", np.asarray))
    return seen


def assert_same_matrices(seen: dict):
    """openai's -matrix and ours, bit for bit: the float32 statistics end to end."""
    assert len(seen["mine"]) == len(seen["theirs"]) > 0
    for mine, theirs in zip(seen["mine"], seen["theirs"]):
        assert same_bits(mine, theirs)
    seen["mine"].clear(), seen["theirs"].clear()


def run_both(model, tokenizer, mel, segments, num_frames, last_speech, **kwargs):
    theirs, mine = copy.deepcopy(segments), copy.deepcopy(segments)
    with torch.no_grad():
        oai.add_word_timestamps(
            segments=theirs,
            model=model,
            tokenizer=tokenizer,
            mel=mel,
            num_frames=num_frames,
            last_speech_timestamp=last_speech,
            **kwargs,
        )
    features = encode(model, mel)
    ours.add_word_timestamps(
        segments=mine,
        backend=AligningTorchBackend(model),
        tokenizer=tokenizer,
        audio_features=features,
        num_frames=num_frames,
        last_speech_timestamp=last_speech,
        torch_cpu=torch_cpu(),
        **kwargs,
    )
    return mine, theirs


MODELS = {
    "default-heads": lambda: random_model(51864, seed=1),
    "19-heads": lambda: many_heads_model(3, 8, [(l, h) for l in range(3) for h in range(8)][3:22], seed=2),
    "5-heads": lambda: many_heads_model(3, 4, [(0, 1), (1, 0), (1, 3), (2, 2), (2, 3)], seed=3),
}
FRAMES = [3000, 2345, 1001, 120, 13, 9, 7]


@pytest.mark.parametrize("name", MODELS)
def test_add_word_timestamps_matches_openai_random_model(name, tokenizer, jfk_mel, dtw_inputs, threads):
    threads(1)  # torch's OpenMP threads crawl on a shared 2-core machine; threads are tested below
    model = MODELS[name]()
    rng = np.random.default_rng(len(name))
    words = 0
    for num_frames in FRAMES * 2:
        seek = int(rng.choice([0, 3000, 123456]))
        segments = window_segments(rng, tokenizer, seek, num_frames)
        last_speech = float(rng.uniform(0, seek / 100 + 1))
        mine, theirs = run_both(model, tokenizer, jfk_mel, segments, num_frames, last_speech)
        assert_same_segments(mine, theirs)
        if any(len(s["words"]) for s in mine):
            assert_same_matrices(dtw_inputs)
        words += sum(len(s["words"]) for s in mine)
    assert words > 100


@pytest.mark.parametrize("medfilt_width, qk_scale, n_threads", [(1, 1.0, 2), (3, 1.7, 2), (7, 0.5, 1)])
def test_find_alignment_options_match_openai(
    medfilt_width, qk_scale, n_threads, tokenizer, jfk_mel, dtw_inputs, threads
):
    threads(n_threads)
    model = MODELS["5-heads"]()
    rng = np.random.default_rng(medfilt_width)
    for num_frames in (3000, 1200, 11, 5):
        text = sentence(rng, tokenizer) + sentence(rng, tokenizer)
        kwargs = dict(medfilt_width=medfilt_width, qk_scale=qk_scale)
        with torch.no_grad():
            theirs = oai.find_alignment(model, tokenizer, text, jfk_mel, num_frames, **kwargs)
        features = encode(model, jfk_mel)
        backend = AligningTorchBackend(model)
        mine = ours.find_alignment(
            backend, tokenizer, text, features, num_frames, torch_cpu=torch_cpu(), **kwargs
        )
        assert [(t.word, t.tokens, t.start, t.end, t.probability) for t in mine] == [
            (t.word, t.tokens, t.start, t.end, t.probability) for t in theirs
        ]
        assert all(type(t.start) is np.float64 and type(t.probability) is np.float64 for t in mine)
        assert_same_matrices(dtw_inputs)


def test_find_alignment_without_words(tokenizer, jfk_mel):
    model = MODELS["default-heads"]()
    backend = AligningTorchBackend(model)
    features = np.zeros((1, 1500, 64), np.float32)
    assert ours.find_alignment(backend, tokenizer, [], features, 3000) == []
    segments = [{"seek": 0, "start": 0.0, "end": 1.0, "tokens": [tokenizer.timestamp_begin]}]
    common = dict(backend=backend, tokenizer=tokenizer, audio_features=features, num_frames=3000)
    ours.add_word_timestamps(segments=segments, last_speech_timestamp=0.0, **common)
    assert segments[0]["words"] == [] and backend.kinds() == []  # no forced pass for no text
    ours.add_word_timestamps(segments=[], last_speech_timestamp=0.0, **common)


# --------------------------------------------------------------------------
# real speech on the real tiny.en


@pytest.fixture(scope="module")
def tiny_en():
    try:
        from models.whisper.weights.load import load_checkpoint

        dims, weights = load_checkpoint("tiny.en")
    except (ImportError, ValueError, OSError) as exc:
        pytest.skip(f"tiny.en checkpoint unavailable: {exc}")
    model = Whisper(dims)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    return model.eval()


def speech_clips() -> list[Path]:
    clips = [JFK]
    if SPEECH.is_dir():
        clips += sorted(SPEECH.glob("*.wav"))[:1]
    return [c for c in clips if c.exists()]


@pytest.mark.parametrize("clip", speech_clips(), ids=lambda p: p.stem)
def test_add_word_timestamps_matches_openai_tiny_en(clip, tiny_en, tokenizer, dtw_inputs, threads):
    threads(1)
    audio = load_audio(clip)
    result = oracle.transcribe(tiny_en, audio, word_timestamps=False, fp16=False, language="en")
    mel = log_mel_spectrogram(audio, padding=N_SAMPLES)
    content_frames = mel.shape[-1] - N_FRAMES
    last_speech, compared = 0.0, 0
    for seek in sorted({s["seek"] for s in result["segments"]}):
        segments = [s for s in result["segments"] if s["seek"] == seek]
        num_frames = min(N_FRAMES, content_frames - seek)
        window = pad_or_trim(mel[:, seek : seek + num_frames], N_FRAMES)
        mine, theirs = run_both(tiny_en, tokenizer, window, segments, num_frames, last_speech)
        assert_same_segments(mine, theirs)
        assert_same_matrices(dtw_inputs)
        compared += sum(len(s["words"]) for s in mine)
        last_speech = theirs[-1]["end"]
    assert compared >= 3
    if clip == JFK:
        assert [w["word"] for s in mine for w in s["words"]][:3] == [" And", " so", " my"]
