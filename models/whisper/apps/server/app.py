"""``kvgraph serve``: an OpenAI-compatible transcription server for Whisper on MAX.

    kvgraph serve [--model tiny.en|base|PATH] [--host 127.0.0.1] [--port 8000]
        [--batch-size N] [--max-queue N] [--max-upload-mb MB] [--api-key KEY]
        [--log-level LEVEL]

Routes (shaped as OpenAI's audio API, so its clients work unchanged with
``base_url="http://HOST:PORT/v1"``):

- ``POST /v1/audio/transcriptions``: multipart form with ``file`` (WAV, FLAC, OGG, ...: what
  libsndfile reads; no ffmpeg), ``model``, ``language``, ``prompt`` (openai-whisper's
  ``initial_prompt``), ``response_format`` (``json`` | ``text`` | ``srt`` | ``vtt`` |
  ``verbose_json``), ``temperature`` (0 to 1; openai-whisper's fallback schedule from there, as
  ``kvgraph transcribe --temperature``), ``timestamp_granularities[]`` (``segment`` | ``word``;
  with ``verbose_json``, as OpenAI requires), ``chunking_strategy`` (``auto`` or a
  ``server_vad`` object: voice activity detection, :mod:`.chunking`), ``stream`` (``true``:
  Server-Sent Events, a ``transcript.text.delta`` per segment as it is decoded, then
  ``transcript.text.done``; :mod:`.events`), ``include[]=logprobs`` (with ``json``: each
  text token's log-probability, on the deltas, the done event and the json answer).
- ``POST /v1/audio/translations``: the same without ``timestamp_granularities[]``,
  ``chunking_strategy`` and ``stream``, task ``translate`` (speech in any language to English
  text): multilingual models only.
- ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

The served model answers to its own name (``tiny.en``) and to ``whisper-1`` (the name OpenAI's
examples use); any other ``model`` is a 400. Errors are OpenAI's JSON ``{"error": {"message",
"type", "param", "code"}}``: 400 for bad parameters, unknown models and audio that cannot be
decoded (empty, truncated, not audio), 413 for a request body over the upload limit, 503 when
the engine's queue is full, 404/405 for unknown routes; an internal failure is a 500 with the
same JSON and no traceback (that goes to the server's log).

With an API key (``--api-key``, ``KVGRAPH_API_KEY``, ``create_app(api_key=)``), every route
but ``/health`` needs ``Authorization: Bearer KEY`` (what OpenAI's clients send; 401 otherwise,
:mod:`.auth`). The server listens on loopback by default; listening beyond it without a key
prints a one-line warning.

Requests are decoded by a :class:`~models.whisper.engine.TranscriptionEngine`: ``submit(audio, **options)`` returns a
``concurrent.futures.Future`` of openai-whisper's result dict and raises ``queue.Full`` when
its queue is full; ``close(wait)`` finishes what was submitted. :func:`make_engine` builds the
continuous-batching engine (:class:`models.whisper.engine.batched.BatchedTranscriber`: the requests in flight
decode together, up to ``--batch-size`` of them, 8 by default) and :class:`SequentialEngine` (one
worker thread, one request at a time) with ``--batch-size 1`` or for a backend that cannot
batch; :func:`create_app` and :func:`serve` take any engine. A
client that disconnects while its request waits in the queue has the request cancelled; one
that hangs up in the middle of a stream has its transcription stopped at its next segment.
Shutdown (Ctrl-C, SIGTERM) stops accepting connections, lets the requests in flight finish,
then closes the engine.

Importing this module is cheap (no MAX, torch or web framework): the server's imports happen
once the arguments are parsed.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable

from models.whisper.apps.server.protocol import DEFAULT_MAX_UPLOAD_MB, ApiError, ServedModel, internal_error

PROG = "kvgraph serve"


def create_app(
    engine,
    served: ServedModel,
    *,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    close_engine: bool = True,
    api_key: str | None = None,
):
    """The ASGI app (Starlette) answering OpenAI's audio routes with ``engine`` (a
    :class:`~models.whisper.engine.TranscriptionEngine`): the audio routes are
    :class:`~.serving.TranscriptionServing`'s, the model cards and ``/health`` here, every
    error OpenAI's JSON. ``max_upload_bytes`` bounds a request's body (larger: 413).
    ``close_engine``: close the engine (waiting for its requests) when the app shuts down.
    ``api_key``: every route but ``/health`` needs ``Authorization: Bearer api_key`` (None:
    open to whoever can connect)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from models.whisper.apps.server.auth import ApiKeyCheck
    from models.whisper.apps.server.serving import TranscriptionServing, log

    if api_key is not None and not api_key:
        raise ValueError("api_key: an empty key would let anyone in; give a key or None")

    serving = TranscriptionServing(engine, served, max_upload_bytes)

    async def transcriptions(request):
        return await serving(request, "transcribe")

    async def translations(request):
        return await serving(request, "translate")

    async def models(request):
        return JSONResponse({"object": "list", "data": [served.card()]})

    async def model(request):
        model_id = request.path_params["model_id"]
        if model_id not in served.names:
            raise ApiError(
                404, f"the model {model_id!r} does not exist", param="model", code="model_not_found"
            )
        return JSONResponse(served.card(model_id))

    async def health(request):
        stats = getattr(engine, "stats", None)
        body = {"status": "ok", "model": served.name}
        if callable(stats):
            body["engine"] = stats()
        return JSONResponse(body)

    @asynccontextmanager
    async def lifespan(app):
        yield
        if close_engine:
            await run_in_threadpool(engine.close, True)

    return Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
            Route("/v1/audio/translations", translations, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers=_error_handlers(log),
        lifespan=lifespan,
        middleware=[]
        if api_key is None
        else [Middleware(ApiKeyCheck, api_key=api_key, drain_limit=serving.body_limit)],
    )


