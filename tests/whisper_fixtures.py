"""Session-wide Whisper models for the MAX tests.

Every loader is memoized at module level, so each MAX model is compiled/loaded
once per test session even though the fixtures are imported into several test
modules (pytest would otherwise register one session fixture per module).

Use in a test module with ``from whisper_fixtures import *  # noqa: F401,F403``.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
from whisper_clips import JFK

from models.whisper.model.backend import ALL_PROGRAMS

__all__ = [
    "tiny_backend",
    "tiny_model",
    "tiny_backend_nocache",
    "torch_tiny",
    "jfk_audio",
    "jfk_mel",
    "base_model",
    "torch_base",
    "fixture_loader",
    "tiny_backend_bf16",
]


@functools.cache
def _checkpoint(name: str):
    from models.whisper import load_checkpoint

    return load_checkpoint(name)


@functools.cache
def _backend_checkpoint(name: str):
    """The checkpoint as ``models.whisper.load_backend`` reads it (float16 weights kept), so the
    session's programs are the ones `kvgraph transcribe` and `kvgraph serve` processes load
    (the same store keys, the same MAX programs)."""
    from models.whisper import load_checkpoint

    return load_checkpoint(name, keep_float16=True)


@functools.cache
def _max_backend(name: str, kv_cache: bool):
    from models.whisper import MaxWhisperBackend
    from models.whisper.weights.alignment_heads import load_alignment_heads

    if not kv_cache and "full" in PRELOAD.get(name, ()):
        _max_backend(name, True)  # compiles the "full" program this backend runs (with the rest)
    dims, weights = _backend_checkpoint(name)
    return MaxWhisperBackend(
        dims,
        weights,
        kv_cache=kv_cache,
        alignment_heads=load_alignment_heads(name, dims),
        preload=PRELOAD.get(name, ()) if kv_cache else (),
    )


#: Programs compiled with a model's first ones, in one MAX compile. tiny.en's: every program
#: the tests run (batching's per-row step, word timestamps' scores, the kv_cache=False
#: backend's full sequence, and the GEMM step), the Module `kvgraph prepare --all-programs`
#: compiles, so its subprocess in a store of its own finds it in MAX's cache; CLI and server
#: subprocesses find each program through its link in the program store. base's: word
#: timestamps.
PRELOAD = {"tiny.en": ALL_PROGRAMS, "base": ("alignment",)}


@functools.cache
def _torch_model(name: str):
    import torch
    import whisper
    from whisper.model import Whisper

    dims, weights = _checkpoint(name)
    model = Whisper(dims)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])  # as whisper.load_model(name) does
    return model.float().eval()


@functools.cache
def _jfk_audio():
    from models.whisper.audio.load import load_audio

    return load_audio(str(JFK))


def fixture_loader(model_name: str, kv_cache: bool = True):
    """A ``load_backend`` for ``models.whisper.apps.cli.transcribe.main`` that hands out the
    session's compiled backends instead of compiling again."""
    return _max_backend(model_name, kv_cache)


def _needs(name: str):
    try:
        _checkpoint(name)
    except ImportError as e:  # WeightsNotInstalledError
        pytest.skip(f"{name} weights not installed: {e}")


@pytest.fixture(scope="session")
def tiny_backend():
    _needs("tiny.en")
    return _max_backend("tiny.en", True)


@functools.cache
def _bf16_backend(name: str, mode: str = "bfloat16"):
    _max_backend(name, True)  # float32's programs, held in this process: int8's encoder, bfloat16's decoder
    with _in_tests_store():
        if mode in MODES_TOGETHER:
            return _modes_together(name)[mode]
        if mode == "bfloat16":
            _modes_together(name)  # its encoder is theirs (its decoder float32's)
        return _backend_of_mode(name, mode)


@functools.cache
def _tests_store():
    """The program store the compute types' backends load from and compile into: the tests'
    own, beside the default one. MODES_TOGETHER's programs are compiled as one MAX Module, and
    MAX loads a Module whole: in the default store they would serve every later one-mode
    process on this machine (`kvgraph transcribe --compute_type int8`, a benchmark) with all
    their modes' programs and weights (int8: 508 against 430 MB on Zen 5, 2026-12-07)."""
    from kvgraph.store import ProgramStore, default_root

    root = default_root()
    return (
        ProgramStore(root / "tests-compute-types") if root is not None else ProgramStore(None, enabled=False)
    )


@contextlib.contextmanager
def _in_tests_store():
    """Programs loaded inside come from (and compile into) :func:`_tests_store`."""
    from kvgraph.max import runtime

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "default_store", _tests_store)
        yield


def _backend_of_mode(name: str, mode: str, defer: bool = False):
    from models.whisper import MaxWhisperBackend
    from models.whisper.weights.alignment_heads import load_alignment_heads

    _needs(name)
    dims, weights = _backend_checkpoint(name)
    return MaxWhisperBackend(
        dims, weights, alignment_heads=load_alignment_heads(name, dims), compute_type=mode, defer=defer
    )


#: Compute types whose new programs (the two int8 decoders, the bfloat16 encoder) the tests
#: compile in one MAX call: a further graph in a call costs a fraction of a call of its own.
#: (int8's and int8vocab's programs are these decoders with float32's encoder; bfloat16's are
#: this encoder with float32's decoder.)
MODES_TOGETHER = ("int8_bfloat16", "int8vocab_bfloat16")


@functools.cache
def _modes_together(name: str) -> dict:
    """``{mode: backend}`` for MODES_TOGETHER, their programs compiled in one MAX call."""
    from kvgraph.max.runtime import load_programs

    backends = {m: _backend_of_mode(name, m, defer=True) for m in MODES_TOGETHER}
    load_programs([r for b in backends.values() for r in b.pending_requests()])  # one shared encoder
    for b in backends.values():
        b.finish_loading()  # from the in-process cache
    return backends


@pytest.fixture(scope="session")
def tiny_backend_bf16():
    """tiny.en with ``compute_type="bfloat16"``: its encoder program compiled with the int8
    modes' decoders (MODES_TOGETHER), the decoder's programs those of :func:`tiny_backend` (the
    same store keys)."""
    _needs("tiny.en")
    return _bf16_backend("tiny.en")


@pytest.fixture(scope="session")
def tiny_backend_nocache():
    _needs("tiny.en")
    return _max_backend("tiny.en", False)


@pytest.fixture(scope="session")
def tiny_model(tiny_backend):
    from models.whisper import WhisperModel

    return WhisperModel(tiny_backend)


@pytest.fixture(scope="session")
def torch_tiny():
    _needs("tiny.en")
    return _torch_model("tiny.en")


@pytest.fixture(scope="session")
def base_model():
    from models.whisper import WhisperModel

    _needs("base")
    return WhisperModel(_max_backend("base", True))


@pytest.fixture(scope="session")
def torch_base():
    _needs("base")
    return _torch_model("base")


@pytest.fixture(scope="session")
def jfk_audio():
    return _jfk_audio()


@pytest.fixture(scope="session")
def jfk_mel(jfk_audio):
    """openai's log-mel of the 30 s padded JFK clip, torch f32[80, 3000]."""
    import whisper

    return whisper.log_mel_spectrogram(whisper.pad_or_trim(jfk_audio))
