"""Voice-activity detection: which parts of a recording hold speech (issue #30).

``silero.py`` runs the Silero VAD v6 model (MIT, from the ``silero-vad`` package's data) on
onnxruntime, a block of 32 ms windows per call instead of one window per call; ``speech.py``
turns its speech probabilities into speech timestamps as silero-vad's
``get_speech_timestamps`` does, with faster-whisper's option names and defaults. Needs
``onnxruntime`` and ``onnx``; nothing here is imported until asked for.
"""