def _error_handlers(log) -> dict:
    """Every error answered as OpenAI's JSON: an :class:`ApiError` as raised, Starlette's 404 and
    405, and anything else as a 500 whose traceback goes to ``log`` only."""
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    async def api_error(request, exc: ApiError):
        return error_response(exc)

    async def http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(
            ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        )

    async def server_error(request, exc: Exception):
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(internal_error(exc))

    return {ApiError: api_error, HTTPException: http_error, Exception: server_error}


# ----------------------------------------------------------------------------- running it


def bind(host: str, port: int):
    """A listening TCP socket on ``host:port`` (``port`` 0: a free one): clients can connect
    from now on, and are answered once the server runs."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    sock.set_inheritable(True)
    return sock


def url_of(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app, log_level: str):
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=30)
    return uvicorn.Server(config)


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` runs ``app`` with uvicorn on a thread, listening
    on ``host`` at a free port; leaving the block shuts it down gracefully (requests in flight
    finish, then the app's shutdown closes its engine) and joins the thread. For tests and
    benchmarks."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host, self.port, self.log_level = app, host, port, log_level
        self.url: str | None = None

    def __enter__(self) -> str:
        self.sock = bind(self.host, self.port)
        self.url = url_of(self.sock)
        self.server = _uvicorn_server(self.app, self.log_level)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="kvgraph-serve", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    engine,
    served: ServedModel,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024),
    log_level: str = "info",
    announce: Callable[[str], None] | None = None,
    api_key: str | None = None,
) -> None:
    """Serve ``engine`` on ``host:port`` until SIGINT / SIGTERM, then shut down gracefully
    (requests in flight finish; the engine is closed). ``announce(url)`` is called once the
    socket listens (default: one line on stderr). ``api_key``: see :func:`create_app`;
    without one, a ``host`` beyond loopback gets a one-line warning on stderr."""
    from models.whisper.apps.server.auth import exposure_warning

    warning = exposure_warning(PROG, host, api_key)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)
    sock = bind(host, port)
    # uvicorn shuts down gracefully on SIGINT / SIGTERM, then raises the signal again for the
    # process's own handler: a KeyboardInterrupt, or death by SIGTERM. Both are a clean stop here.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = None
    try:
        url = url_of(sock)
        app = create_app(engine, served, max_upload_bytes=max_upload_bytes, api_key=api_key)
        server = _uvicorn_server(app, log_level)
        (announce or (lambda u: _announce(served, u, api_key)))(url)
        previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
        server.run(sockets=[sock])
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _announce(served: ServedModel, url: str, api_key: str | None) -> None:
    access = "API key required" if api_key else "no API key"
    print(
        f"{PROG}: {served.name} on {url}/v1 (POST /v1/audio/transcriptions; OpenAI clients: "
        f"base_url={url}/v1; {access}); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )


class _Terminated(Exception):
    pass


def _terminated(signum, frame):
    raise _Terminated
