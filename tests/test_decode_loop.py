"""kvgraph's own decode loop (``models.whisper.transcription.transcribe``) against openai-whisper.

The backend is ``TorchBackend`` (``tests/whisper_doubles.py``): openai's own torch model behind
kvgraph's backend protocol, so both sides see the same logits and every difference is the
decode loop's. Wherever openai-whisper is deterministic (T = 0: greedy, beam search with
patience and length penalty, prompts, prefixes, ``condition_on_previous_text``, clips, word
timestamps, the long-form seek) the text, segments and word times must be identical. The
same contract on MAX, for every bundled clip, is in ``test_whisper_max.py`` and
``test_word_timestamps_max.py`` (their ``transcribe`` is this loop).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import oracle
import pytest
import torch
import whisper
from whisper_clips import JFK, ROOT, SPEECH, SPEECH_CLIPS, long_clip, silence
from whisper_doubles import AligningTorchBackend, TorchBackend, random_model, torch_tiny_en

from models.whisper.audio.load import load_audio
from models.whisper.decoding.options import DecodingOptions
from models.whisper.decoding.task import DecodingTask
from models.whisper.transcription import transcribe as longform

EXACT = ("id", "seek", "start", "end", "text", "tokens", "temperature")
CLOSE = ("avg_logprob", "compression_ratio", "no_speech_prob")


@pytest.fixture(scope="module")
def tiny_en():
    torch.set_num_threads(1)
    return torch_tiny_en()


@pytest.fixture(scope="module")
def jfk():
    return load_audio(str(JFK))


def assert_identical(ours: dict, ref: dict) -> None:
    assert ours["language"] == ref["language"]
    assert ours["text"] == ref["text"]
    assert len(ours["segments"]) == len(ref["segments"])
    for a, b in zip(ours["segments"], ref["segments"]):
        assert set(a) - {"words"} == set(b) - {"words"}, (a.keys(), b.keys())
        for k in EXACT:
            assert a[k] == b[k], (k, a[k], b[k])
        for k in CLOSE:
            assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-5), (k, a[k], b[k])
        assert ("words" in a) == ("words" in b)
        for wa, wb in zip(a.get("words", []), b.get("words", [])):
            assert (wa["word"], wa["start"], wa["end"]) == (wb["word"], wb["start"], wb["end"])
            assert math.isclose(wa["probability"], wb["probability"], rel_tol=1e-4, abs_tol=1e-5)
        assert len(a.get("words", [])) == len(b.get("words", []))


def both(model, audio, backend_class=TorchBackend, **options):
    ref = oracle.transcribe(model, audio, fp16=False, **options)  # openai's, memoised on disk
    ours = longform.transcribe(backend_class(model), audio, **options)
    return ours, ref


DETERMINISTIC = [
    dict(temperature=0.0),
    dict(temperature=0.0, without_timestamps=True),
    dict(temperature=0.0, beam_size=5),
    dict(temperature=0.0, beam_size=5, patience=2.0, length_penalty=0.5),
    dict(temperature=0.0, beam_size=2, length_penalty=1.0),
    dict(temperature=0.0, initial_prompt="Kennedy's inaugural address, 1961."),
    dict(temperature=0.0, prefix="And so my"),
    dict(temperature=0.0, suppress_tokens="", suppress_blank=False),
    dict(temperature=0.0, max_initial_timestamp=None),
    dict(temperature=0.0, clip_timestamps="1.5,6,7"),
]


@pytest.mark.parametrize("options", DETERMINISTIC, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_tiny_en_jfk_identical(tiny_en, jfk, options):
    ours, ref = both(tiny_en, jfk, **options)
    assert_identical(ours, ref)


def test_a_clip_ending_past_the_recording_ends_with_it(tiny_en, jfk):
    """openai-whisper never returns for a clip whose end lies past the recording's (its seek
    stops at the recording's end, short of the clip's, and it decodes empty windows there
    forever): kvgraph takes the recording's end as the clip's, and gives what openai gives for
    that clip, which it does finish."""
    # the clips alone first: without the clamp, the decode below would never end
    clips = longform.seek_clips("1.5,60,70,80", 1100)
    assert clips == [(150, 1100), (7000, 1100)]  # the second clip: nothing left of it
    for bad in ("-1,5", "nan", "1,x"):
        with pytest.raises(ValueError, match="clip_timestamps"):
            longform.seek_clips(bad, 1100)
    end = len(jfk) / 16000  # the recording's end in seconds: 11.0 s, 1100 frames
    ref = oracle.transcribe(tiny_en, jfk, fp16=False, temperature=0.0, clip_timestamps=f"1.5,{end}")
    ours = longform.transcribe(TorchBackend(tiny_en), jfk, temperature=0.0, clip_timestamps="1.5,60")
    assert_identical(ours, ref)
    assert ref["text"]


@pytest.mark.parametrize("name", SPEECH_CLIPS)
def test_tiny_en_speech_clips_identical(tiny_en, name):
    path = SPEECH / f"{name}.wav"
    if not path.exists():
        pytest.skip(f"{path} missing")
    audio = load_audio(str(path))
    ours, ref = both(tiny_en, audio, temperature=0.0, beam_size=5, patience=1.0)
    assert_identical(ours, ref)


def test_tiny_en_long_form_identical(tiny_en, jfk):
    """Over 60 s: the seek loop's cuts, the prompt carried across windows, word times."""
    audio = long_clip(jfk)
    ours, ref = both(tiny_en, audio, AligningTorchBackend, temperature=0.0, word_timestamps=True)
    assert len(ref["segments"]) > 4
    assert_identical(ours, ref)


