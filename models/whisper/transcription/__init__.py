"""A recording to text: ``transcribe.py`` (the long-form loop: windows, fallback, segments,
seeking), ``timing.py`` (word timestamps: the alignment pass, DTW), ``model.py`` (``load_model``
and ``WhisperModel``), ``writers.py`` (openai-whisper's output formats) and ``outputs.py``
(the result as files written atomically, or as text)."""
