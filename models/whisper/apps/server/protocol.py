"""OpenAI's audio API as this server speaks it: the request's fields and their checks, the
options they become for ``transcribe``, the response formats, and the errors (OpenAI's JSON).
Plain Python: no web framework, no model."""

from __future__ import annotations

import math
import time
from typing import Any

from models.whisper.apps.server.chunking import CHUNKING_PREFIX, ChunkingError, chunking_options

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
#: names every served model also answers to (OpenAI's examples say ``model="whisper-1"``)
MODEL_ALIASES = ("whisper-1",)
#: OpenAI's own upload limit
DEFAULT_MAX_UPLOAD_MB = 25.0


class ApiError(Exception):
    """An error answered as OpenAI's JSON: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> ApiError:
    """A 400 (OpenAI's ``invalid_request_error``) naming the parameter at fault."""
    return ApiError(400, message, param=param, code=code)


def refused(e: Exception) -> ApiError:
    """The 400 for options or audio the decoder refused (its ValueError / TypeError)."""
    return bad(" ".join(str(e).split()) or type(e).__name__, None, None)


def internal_error(e: BaseException) -> ApiError:
    """The 500 for a failure of the server's own (its traceback goes to the log only)."""
    return ApiError(
        500, f"internal server error ({type(e).__name__}); see the server's log", code="internal_error"
    )


#: fields read from the form; others are refused as OpenAI refuses them
_TRANSCRIPTION_FIELDS = frozenset(
    {
        "file",
        "model",
        "language",
        "prompt",
        "response_format",
        "temperature",
        "timestamp_granularities[]",
        "timestamp_granularities",
        "stream",
        "include[]",
        "include",
        "chunking_strategy",
    }
)
_TRANSLATION_FIELDS = frozenset({"file", "model", "prompt", "response_format", "temperature", "stream"})
#: what ``stream=true`` answers in (the events carry the text only)
STREAM_FORMATS = ("json", "text")


def _one(form, name: str) -> str | None:
    values = form.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise bad(f"parameter '{name}' given {len(values)} times", name)
    value = values[0]
    if not isinstance(value, str):
        raise bad(f"parameter '{name}' must be a form field, not a file", name)
    return value


def _language_code(language: str | None) -> str | None:
    if language is None or not language.strip():
        return None
    from models.whisper.decoding.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

    lang = language.strip().lower()
    if lang in LANGUAGES:
        return lang
    if lang in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[lang]
    raise bad(f"unknown language {language!r} (an ISO-639-1 code such as 'en', or a name)", "language")


def _temperatures(value: str | None) -> tuple[float, ...]:
    """openai-whisper's fallback schedule from ``value`` up to 1.0 by 0.2 (OpenAI: "If set to
    0, the model will use log probability to automatically increase the temperature until
    certain thresholds are hit"); its default (0) equals ``whisper.transcribe``'s."""
    if value is None or value.strip() == "":
        t = 0.0
    else:
        try:
            t = float(value)
        except ValueError:
            raise bad(f"temperature must be a number between 0 and 1, got {value!r}", "temperature") from None
        if not (0.0 <= t <= 1.0):
            raise bad(f"temperature must be between 0 and 1, got {value!r}", "temperature")
    import numpy as np

    return tuple(round(float(x), 6) for x in np.arange(t, 1.0 + 1e-6, 0.2)) or (t,)


class TranscriptionRequest:
    """A transcription or translation request read from its form (``form.getlist``,
    ``form.keys``, ``form.multi_items``: Starlette's ``FormData``) and checked against the
    served model: ``upload`` (the file), ``response_format``, ``granularities``, ``task`` and
    ``options`` (``transcribe``'s keyword arguments). Raises :class:`ApiError` naming the
    parameter at fault."""

    def __init__(self, form, task: str, served: ServedModel):
        self.task = task
        self.upload = _upload(form, task)
        _check_model(_one(form, "model"), served)
        self.response_format = _response_format(_one(form, "response_format"))
        self.stream = _stream(_one(form, "stream"), task, self.response_format)
        self.logprobs = _logprobs(form, self.response_format)
        self.granularities = _granularities(form, self.response_format)
        language = _language_code(_one(form, "language")) if task == "transcribe" else None
        _check_language(language, task, served)
        options: dict[str, Any] = {"temperature": _temperatures(_one(form, "temperature"))}
        if self.logprobs:
            options["token_logprobs"] = True
        if task == "translate":
            options["task"] = "translate"
        if language is not None:
            options["language"] = language
        prompt = _one(form, "prompt")
        if prompt:
            options["initial_prompt"] = prompt
        if "word" in self.granularities:
            options["word_timestamps"] = True
        if task == "transcribe":
            try:
                options.update(chunking_options(form))
            except ChunkingError as e:
                raise bad(str(e), "chunking_strategy") from None
        self.options = options


def _upload(form, task: str):
    """The one uploaded file; refuses a form with fields the task does not take."""
    allowed = _TRANSCRIPTION_FIELDS if task == "transcribe" else _TRANSLATION_FIELDS
    files = form.getlist("file")
    if not files:
        others = [k for k, v in form.multi_items() if not isinstance(v, str)]
        hint = f" (the upload came as {others[0]!r})" if others else ""
        raise bad(f"missing required parameter 'file': the audio file to transcribe{hint}", "file", None)
    if len(files) > 1:
        raise bad(f"parameter 'file' given {len(files)} times", "file")
    if isinstance(files[0], str):
        raise bad("parameter 'file' must be a file upload (multipart/form-data)", "file")
    for key in form.keys():
        if key not in allowed and not (task == "transcribe" and key.startswith(CHUNKING_PREFIX)):
            raise bad(f"unrecognized request argument supplied: {key}", key, "unknown_parameter")
    return files[0]


def _stream(value: str | None, task: str, fmt: str) -> bool:
    """``stream``: true (Server-Sent Events: ``transcript.text.delta`` per segment, then
    ``transcript.text.done``) for transcriptions in ``json`` or ``text``; translations do not
    stream (OpenAI's translations take no ``stream``)."""
    flag = (value or "").strip().lower()
    if flag in ("", "false", "0"):
        return False
    if flag not in ("true", "1"):
        raise bad(f"stream must be true or false, got {value!r}", "stream")
    if task != "transcribe":
        raise bad(
            "streaming (stream=true) is answered on /v1/audio/transcriptions only",
            "stream",
            "unsupported_value",
        )
    if fmt not in STREAM_FORMATS:
        raise bad(
            f"stream=true sends transcript.text events: response_format must be json or text, got {fmt!r}",
            "response_format",
            "unsupported_value",
        )
    return True


def _logprobs(form, fmt: str) -> bool:
    """``include[]``: OpenAI's only value is ``logprobs`` (each text token's log-probability,
    on the stream's events and beside the ``json`` answer's text), which OpenAI answers with
    ``response_format=json`` only; True when asked."""
    values = form.getlist("include[]") + form.getlist("include")
    for value in values:
        if value != "logprobs":
            raise bad(f"include[] may only be 'logprobs', got {value!r}", "include")
    if values and fmt != "json":
        raise bad(
            f"include[]=logprobs needs response_format=json, got {fmt!r}", "include", "unsupported_value"
        )
    return bool(values)


def _check_model(model: str | None, served: ServedModel) -> None:
    if model is None or not model.strip():
        raise bad("missing required parameter 'model'", "model", None)
    if model.strip() not in served.names:
        raise ApiError(
            400,
            f"model {model!r} is not served here; this server has {served.name!r} "
            f"(also reachable as {', '.join(repr(a) for a in MODEL_ALIASES)})",
            param="model",
            code="model_not_found",
        )


def _response_format(fmt: str | None) -> str:
    fmt = fmt or "json"
    if fmt not in RESPONSE_FORMATS:
        raise bad(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt!r}", "response_format"
        )
    return fmt


