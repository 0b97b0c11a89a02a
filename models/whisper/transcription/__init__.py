"""A recording to text: ``transcribe.py`` (the long-form transcription on a backend),
``model.py`` (``load_model`` and ``WhisperModel``), ``outputs.py`` (the result as txt, vtt,
srt, tsv or json, files written atomically)."""
