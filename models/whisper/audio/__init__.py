"""A file, bytes or array to 16 kHz mono float32 samples (``load.py``; libsndfile, no ffmpeg)."""
