"""The ``kvgraph`` subcommands of the Whisper family: ``transcribe.py`` (with its options in
``options.py``), ``prepare.py``, ``serve.py``. Cheap to import: the heavy imports follow the
parsed arguments."""
