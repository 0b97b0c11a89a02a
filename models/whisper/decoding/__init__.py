"""openai-whisper's decoding over a kvgraph backend: ``adapter.py`` (the backend protocol and
the adapter openai's code drives) and ``startup.py`` (its imports overlapped with loading)."""
