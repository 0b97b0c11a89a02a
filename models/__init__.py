"""Model loaders and helpers (Whisper weights, CTranslate2 reader, audio I/O)."""