@pytest.mark.parametrize(
    "options",
    [
        dict(condition_on_previous_text=False),
        dict(initial_prompt="Ask not.", carry_initial_prompt=True),
        dict(hallucination_silence_threshold=0.5),
        dict(prepend_punctuations="", append_punctuations=""),
    ],
    ids=lambda o: ",".join(o),
)
def test_tiny_en_long_form_options_identical(tiny_en, jfk, options):
    audio = np.concatenate([jfk, silence(4.0), jfk[: len(jfk) // 2], silence(9.0), jfk])
    ours, ref = both(tiny_en, audio, AligningTorchBackend, temperature=0.0, word_timestamps=True, **options)
    assert_identical(ours, ref)


def test_silence_is_skipped_as_openai_does(tiny_en):
    ours, ref = both(tiny_en, silence(12.0), temperature=0.0)
    assert_identical(ours, ref)


def test_a_path_reads_the_same_as_its_samples(tiny_en, jfk):
    by_path = longform.transcribe(TorchBackend(tiny_en), str(JFK), temperature=0.0)
    by_samples = longform.transcribe(TorchBackend(tiny_en), jfk, temperature=0.0)
    assert by_path["segments"] == by_samples["segments"]


# ------------------------------------------------------------------ random models: every branch


@pytest.fixture(scope="module")
def multilingual():
    return random_model(51865, seed=1)


def test_language_detection_and_translate_task_identical(multilingual, jfk):
    mel = whisper.pad_or_trim(whisper.log_mel_spectrogram(jfk, 80), 3000)
    features = multilingual.encoder(mel[None]).detach().numpy()
    _, ref_probs = whisper.decoding.detect_language(multilingual, torch.from_numpy(features))
    task = DecodingTask(TorchBackend(multilingual), DecodingOptions(task="lang_id"))
    (ours,) = task.run(features)
    assert ours.language == max(ref_probs[0], key=ref_probs[0].get)
    assert ours.language_probs.keys() == ref_probs[0].keys()
    for code, p in ref_probs[0].items():
        assert math.isclose(ours.language_probs[code], p, rel_tol=1e-4, abs_tol=1e-6)
    opts = dict(temperature=0.0, task="translate", sample_len=12, compression_ratio_threshold=None)
    ours, ref = both(multilingual, jfk, **opts)
    assert_identical(ours, ref)


@pytest.mark.parametrize("beam_size", [None, 3])
def test_random_model_windows_identical(beam_size, jfk):
    """Garbage text, many timestamps: the segment splitting and seeking on odd token streams."""
    model = random_model(51864, seed=4)
    opts = dict(temperature=0.0, beam_size=beam_size, sample_len=24, logprob_threshold=None)
    ours, ref = both(model, np.concatenate([jfk, jfk, jfk]), **opts)
    assert_identical(ours, ref)


def test_options_refused_as_openai_refuses(tiny_en):
    backend = TorchBackend(tiny_en)
    features = np.zeros((1, 1500, 384), np.float32)
    for bad in (
        dict(beam_size=2, best_of=2),
        dict(temperature=0.0, best_of=3),
        dict(patience=1.0),
        dict(length_penalty=2.0),
    ):
        with pytest.raises(ValueError):
            DecodingTask(backend, DecodingOptions(**bad)).run(features)


def test_fallback_decisions_equal_openai_on_given_results():
    """The temperature fallback decides on a decoded window's figures as openai-whisper does."""
    from models.whisper.decoding.options import DecodingResult

    settings = longform.Settings()
    loop = longform.LongForm.__new__(longform.LongForm)
    loop.s = settings
    rng = np.random.default_rng(0)
    for _ in range(400):
        r = DecodingResult(
            audio_features=None,
            language="en",
            avg_logprob=float(rng.uniform(-2, 0)),
            no_speech_prob=float(rng.uniform(0, 1)),
            compression_ratio=float(rng.uniform(1, 3)),
        )
        needs = r.compression_ratio > 2.4 or r.avg_logprob < -1.0
        if r.no_speech_prob > 0.6 and r.avg_logprob < -1.0:
            needs = False
        assert loop.needs_fallback(r) == needs
        silent = r.no_speech_prob > 0.6 and not r.avg_logprob > -1.0
        assert loop.is_silent(r) == silent


def test_sampling_is_reproducible_under_a_seed(tiny_en, jfk):
    backend = TorchBackend(tiny_en)
    a = longform.transcribe(backend, jfk, temperature=0.8, best_of=3, seed=7, without_timestamps=True)
    b = longform.transcribe(backend, jfk, temperature=0.8, best_of=3, seed=7, without_timestamps=True)
    assert a["segments"] == [dict(s) for s in b["segments"]]


def test_the_loop_imports_neither_torch_nor_whisper():
    code = (
        "import sys\n"
        "import models.whisper.transcription.transcribe\n"
        "import models.whisper.decoding.task\n"
        "print(sorted(m for m in ('torch', 'whisper') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_window_is_encoded_once_with_language_detection(multilingual, jfk):
    """Detection reads the first 30 s, which is the first window of a longer recording: one
    encoder pass serves both (and the result is still openai's)."""
    audio = np.concatenate([jfk, jfk, jfk])  # 33 s: two windows
    backend = TorchBackend(multilingual)
    opts = dict(temperature=0.0, sample_len=6, compression_ratio_threshold=None, logprob_threshold=None)
    ours = longform.transcribe(backend, audio, **opts)
    windows = len({s["seek"] for s in ours["segments"]})
    assert backend.kinds().count("encode") == windows
    ref = oracle.transcribe(multilingual, audio, fp16=False, **opts)
    assert_identical(ours, ref)
