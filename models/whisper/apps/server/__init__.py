"""``kvgraph serve``'s HTTP side: ``protocol.py`` (OpenAI's audio API: fields, checks, response
formats, errors), ``serving.py`` (a request through the engine), ``app.py`` (the routes and
running them). Cheap to import: Starlette and uvicorn are imported when an app is made."""

from models.lazy import exports

__getattr__, __dir__ = exports(
    __name__,
    {
        "create_app": "models.whisper.apps.server.app",
        "serve": "models.whisper.apps.server.app",
        "bind": "models.whisper.apps.server.app",
        "url_of": "models.whisper.apps.server.app",
        "BackgroundServer": "models.whisper.apps.server.app",
        "PROG": "models.whisper.apps.server.app",
        "ApiError": "models.whisper.apps.server.protocol",
        "ServedModel": "models.whisper.apps.server.protocol",
        "DEFAULT_MAX_UPLOAD_MB": "models.whisper.apps.server.protocol",
        "TranscriptionEngine": "models.whisper.engine.protocol",
        "EngineClosed": "models.whisper.engine.protocol",
        "EngineFull": "models.whisper.engine.protocol",
        "DEFAULT_BATCH": "models.whisper.engine.protocol",
        "DEFAULT_MAX_QUEUE": "models.whisper.engine.protocol",
        "SequentialEngine": "models.whisper.engine.sequential",
        "make_engine": "models.whisper.engine.sequential",
    },
)
