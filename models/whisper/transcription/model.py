"""``load_model``: a checkpoint compiled on MAX, as a model with openai-whisper's ``transcribe``."""

from __future__ import annotations

from models.whisper.model.backend import MaxWhisperBackend, load_backend


class WhisperModel:
    """A compiled Whisper: ``transcribe(audio, **options)`` returns openai-whisper's result
    dict (``text``, ``segments``, ``language``) computed on MAX."""

    def __init__(self, backend: MaxWhisperBackend):
        self.backend = backend
        self.dims = backend.dims

    def transcribe(self, audio, **options) -> dict:
        from models.whisper.transcription.transcribe import transcribe

        return transcribe(self.backend, audio, **options)

    def transcribe_many(
        self, audios, *, batch_size: int = 8, errors: str = "raise", progress=None, **options
    ):
        """``transcribe`` of each of ``audios`` (paths or 16 kHz arrays) with up to
        ``batch_size`` files decoding at once, their decoder steps batched into one MAX call
        (:mod:`models.whisper.engine`): one result per input, in order, each equal to a sequential
        ``transcribe`` of that input. ``errors="return"`` puts a failed input's exception in
        its place instead of raising it once all have finished."""
        from models.whisper.engine.batched import transcribe_many

        return transcribe_many(
            self.backend, audios, batch_size=batch_size, errors=errors, progress=progress, **options
        )

    def engine(self, batch_size: int = 8, **default_options):
        """A :class:`models.whisper.engine.batched.BatchedTranscriber` on this model: ``submit(audio,
        **options) -> Future`` of the result dict, ``close(wait=True)``."""
        from models.whisper.engine.batched import BatchedTranscriber

        return BatchedTranscriber(self.backend, batch_size=batch_size, **default_options)


def load_model(
    name_or_path="tiny.en", *, kv_cache: bool = True, compute_type: str = "float32"
) -> WhisperModel:
    """Load weights and compile encoder + decoder on MAX (cold compiles take minutes).
    ``compute_type``: ``"float32"`` (exact), ``"bfloat16"``, ``"int8"``, ``"int8_float32"``,
    ``"int8_bfloat16"``, ``"int8vocab"``, ``"int8vocab_bfloat16"`` (:mod:`models.whisper.model.compute`)."""
    return WhisperModel(load_backend(name_or_path, kv_cache=kv_cache, compute_type=compute_type))
