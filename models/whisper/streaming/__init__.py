"""Transcription of a live source: audio that is still arriving, its text printed as it is spoken.

The policy is the field's standard one, LocalAgreement-2 (Macháček, Dabre and Bojar 2023,
"Turning Whisper into Real-Time Transcription System", the ``whisper_streaming`` project): keep a
growing audio buffer, re-transcribe it every ``min_chunk_s`` seconds with word timestamps, commit
the longest prefix of words two successive transcriptions agree on, prompt Whisper with the
committed text and trim the buffer at committed segment ends.

The modules follow the data: ``source.py`` (16 kHz mono PCM from stdin or a growing file, a WAV
header skipped) → ``agreement.py`` (the policy on timed words, no model) → ``live.py``
(:class:`~models.whisper.streaming.live.LiveTranscriber`, a backend behind the policy, and
:func:`~models.whisper.streaming.live.listen`, the loop that feeds it while audio arrives).
``kvgraph listen`` (:mod:`models.whisper.apps.cli.listen`) is the command line.
"""
