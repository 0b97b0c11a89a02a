"""OpenAI's ``chunking_strategy`` form field as ``transcribe``'s voice-activity options.

OpenAI's audio API (``POST /v1/audio/transcriptions``) takes ``chunking_strategy``: ``"auto"``
(the server picks the VAD settings) or a ``server_vad`` object ``{"type": "server_vad",
"threshold", "prefix_padding_ms", "silence_duration_ms"}`` with every key but ``type``
optional. A client sends the object either as one field holding JSON (curl:
``-F 'chunking_strategy={"type": "server_vad"}'``) or, as the official ``openai`` Python client
does, as bracketed fields (``chunking_strategy[type]=server_vad``,
``chunking_strategy[threshold]=0.5``). Both become faster-whisper's names:
``vad_filter=True`` and ``vad_parameters={"threshold", "speech_pad_ms",
"min_silence_duration_ms"}`` (only the keys given). Plain Python: no web framework."""

from __future__ import annotations

import json
import math
from typing import Any

#: the bracketed form of the field (``chunking_strategy[threshold]``)
CHUNKING_PREFIX = "chunking_strategy["
#: the server_vad object's keys -> faster-whisper's ``vad_parameters`` names
VAD_KEYS = {
    "threshold": "threshold",
    "prefix_padding_ms": "speech_pad_ms",
    "silence_duration_ms": "min_silence_duration_ms",
}
FIELD = "chunking_strategy"


class ChunkingError(ValueError):
    """A ``chunking_strategy`` the server cannot use (the server answers 400 naming it)."""


def chunking_options(form) -> dict[str, Any]:
    """``transcribe``'s options for the request's ``chunking_strategy`` (``form``: Starlette's
    ``FormData`` or anything with ``getlist`` and ``multi_items``): ``{}`` when it is absent,
    ``{"vad_filter": True}`` for ``"auto"``, and ``vad_parameters`` too for a ``server_vad``
    object. Raises :class:`ChunkingError` (the server's 400 naming ``chunking_strategy``)."""
    return vad_options(_strategy(form))


def _strategy(form) -> str | dict | None:
    """The field as sent: None, ``"auto"``, or the object (from JSON or bracketed fields)."""
    whole = form.getlist(FIELD)
    nested = [(k, v) for k, v in form.multi_items() if k.startswith(CHUNKING_PREFIX)]
    if len(whole) > 1:
        raise ChunkingError(f"parameter '{FIELD}' given {len(whole)} times")
    if whole and nested:
        raise ChunkingError(f"{FIELD} given both whole and as {nested[0][0]}")
    if whole:
        return _parse_whole(whole[0])
    if not nested:
        return None
    obj: dict[str, Any] = {}
    for key, value in nested:
        name = key[len(CHUNKING_PREFIX) :]
        if not name.endswith("]") or not isinstance(value, str):
            raise ChunkingError(f"{FIELD}: malformed field {key!r}")
        name = name[:-1]
        if name in obj:
            raise ChunkingError(f"{FIELD}[{name}] given twice")
        obj[name] = value
    return obj


def _parse_whole(value) -> str | dict | None:
    if not isinstance(value, str):
        raise ChunkingError(f"{FIELD} must be a form field, not a file")
    text = value.strip()
    if text in ("", "null"):
        return None
    if text == "auto":
        return "auto"
    try:
        parsed = json.loads(text)
    except ValueError:
        raise ChunkingError(
            f"{FIELD} must be 'auto' or a JSON object with type 'server_vad', got {value!r}"
        ) from None
    if parsed == "auto" or parsed is None or isinstance(parsed, dict):
        return parsed
    raise ChunkingError(f"{FIELD} must be 'auto' or a JSON object with type 'server_vad', got {value!r}")


def vad_options(strategy: str | dict | None) -> dict[str, Any]:
    """``transcribe``'s options for a parsed strategy (see :func:`chunking_options`)."""
    if strategy is None:
        return {}
    if strategy == "auto":
        return {"vad_filter": True}
    if strategy.get("type") != "server_vad":
        raise ChunkingError(f"{FIELD}.type must be 'server_vad', got {strategy.get('type')!r}")
    unknown = sorted(set(strategy) - {"type", *VAD_KEYS})
    if unknown:
        raise ChunkingError(f"{FIELD}: unknown key {unknown[0]!r} (known: type, {', '.join(VAD_KEYS)})")
    params: dict[str, Any] = {}
    if "threshold" in strategy:
        params["threshold"] = _threshold(strategy["threshold"])
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in strategy:
            params[VAD_KEYS[key]] = _milliseconds(key, strategy[key])
    return {"vad_filter": True, "vad_parameters": params} if params else {"vad_filter": True}


def _number(key: str, value) -> float:
    """A finite number from JSON (not a boolean) or from a form field's text."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ChunkingError(f"{FIELD}.{key} must be a number, got {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise ChunkingError(f"{FIELD}.{key} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ChunkingError(f"{FIELD}.{key} must be finite, got {value!r}")
    return x


def _threshold(value) -> float:
    x = _number("threshold", value)
    if not 0.0 <= x <= 1.0:
        raise ChunkingError(f"{FIELD}.threshold must be between 0 and 1, got {value!r}")
    return x


def _milliseconds(key: str, value) -> int:
    x = _number(key, value)
    if x != int(x) or x < 0:
        raise ChunkingError(f"{FIELD}.{key} must be a whole number of milliseconds >= 0, got {value!r}")
    return int(x)
