"""Corpora beyond one machine: Whisper transcription as a Ray Data job.

``transcribe_corpus(inputs, output_dir, address=None, ...)`` lists the audio files
(``inputs.py``: paths, directories, globs, pyarrow URIs), reads and resamples them in Ray tasks
(``reading.py``), transcribes them in a pool of actors that each load the model once and run the
batching engine (``worker.py``), writes each file's outputs atomically and a manifest
(``outputs.py``), on a local Ray bound to loopback or an existing cluster (``cluster.py``); the
pipeline itself is ``ray_job.py``. ``kvgraph transcribe-corpus`` is its command line. Needs the
``ray`` extra (``pip install 'kvgraph[ray]'``); importing this package imports no Ray and no MAX.
"""

from models.lazy import exports

__getattr__, __dir__ = exports(
    __name__,
    {
        "transcribe_corpus": "models.whisper.corpus.ray_job",
        "list_audio": "models.whisper.corpus.inputs",
        "AudioRef": "models.whisper.corpus.inputs",
        "InputError": "models.whisper.corpus.inputs",
        "read_manifest": "models.whisper.corpus.outputs",
        "RayMissing": "models.whisper.corpus.cluster",
    },
)
