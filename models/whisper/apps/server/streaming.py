"""A streamed transcription (``stream=true``): the engine's segments carried from its thread
into the event loop as they become final, sent as OpenAI's ``transcript.text`` events
(:mod:`.events`), and the transcription cancelled when the client hangs up.

How the engine is stopped: ``transcribe`` calls ``on_segment`` from the thread that decodes
the request (``models.whisper.transcription.transcribe.transcribe(..., on_segment=)``; the
engines pass the option through). Once the client has gone, :meth:`SegmentFeed.on_segment`
raises :class:`StreamCancelled` there; ``transcribe`` does not catch it, so the request ends
at that segment and the engine's ``finally`` gives its rows back
(``BatchedTranscriber._run``: ``backend.release()``, ``scheduler.unregister()``). A request
still waiting in the engine's queue is cancelled through its future instead. Starlette is
not imported here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future

#: what :meth:`SegmentFeed.next` returns: ``(SEGMENT, segment)``, ``(END, None)``, ``(GONE, None)``
SEGMENT, END, GONE = "segment", "end", "gone"


class StreamCancelled(Exception):
    """Raised from ``on_segment`` in the engine's thread: the client of this streamed request
    went away, so its transcription stops."""


class SegmentFeed:
    """Segments from the engine's thread to the event loop ``loop``, in order, then the end of
    the request (its future done) or the client's departure (:meth:`cancel`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.future: Future | None = None

    def on_segment(self, segment: dict) -> None:
        """``transcribe``'s hook (the engine's thread): queue what the stream sends of the
        segment (``text``, ``tokens``, ``token_logprobs``), or raise :class:`StreamCancelled`
        once the client has gone."""
        if self.cancelled.is_set():
            raise StreamCancelled("the client went away")
        sent = {
            "text": segment.get("text", ""),
            "tokens": list(segment.get("tokens") or ()),
            "token_logprobs": list(segment.get("token_logprobs") or ()),
        }
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (SEGMENT, sent))
        except RuntimeError:  # the event loop is closed: nobody is listening
            raise StreamCancelled("the server's event loop is closed") from None

    def attach(self, future: Future) -> None:
        """Follow the engine's ``future`` of this request: its end is queued after its
        segments (``call_soon_threadsafe`` runs callbacks in the order they were queued)."""
        self.future = future
        future.add_done_callback(self._finished)

    def _finished(self, future: Future) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (END, None))
        except RuntimeError:
            pass

    def cancel(self) -> bool:
        """The client went away (event loop's thread): stop the transcription. True when it
        had not ended yet."""
        if self.cancelled.is_set():
            return False
        self.cancelled.set()
        running = self.future is not None and not self.future.done()
        if self.future is not None:
            self.future.cancel()  # a request still queued is skipped; a running one stops at its next segment
        self.queue.put_nowait((GONE, None))
        return running

    async def next(self) -> tuple[str, dict | None]:
        """The next ``(SEGMENT, segment)``, ``(END, None)`` or ``(GONE, None)``."""
        if self.cancelled.is_set():
            return GONE, None
        item = await self.queue.get()
        return (GONE, None) if self.cancelled.is_set() else item


async def until_disconnected(request, gone: Callable[[], None]) -> None:
    """Wait for the client's ``http.disconnect`` (its body has been read: the next message is
    that one), then call ``gone()``."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            gone()
            return
