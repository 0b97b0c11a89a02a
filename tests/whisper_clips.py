"""Audio clips and result comparisons shared by the Whisper tests (no MAX import)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JFK = ROOT / "examples" / "jfk.wav"
#: recorded telephone prompts (8 kHz; credits in tests/data/speech/README.md)
SPEECH = ROOT / "tests" / "data" / "speech"
SPEECH_CLIPS = ("basic-pbx-ivr-main", "demo-nogo")
SAMPLE_RATE = 16000
JFK_TEXT = (
    "And so my fellow Americans ask not what your country can do for you ask what you can do for your country"
)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (for comparing transcripts)."""
    return re.findall(r"[a-z0-9']+", text.lower())


JFK_WORDS = words(JFK_TEXT)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)


def low_noise(seconds: float, amplitude: float = 1e-3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(round(seconds * SAMPLE_RATE)))).astype(np.float32)


def long_clip(jfk: np.ndarray) -> np.ndarray:
    """> 60 s of real speech: JFK repeated with pauses, plus copies resampled to
    a different rate (played back faster / slower)."""
    import soxr

    faster = soxr.resample(jfk, SAMPLE_RATE, int(SAMPLE_RATE * 0.8)).astype(np.float32)
    slower = soxr.resample(jfk, SAMPLE_RATE, int(SAMPLE_RATE * 1.15)).astype(np.float32)
    clip = np.concatenate(
        [jfk, silence(2.0), faster, silence(3.5), jfk, silence(1.3), slower, silence(2.2), jfk, silence(1.0)]
    )
    assert clip.shape[0] / SAMPLE_RATE > 60
    return clip


EXACT_SEGMENT_KEYS = ("id", "seek", "start", "end", "text", "tokens", "temperature")
FLOAT_SEGMENT_KEYS = ("avg_logprob", "compression_ratio", "no_speech_prob")


def assert_same_result(ours: dict, ref: dict, *, atol: float = 1e-3) -> None:
    """openai-whisper result dicts equal: language, text, and every segment's
    exact keys; float statistics within ``atol`` (MAX and torch differ in the
    last bits of the logits)."""
    assert ours["language"] == ref["language"]
    assert ours["text"] == ref["text"]
    assert len(ours["segments"]) == len(ref["segments"]), (
        [s["text"] for s in ours["segments"]],
        [s["text"] for s in ref["segments"]],
    )
    for a, b in zip(ours["segments"], ref["segments"]):
        assert set(b) <= set(a)
        for k in EXACT_SEGMENT_KEYS:
            assert a[k] == b[k], (k, a, b)
        for k in FLOAT_SEGMENT_KEYS:
            assert math.isclose(a[k], b[k], rel_tol=0, abs_tol=atol), (k, a[k], b[k])


def assert_same_words(ours: dict, ref: dict, *, atol: float = 1e-3) -> None:
    """openai-whisper results with ``word_timestamps=True`` equal: :func:`assert_same_result`
    (segment times are refined by the words), and every segment's words: the same text,
    start and end (exact: 20 ms DTW steps rounded to 0.01 s), probability within ``atol``."""
    assert_same_result(ours, ref, atol=atol)
    for a, b in zip(ours["segments"], ref["segments"]):
        assert [w["word"] for w in a["words"]] == [w["word"] for w in b["words"]], (a["text"], b["text"])
        for wa, wb in zip(a["words"], b["words"]):
            assert set(wa) == set(wb) == {"word", "start", "end", "probability"}
            assert (wa["start"], wa["end"]) == (wb["start"], wb["end"]), (wa, wb)
            assert math.isclose(wa["probability"], wb["probability"], rel_tol=0, abs_tol=atol), (wa, wb)


def word_error_rate(reference: list[str], hypothesis: list[str]) -> float:
    """Word edits (substitutions, insertions, deletions) over the reference's length."""
    prev = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        cur = [i] + [0] * len(hypothesis)
        for j, h in enumerate(hypothesis, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / max(1, len(reference))
