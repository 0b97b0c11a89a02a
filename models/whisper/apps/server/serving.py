"""A request through the engine: the body read within its limit, the form checked
(:mod:`.protocol`), the audio decoded, the engine's future awaited (cancelled when the client
goes away), the result in the asked format; with ``stream=true``, the segments sent as
OpenAI's ``transcript.text`` events as they are decoded (:mod:`.streaming`, :mod:`.events`).
Starlette is imported on first use."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from concurrent.futures import Future

from models.whisper.apps.server.events import (
    HEADERS,
    MEDIA_TYPE,
    DeltaText,
    TokenLogprobs,
    delta_event,
    done_event,
    sse,
    token_usage,
)
from models.whisper.apps.server.protocol import (
    ApiError,
    ServedModel,
    TranscriptionRequest,
    bad,
    internal_error,
    refused,
    response_body,
)
from models.whisper.apps.server.streaming import END, GONE, SEGMENT, SegmentFeed, until_disconnected
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
        self._tokenizer = self._token_logprobs = None

    @property
    def tokenizer(self):
        """The served model's tokenizer (built on first use)."""
        if self._tokenizer is None:
            from models.whisper.decoding.tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer(self.served.multilingual)
        return self._tokenizer

    @property
    def token_logprobs(self) -> TokenLogprobs:
        """``include[]=logprobs``' entries of segments (built on first use)."""
        if self._token_logprobs is None:
            self._token_logprobs = TokenLogprobs(self.tokenizer)
        return self._token_logprobs

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
        prompt = params.options.get("initial_prompt")
        if prompt:  # refused before the upload is decoded, naming the API's field
            try:
                self.tokenizer.encode_text(" " + prompt.strip(), "prompt")
            except ValueError as e:
                raise bad(str(e), "prompt") from None
        try:
            audio = await run_in_threadpool(decode_audio, data, SAMPLE_RATE, name)
        except AudioError as e:
            raise bad(str(e), "file", "invalid_audio") from None
        del data
        if params.stream:
            return await self.stream(request, audio, params)
        fut = self.submit(audio, params.options)
        try:
            result = await self.wait_result(request, fut)
        except (ValueError, TypeError) as e:  # the options or audio refused by the decoder
            raise refused(e) from None
        duration = len(audio) / SAMPLE_RATE
        logprobs = self.token_logprobs.of_result(result) if params.logprobs else None
        body, media = response_body(result, params, duration, logprobs)
        log.debug("%s %.1f s of audio in %.2f s", task, duration, time.perf_counter() - t0)
        if media is None:
            return JSONResponse(body)
        return Response(body, media_type=media)

    async def stream(self, request, audio, params: TranscriptionRequest):
        """The streamed answer (``stream=true``): submitted with ``on_segment``; the response
        starts with the first segment (a request that fails before any text is answered with
        the usual error JSON and status), then one ``transcript.text.delta`` per segment and
        ``transcript.text.done`` (each with ``logprobs`` when ``include[]=logprobs``). A
        client that hangs up cancels the transcription."""
        from starlette.responses import StreamingResponse

        feed = SegmentFeed(asyncio.get_running_loop())
        feed.attach(self.submit(audio, {**params.options, "on_segment": feed.on_segment}))
        watcher = asyncio.ensure_future(until_disconnected(request, lambda: self.hang_up(request, feed)))
        try:
            first = await feed.next()
            if first[0] == GONE:
                raise ClientGone
            if first[0] == END:
                self.result_of(feed.future)  # raises the request's failure as its HTTP error
        except BaseException:
            watcher.cancel()
            self.hang_up(request, feed)
            raise
        body = self.events(request, feed, first, watcher, params, len(audio) / SAMPLE_RATE)
        return StreamingResponse(body, media_type=MEDIA_TYPE, headers=HEADERS)

    async def events(self, request, feed: SegmentFeed, item, watcher, params, duration: float):
        """The stream's Server-Sent Events from ``item`` (the first of ``feed``) on. However
        it ends (done, failed, the client gone, the server cancelling it), the watcher stops
        and a transcription still running is cancelled. With ``include[]=logprobs`` a delta
        carries the text tokens of the segments it sends (one held back as whitespace goes
        with the next delta); ``done`` carries the whole text's."""
        deltas = DeltaText()
        pending: list[dict] = []  # logprob entries not sent yet
        sent = 0  # logprob entries sent
        try:
            while item[0] == SEGMENT:
                delta = deltas.push(item[1]["text"])
                if params.logprobs:
                    pending += self.token_logprobs.entries(item[1])
                if delta:
                    yield sse(delta_event(delta, pending if params.logprobs else None))
                    sent, pending = sent + len(pending), []
                item = await feed.next()
            if item[0] == GONE:
                return
            try:
                result = self.result_of(feed.future)
            except ApiError as e:
                yield sse(e.body())
                return
            except Exception as e:  # noqa: BLE001 - the stream's failure; the server goes on
                log.error("internal error in a stream on %s", request.url.path, exc_info=e)
                yield sse(internal_error(e).body())
                return
            text = result.get("text", "").strip()
            logprobs = self.token_logprobs.of_result(result) if params.logprobs else None
            if text.startswith(deltas.text) and text != deltas.text:  # an engine without on_segment
                yield sse(
                    delta_event(text[len(deltas.text) :], None if logprobs is None else logprobs[sent:])
                )
            elif text != deltas.text:  # a character split between two segments' tokens
                log.warning("streamed deltas %r differ from the transcript %r", deltas.text, text)
            usage = token_usage(duration, self.prompt_tokens(params), self.output_tokens(result))
            yield sse(done_event(text, usage, logprobs))
        finally:
            watcher.cancel()
            self.hang_up(request, feed)

    @staticmethod
    def hang_up(request, feed: SegmentFeed) -> None:
        """Cancel ``feed``'s transcription if it has not ended (the client went away, or the
        server is cancelling the response); logged once."""
        if feed.cancel():
            log.info("%s: the client hung up; its stream's transcription is cancelled", request.url.path)

    @staticmethod
    def result_of(fut: Future) -> dict:
        """The finished ``fut``'s result; a failure the request caused as its 400."""
        try:
            return fut.result()
        except (ValueError, TypeError) as e:
            raise refused(e) from None

    def prompt_tokens(self, params: TranscriptionRequest) -> int:
        """Tokens of the request's prompt, as ``transcribe`` encodes it."""
        prompt = params.options.get("initial_prompt")
        if not prompt:
            return 0
        return len(self.tokenizer.encode_text(" " + prompt.strip(), "prompt"))

    @staticmethod
    def output_tokens(result: dict) -> int:
        """Tokens the decoder emitted for the transcript's segments (text and timestamps)."""
        return sum(len(seg.get("tokens", ())) for seg in result.get("segments", ()))

    async def __call__(self, request, task: str):
        """:meth:`answer`, or 499 (nginx's "client closed request") when the client left."""
        from starlette.responses import Response

        try:
            return await self.answer(request, task)
        except ClientGone:
            log.info("%s: the client went away; request dropped", request.url.path)
            return Response(status_code=499)