def _granularities(form, fmt: str) -> set[str]:
    grans = form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
    for g in grans:
        if not isinstance(g, str) or g not in GRANULARITIES:
            raise bad(
                f"timestamp_granularities[] must be 'segment' or 'word', got {g!r}", "timestamp_granularities"
            )
    if grans and fmt != "verbose_json":
        raise bad(
            "timestamp_granularities[] requires response_format=verbose_json", "timestamp_granularities"
        )
    return set(grans) or {"segment"}


def _check_language(language: str | None, task: str, served: ServedModel) -> None:
    if language not in (None, "en") and not served.multilingual:
        raise bad(
            f"{served.name} is an English-only model: language {language!r} needs a multilingual "
            "model (such as base)",
            "language",
            "unsupported_language",
        )
    if task == "translate" and not served.multilingual:
        raise bad(
            f"{served.name} is an English-only model and cannot translate; serve a multilingual "
            "model (such as base) for /v1/audio/translations",
            "model",
            "unsupported_model",
        )


class ServedModel:
    """The name a server answers to and whether its model is multilingual."""

    def __init__(self, name: str, multilingual: bool, created: int | None = None):
        self.name = name
        self.multilingual = multilingual
        self.names = (name, *MODEL_ALIASES)
        self.created = int(time.time()) if created is None else created

    @classmethod
    def of(cls, name: str, model) -> ServedModel:
        """For a loaded ``WhisperModel`` (multilingual iff its vocabulary has 51865+ tokens,
        openai-whisper's test)."""
        return cls(name, model.dims.n_vocab >= 51865)

    def card(self, model_id: str | None = None) -> dict:
        return {
            "id": model_id or self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "kvgraph",
        }


def _language_name(code: str | None) -> str:
    from models.whisper.decoding.tokenizer import LANGUAGES

    return LANGUAGES.get(code or "", code or "")


def _json_safe(value):
    """JSON has no NaN or infinity (a statistic openai-whisper could not compute): null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def response_body(result: dict, params: TranscriptionRequest, duration: float, logprobs=None):
    """``(body, media_type)`` for ``result`` in the request's ``response_format``;
    ``logprobs``: the ``json`` answer's list when ``include[]=logprobs`` asked for it."""
    text = result.get("text", "").strip()
    fmt = params.response_format
    usage = {"type": "duration", "seconds": math.ceil(duration)}
    if fmt == "json":
        body = {"text": text, "usage": usage}
        if logprobs is not None:
            body["logprobs"] = logprobs
        return body, None
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt in ("srt", "vtt"):
        from models.whisper.transcription.outputs import render

        return render(result, fmt), "text/plain; charset=utf-8"
    body: dict[str, Any] = {
        "task": params.task,
        "language": _language_name(result.get("language")),
        "duration": round(duration, 3),
        "text": text,
    }
    if "segment" in params.granularities:
        keys = (
            "id",
            "seek",
            "start",
            "end",
            "text",
            "tokens",
            "temperature",
            "avg_logprob",
            "compression_ratio",
            "no_speech_prob",
        )
        body["segments"] = [{k: _json_safe(s[k]) for k in keys if k in s} for s in result.get("segments", [])]
    if "word" in params.granularities:
        body["words"] = [
            {"word": w["word"].strip(), "start": w["start"], "end": w["end"]}
            for s in result.get("segments", [])
            for w in s.get("words", [])
        ]
    body["usage"] = usage
    return body, None
