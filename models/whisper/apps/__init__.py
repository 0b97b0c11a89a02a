"""What users run: ``cli/`` (``kvgraph transcribe``, ``prepare``, ``serve``) and ``server/``
(OpenAI's audio API over HTTP). ``errors.py``: how they report a failure. Each imports the
library, never another app's private names."""
