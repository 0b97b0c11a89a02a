"""The ``models`` package's kvgraph plugin: Whisper's named specs, ``kvgraph transcribe``,
``kvgraph prepare`` and ``kvgraph serve``.

Declared in pyproject.toml as the entry point ``whisper = "models.whisper.plugin:register"`` of the
group ``kvgraph.plugins``, which :mod:`kvgraph.plugins` discovers; :func:`register` can also be
applied explicitly (``kvgraph.plugins.use(models.whisper.plugin.register)``). Registering imports
nothing heavy: a spec is made, and a command's module imported, on first use.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

# openai-whisper's published ModelDimensions (the "dims" of each checkpoint).
WHISPER_DIMS = {
    "whisper-tiny.en": dict(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=384,
        n_audio_head=6,
        n_audio_layer=4,
        n_vocab=51864,
        n_text_ctx=448,
        n_text_state=384,
        n_text_head=6,
        n_text_layer=4,
    ),
    "whisper-base": dict(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=512,
        n_audio_head=8,
        n_audio_layer=6,
        n_vocab=51865,
        n_text_ctx=448,
        n_text_state=512,
        n_text_head=8,
        n_text_layer=6,
    ),
}


def _whisper_spec(name: str):
    from models.whisper.model.spec import spec_from_dims

    return spec_from_dims(SimpleNamespace(**WHISPER_DIMS[name]))


def _transcribe(argv: list[str]) -> int:
    from models.whisper.apps.cli import transcribe

    return transcribe.main(argv)


def _prepare(argv: list[str]) -> int:
    from models.whisper.apps.cli import prepare

    return prepare.main(argv)


def _serve(argv: list[str]) -> int:
    from models.whisper.apps.cli import serve

    return serve.main(argv)


def _listen(argv: list[str]) -> int:
    from models.whisper.apps.cli import listen

    return listen.main(argv)


def _transcribe_corpus(argv: list[str]) -> int:
    from models.whisper.apps.cli import corpus

    return corpus.main(argv)


def register(registry) -> None:
    """Register the Whisper decoder specs (``whisper-tiny.en``, ``whisper-base``) and the
    ``transcribe`` command (arguments forwarded untouched to ``models.whisper.apps.cli.transcribe.main``)
    with a :class:`kvgraph.plugins.Registry`."""
    for name in WHISPER_DIMS:
        registry.add_spec(name, partial(_whisper_spec, name))
    registry.add_command(
        "transcribe",
        _transcribe,
        help="transcribe audio with Whisper on MAX (arguments go to models.whisper.apps.cli.transcribe)",
    )
    registry.add_command(
        "prepare", _prepare, help="compile Whisper models' MAX programs ahead of time into the program store"
    )
    registry.add_command(
        "serve",
        _serve,
        help="serve Whisper behind OpenAI's audio API (POST /v1/audio/transcriptions); needs the 'serve' extra",
    )
    registry.add_command(
        "listen",
        _listen,
        help="transcribe a live source (16 kHz mono PCM on stdin or a growing file) as it is spoken",
    )
    registry.add_command(
        "transcribe-corpus",
        _transcribe_corpus,
        help="transcribe a corpus (files, directories, globs, URIs) as a Ray Data job; needs the 'ray' extra",
    )
