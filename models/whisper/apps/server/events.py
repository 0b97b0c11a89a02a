"""OpenAI's transcription stream as this server sends it: Server-Sent Events whose ``data`` is
one JSON event each (``stream=true`` on ``POST /v1/audio/transcriptions``).

The events, as OpenAI's API reference documents them ("Transcription streaming events") and
as the official ``openai`` Python client parses them (``openai.types.audio.
TranscriptionTextDeltaEvent`` / ``TranscriptionTextDoneEvent``, 3.57):

- ``{"type": "transcript.text.delta", "delta": str}``: text added, one per decoded segment;
- ``{"type": "transcript.text.done", "text": str, "usage": {"type": "tokens", "input_tokens",
  "input_token_details": {"audio_tokens", "text_tokens"}, "output_tokens", "total_tokens"}}``:
  the whole text, last;
- with ``include[]=logprobs``, both also carry ``"logprobs": [{"token": str, "logprob": float,
  "bytes": [int]}, ...]``: the tokens of the delta's text (of the whole text for ``done``);
  the non-streamed ``json`` answer carries the same list beside its ``text``
  (``openai.types.audio.Transcription.logprobs``).
- an error after the stream began: ``{"error": {"message", "type", "param", "code"}}``, which
  the ``openai`` client raises as ``APIError``.

OpenAI sends ``data:`` lines only (no ``event:`` field, no ``[DONE]``). Plain Python."""

from __future__ import annotations

import json
import math

#: Whisper's encoder: one audio position per 20 ms (1500 per 30 s window)
AUDIO_TOKENS_PER_SECOND = 50
MEDIA_TYPE = "text/event-stream"
#: no caching, no proxy buffering (nginx honours X-Accel-Buffering)
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: dict) -> bytes:
    """One Server-Sent Event carrying ``event`` as JSON (one line: JSON escapes newlines)."""
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def delta_event(text: str, logprobs: list[dict] | None = None) -> dict:
    event = {"type": "transcript.text.delta", "delta": text}
    if logprobs is not None:
        event["logprobs"] = logprobs
    return event


def done_event(text: str, usage: dict, logprobs: list[dict] | None = None) -> dict:
    event = {"type": "transcript.text.done", "text": text, "usage": usage}
    if logprobs is not None:
        event["logprobs"] = logprobs
    return event


class TokenLogprobs:
    """OpenAI's ``logprobs`` entries of a segment's text tokens: ``seg["tokens"]`` with
    ``seg["token_logprobs"]`` (``transcribe(..., token_logprobs=True)``). The tokens are
    those the text is decoded from: below the end-of-text token, so timestamps and the other
    special tokens are left out as the text leaves them out. ``bytes``: the token's own bytes
    (tiktoken's ``decode_single_token_bytes``); ``token``: those bytes as UTF-8, a character
    split between tokens replaced by U+FFFD. ``tokenizer``: the served model's
    (:func:`models.whisper.decoding.tokenizer.get_tokenizer`)."""

    def __init__(self, tokenizer):
        self.encoding, self.eot = tokenizer.encoding, tokenizer.eot
        self.memo: dict[int, tuple[str, list[int]]] = {}

    def token(self, token: int) -> tuple[str, list[int]]:
        if token not in self.memo:
            raw = self.encoding.decode_single_token_bytes(token)
            self.memo[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self.memo[token]

    def entries(self, segment: dict) -> list[dict]:
        """The entries of ``segment``'s text tokens ([] when it has no ``token_logprobs``)."""
        out = []
        for token, logprob in zip(segment.get("tokens") or (), segment.get("token_logprobs") or ()):
            if token < self.eot:
                text, raw = self.token(token)
                out.append({"token": text, "logprob": logprob, "bytes": raw})
        return out

    def of_result(self, result: dict) -> list[dict]:
        """The entries of every segment of ``result``, in order (the whole text's)."""
        return [e for seg in result.get("segments", ()) for e in self.entries(seg)]


def token_usage(duration: float, prompt_tokens: int, output_tokens: int) -> dict:
    """OpenAI's token usage for a streamed transcription: the audio's encoder positions
    (:data:`AUDIO_TOKENS_PER_SECOND`, rounded up) and the prompt's tokens in, the
    transcript's tokens (text and timestamps, as decoded) out."""
    audio = math.ceil(duration * AUDIO_TOKENS_PER_SECOND)
    return {
        "type": "tokens",
        "input_tokens": audio + prompt_tokens,
        "input_token_details": {"audio_tokens": audio, "text_tokens": prompt_tokens},
        "output_tokens": output_tokens,
        "total_tokens": audio + prompt_tokens + output_tokens,
    }


class DeltaText:
    """Segment texts as deltas whose concatenation is the stripped transcript (what the
    non-streamed ``json`` answers): the first delta starts at the first non-space character
    and trailing whitespace is held back until more text follows it."""

    def __init__(self):
        self.started = False
        self.held = ""
        self.sent: list[str] = []

    def push(self, text: str) -> str:
        """The delta to send for a segment's ``text`` ("" when nothing is to be sent yet)."""
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        delta, self.held = self.held + body, text[len(body) :]
        self.sent.append(delta)
        return delta

    @property
    def text(self) -> str:
        return "".join(self.sent)
