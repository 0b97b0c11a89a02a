"""A request through the engine: the body read within its limit, the form checked
(:mod:`.protocol`), the audio decoded, the engine's future awaited (cancelled when the client
goes away), the result in the asked format. Starlette is imported on first use."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from concurrent.futures import Future

from models.whisper.apps.server.protocol import (
    ApiError,
    ServedModel,
    TranscriptionRequest,
    bad,
    response_body,
)
from models.whisper.audio.load import SAMPLE_RATE, AudioError, decode_audio
from models.whisper.engine.protocol import EngineClosed

#: form fields other than ``file``: small (a prompt is at most a few hundred tokens)
MAX_FIELD_BYTES = 64 * 1024
#: multipart framing and form fields allowed on top of the upload limit
FORM_OVERHEAD_BYTES = 256 * 1024

log = logging.getLogger("kvgraph.serve")


class BodyTooLarge(Exception):
    """The request body passed its limit while being read."""


class ClientGone(Exception):
    """The client disconnected before its answer."""


class RequestBody:
    """The request body read from ``receive`` (Starlette's ``request.stream()`` cannot be read
    on after its consumer stops): counted, capped at ``limit`` bytes, drained."""

    def __init__(self, request, limit: int):
        self.request, self.limit, self.seen, self.done = request, limit, 0, False

    async def _next(self) -> bytes:
        message = await self.request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        self.seen += len(chunk)
        self.done = not message.get("more_body", False)
        return chunk

    async def chunks(self):
        while not self.done:
            chunk = await self._next()
            if self.seen > self.limit:
                raise BodyTooLarge
            if chunk:
                yield chunk

    async def drain(self) -> None:
        """Read and drop the rest of a refused body (up to 4x the limit), so the client reads
        the answer rather than a reset connection."""
        while not self.done and self.seen <= 4 * self.limit:
            await self._next()


class TranscriptionServing:
    """Answers ``POST /v1/audio/transcriptions`` and ``/translations`` with ``engine``.

    ``max_upload_bytes`` bounds a request's body (plus :data:`FORM_OVERHEAD_BYTES` for the
    form's framing and fields): larger ones are read to their end (up to 4x the limit) and
    answered 413."""

    def __init__(self, engine, served: ServedModel, max_upload_bytes: int):
        self.engine, self.served = engine, served
        self.max_upload_bytes = max_upload_bytes
        self.body_limit = max_upload_bytes + FORM_OVERHEAD_BYTES

    def too_large(self) -> ApiError:
        return ApiError(
            413,
            f"request body over the upload limit of {self.max_upload_bytes / 1024 / 1024:g} MiB",
            param="file",
            code="file_too_large",
        )

    async def read_form(self, request):
        from starlette.formparsers import MultiPartException, MultiPartParser

        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise bad(
                f"expected a multipart/form-data body (got {ctype or 'no content type'!r})",
                None,
                "invalid_content_type",
            )
        body = RequestBody(request, self.body_limit)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.body_limit:
            await body.drain()
            raise self.too_large()
        parser = MultiPartParser(
            request.headers, body.chunks(), max_files=4, max_fields=32, max_part_size=MAX_FIELD_BYTES
        )
        try:
            return await parser.parse()
        except BodyTooLarge:
            await body.drain()
            raise self.too_large() from None
        except MultiPartException as e:
            await body.drain()
            raise bad(f"malformed multipart/form-data body: {e}", None, "invalid_multipart") from None

    @staticmethod
    async def wait_result(request, fut: Future):
        """The engine's result; cancels the request if the client disconnects first."""
        afut = asyncio.wrap_future(fut)

        async def disconnected():
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return

        gone = asyncio.ensure_future(disconnected())
        try:
            done, _ = await asyncio.wait({afut, gone}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        finally:
            gone.cancel()
        if afut in done:
            return afut.result()
        fut.cancel()
        afut.cancel()
        raise ClientGone

    def submit(self, audio, options: dict) -> Future:
        try:
            return self.engine.submit(audio, **options)
        except queue.Full as e:
            raise ApiError(
                503, f"server busy: {e}; retry later", code="server_busy", headers={"Retry-After": "1"}
            ) from None
        except EngineClosed:
            raise ApiError(503, "server shutting down", code="shutting_down") from None

    async def answer(self, request, task: str):
        """The response to one request of ``task`` (``transcribe`` | ``translate``); raises
        :class:`ApiError` for what the client got wrong."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse, Response

        t0 = time.perf_counter()
        form = await self.read_form(request)
        try:
            params = TranscriptionRequest(form, task, self.served)
            name = params.upload.filename or "file"
            data = await params.upload.read()
        finally:
            await form.close()
        try:
            audio = await run_in_threadpool(decode_audio, data, SAMPLE_RATE, name)
        except AudioError as e:
            raise bad(str(e), "file", "invalid_audio") from None
        del data
        fut = self.submit(audio, params.options)
        try:
            result = await self.wait_result(request, fut)
        except (ValueError, TypeError) as e:  # the options or audio refused by the decoder
            raise bad(" ".join(str(e).split()) or type(e).__name__, None, None) from None
        duration = len(audio) / SAMPLE_RATE
        body, media = response_body(result, params, duration)
        log.debug("%s %.1f s of audio in %.2f s", task, duration, time.perf_counter() - t0)
        if media is None:
            return JSONResponse(body)
        return Response(body, media_type=media)

    async def __call__(self, request, task: str):
        """:meth:`answer`, or 499 (nginx's "client closed request") when the client left."""
        from starlette.responses import Response

        try:
            return await self.answer(request, task)
        except ClientGone:
            log.info("%s: the client went away; request dropped", request.url.path)
            return Response(status_code=499)
