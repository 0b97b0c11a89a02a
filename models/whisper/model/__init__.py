"""Whisper as kvgraph programs: ``spec.py`` (the text decoder as a ``DecoderSpec``, the audio
encoder as IR) and ``backend.py`` (both compiled and run on MAX: ``MaxWhisperBackend``,
``load_backend``)."""
