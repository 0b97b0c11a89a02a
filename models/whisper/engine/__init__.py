"""Continuous batching of Whisper transcriptions: many files, one batched decoder step.

Each file's transcription is kvgraph's decode loop (:mod:`models.whisper.transcription.transcribe`),
run in its own thread over a :class:`StreamBackend`, whose ``encode`` / ``prefill`` / ``step`` /
``reorder`` calls do not compute: they are handed to one :class:`Scheduler` thread, which owns the MAX
programs and a :class:`kvgraph.slots.SlotPool` of cache rows:

- a decode (one ``DecodingTask``: a 30 s window at one temperature) *joins* with its
  prefill, which takes rows of the pool (one per beam or sample) and writes its caches
  and cross-attention K/V there;
- every decode's next-token ``step`` waiting at the same time runs as **one** call of the
  per-row step program (``KVCache(per_row=True)``: each row at its own position);
- it *leaves* when the ``DecodingTask`` returns: its rows go back to the pool.

The scheduler serves in rounds: it waits until every live stream is blocked on a call
(or ``max_wait`` passed since the first one arrived), runs all waiting single-token steps
together, then the rest (encoder windows, prefills, multi-token steps, beam reorders,
word-timestamp passes) one by one. A prefill that finds no free rows waits for a later
round. Decoding semantics stay openai-whisper's: only where the logits are computed
changes, so each file's result is a sequential ``transcribe``'s (tests check text,
segments, tokens and timestamps).

Sampling (temperature fallback) draws from each file's own NumPy generator (seeded by the
file's ``seed`` option), so a file's samples do not depend on the other files: its result
equals ``transcribe`` of that file with the same options.

Rooms: ``protocol.py`` (what an engine is: ``submit``/``close``, its errors, the defaults),
``scheduler.py``, ``streams.py``, ``batched.py`` (``BatchedTranscriber``, ``transcribe_many``),
``sequential.py`` (one request at a time, and ``make_engine``).
"""

from models.lazy import exports

__getattr__, __dir__ = exports(
    __name__,
    {
        "BatchedTranscriber": "models.whisper.engine.batched",
        "transcribe_many": "models.whisper.engine.batched",
        "audio_seconds": "models.whisper.engine.batched",
        "batchable": "models.whisper.engine.batched",
        "default_rows": "models.whisper.engine.batched",
        "Scheduler": "models.whisper.engine.scheduler",
        "MAX_WAIT_S": "models.whisper.engine.scheduler",
        "StreamBackend": "models.whisper.engine.streams",
        "TranscriptionEngine": "models.whisper.engine.protocol",
        "EngineClosed": "models.whisper.engine.protocol",
        "EngineFull": "models.whisper.engine.protocol",
        "DEFAULT_BATCH": "models.whisper.engine.protocol",
        "DEFAULT_MAX_QUEUE": "models.whisper.engine.protocol",
        "SequentialEngine": "models.whisper.engine.sequential",
        "make_engine": "models.whisper.engine.sequential",
    },
)
