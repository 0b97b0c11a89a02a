"""openai-whisper's ``transcribe`` as the suite's oracle, its results kept on disk across runs.

The parity tests compare kvgraph's output with ``whisper.transcribe(torch_model, audio, ...)``
on the same inputs every run; on a 2-core machine that oracle is a large share of a warm suite.
:func:`transcribe` runs it once per distinct input and reuses the recorded result afterwards;
kvgraph's side always runs, and what a test asserts is unchanged (a reused result is the very
value openai-whisper returned, types included: its ``np.float64`` times stay ``np.float64``).

Key (sha256): the versions of openai-whisper, torch, NumPy and tiktoken, torch's CPU kernels
(``get_cpu_capability``) and its thread count (a float sum's order, so its last bits, depends
on both), the model's class, dims and the bytes of every parameter and buffer, the audio's
dtype, shape and bytes (a path: the file's bytes and the ffmpeg that decodes it), and the
keyword options (``repr``, sorted). ``draws=seed`` runs the oracle under ``KvgraphDraws(seed)``
(openai sampling with kvgraph's seeded draws); the seed is in the key, and when the call drew
at all, the entry also holds a hash of the draw code's sources, and a later edit of that code
makes it miss.

Not memoised (run every time, counted as "not memoisable"): options that are not plain data
(callables, objects), ``verbose=True`` (its printing is part of the call), a call that drew from
torch's global generator (openai's own sampling on fallback: its result depends on the RNG
state, which the key does not hold; such a call leaves torch's RNG state changed, which is how
it is detected), a call made while ``whisper.decoding.Categorical`` is patched by someone else,
and a result that the JSON encoding below would not give back exactly.

Where: ``$KVGRAPH_ORACLE_CACHE``, else ``$XDG_CACHE_HOME/kvgraph/test-oracle``, else
``~/.cache/kvgraph/test-oracle``; ``KVGRAPH_ORACLE_CACHE=off`` turns the memo off. One JSON
file per entry, written to a temporary file and renamed into place; an entry that cannot be
read or decoded is ignored and recomputed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import tempfile
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "KVGRAPH_ORACLE_CACHE"
#: bumped when the entry layout or the key's recipe changes
FORMAT = 1


class NotMemoisable(ValueError):
    """An input or result the memo cannot key or carry exactly (the call then runs unmemoised)."""


# ------------------------------------------------------------------ where, and what happened


def cache_dir() -> Path | None:
    """The memo's folder, or None when ``KVGRAPH_ORACLE_CACHE=off``."""
    value = os.environ.get(CACHE_ENV, "")
    if value.strip().lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kvgraph" / "test-oracle"


class Stats:
    """This process's oracle calls: ``reused`` from the memo, ``ran`` (``stored`` of them),
    and why the others could not be memoised."""

    def __init__(self):
        self.reused = self.ran = self.stored = 0
        self.unmemoised: Counter[str] = Counter()

    def summary(self) -> str | None:
        """One line for the terminal summary, None when the oracle was not called."""
        calls = self.reused + self.ran
        if not calls:
            return None
        where = cache_dir()
        if where is None:
            return f"openai-whisper oracle: {calls} calls, all run ({CACHE_ENV}=off)"
        extra = [f"{self.stored} stored"]
        extra += [f"{n} not memoisable: {why}" for why, n in sorted(self.unmemoised.items())]
        return (
            f"openai-whisper oracle: {calls} calls, {self.reused} reused from {_short(where)}, "
            f"{self.ran} run ({'; '.join(extra)})"
        )


STATS = Stats()


def _short(path: Path) -> str:
    home = str(Path.home())
    text = str(path)
    return "~" + text[len(home) :] if text.startswith(home + os.sep) else text


# ------------------------------------------------------------------ the key


_ENVIRONMENT: list[str] = []


def environment() -> str:
    """The versions and CPU kernels the oracle's bits depend on (computed once)."""
    if not _ENVIRONMENT:
        from importlib.metadata import version

        import tiktoken
        import torch

        _ENVIRONMENT.append(
            repr(
                (
                    ("openai-whisper", version("openai-whisper")),
                    ("torch", torch.__version__),
                    ("numpy", np.__version__),
                    ("tiktoken", tiktoken.__version__),
                    ("cpu", torch.backends.cpu.get_cpu_capability()),
                )
            )
        )
    return _ENVIRONMENT[0]


def run_settings() -> str:
    """torch's settings that may change between calls of one run (tests set the thread count)."""
    import torch

    return repr((torch.get_num_threads(), torch.get_float32_matmul_precision()))


#: model -> (stamp, digest); the stamp notices tensors replaced or changed in place
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors(model) -> list[tuple[str, Any]]:
    named = list(model.named_parameters()) + list(model.named_buffers())
    return sorted(named, key=lambda item: item[0])


def _stamp(tensors) -> tuple:
    return tuple((name, id(t), t._version, None if t.is_sparse else t.data_ptr()) for name, t in tensors)


def tensor_bytes(t) -> bytes:
    """A tensor's elements as bytes (any dtype; a sparse tensor as its dense values)."""
    import torch

    dense = t.detach().to_dense() if t.is_sparse else t.detach()
    flat = dense.cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def model_fingerprint(model) -> str:
    """sha256 of the model's class, dims and every parameter and buffer (name, dtype, shape,
    bytes); cached per model object until one of its tensors is replaced or changed in place
    (``_version``; an edit through ``.data`` that keeps the storage is not seen)."""
    tensors = _tensors(model)
    stamp = _stamp(tensors)
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    h = hashlib.sha256()
    dims = getattr(model, "dims", None)
    dims = dataclasses.asdict(dims) if dataclasses.is_dataclass(dims) else dims
    h.update(repr((type(model).__module__, type(model).__qualname__, dims, model.training)).encode())
    for name, t in tensors:
        h.update(repr((name, str(t.dtype), tuple(t.shape), t.is_sparse)).encode())
        h.update(hashlib.sha256(tensor_bytes(t)).digest())
    digest = h.hexdigest()
    _FINGERPRINTS[model] = (stamp, digest)
    return digest


_FFMPEG: list[str] = []


def ffmpeg_version() -> str:
    """``ffmpeg -version``'s first line: openai-whisper decodes a path's audio with it."""
    if not _FFMPEG:
        import subprocess

        try:
            out = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, timeout=60)
            _FFMPEG.append(out.stdout.splitlines()[0] if out.stdout else f"rc {out.returncode}")
        except (OSError, subprocess.SubprocessError) as exc:
            _FFMPEG.append(f"no ffmpeg: {type(exc).__name__}")
    return _FFMPEG[0]


def audio_key(audio) -> str:
    """sha256 of the audio: an array's or tensor's dtype, shape and bytes, a path's file bytes."""
    import torch

    h = hashlib.sha256()
    if isinstance(audio, (str, os.PathLike)):
        h.update(repr(("path", ffmpeg_version())).encode())
        h.update(Path(audio).read_bytes())
    elif isinstance(audio, np.ndarray):
        h.update(repr(("ndarray", audio.dtype.str, audio.shape)).encode())
        h.update(np.ascontiguousarray(audio).tobytes())
    elif isinstance(audio, torch.Tensor) and not audio.is_sparse:
        h.update(repr(("tensor", str(audio.dtype), tuple(audio.shape))).encode())
        h.update(tensor_bytes(audio))
    else:
        raise NotMemoisable(f"audio of type {type(audio).__name__}")
    return h.hexdigest()


_PLAIN_SCALARS = (type(None), bool, int, float, str, np.bool_, np.integer, np.floating)


def plain_repr(value, what: str = "option") -> str:
    """``repr`` of plain data (scalars, str, tuples, lists, dicts of them): equal reprs mean
    equal values. Raises NotMemoisable for anything else (a callable, an object)."""
    if isinstance(value, _PLAIN_SCALARS):
        return repr(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(plain_repr(v, what) for v in value)
        return f"{type(value).__name__}({inner})"
    if isinstance(value, dict):
        items = ", ".join(f"{plain_repr(k, what)}: {plain_repr(v, what)}" for k, v in value.items())
        return f"dict({items})"
    raise NotMemoisable(f"{what} of type {type(value).__name__}")


def options_key(options: dict) -> str:
    """The keyword options, sorted by name, as plain data."""
    return "; ".join(f"{k}={plain_repr(v, f'option {k}')}" for k, v in sorted(options.items()))


def call_key(call: str, model, audio, options: dict, draws: int | None) -> str:
    """The memo's key of one oracle call (see the module docstring)."""
    parts = (
        ("format", FORMAT),
        ("call", call),
        ("environment", environment()),
        ("settings", run_settings()),
        ("model", model_fingerprint(model)),
        ("audio", audio_key(audio)),
        ("options", options_key(options)),
        ("draws", plain_repr(draws, "draws")),
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


# ------------------------------------------------------------------ exact JSON


def encode(value):
    """``value`` as JSON data that :func:`decode` turns back into an equal value of the same
    types (tuples and NumPy scalars tagged). Raises NotMemoisable for anything else."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return {"$np": value.dtype.str, "v": value.item()}
    if type(value) is list:
        return [encode(v) for v in value]
    if type(value) is tuple:
        return {"$tuple": [encode(v) for v in value]}
    if type(value) is dict:
        if not all(type(k) is str and not k.startswith("$") for k in value):
            raise NotMemoisable("a dict key that is not a plain string")
        return {k: encode(v) for k, v in value.items()}
    raise NotMemoisable(f"a result holding a {type(value).__name__}")


def decode(data):
    """The inverse of :func:`encode`."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if isinstance(data, dict):
        if "$np" in data:
            return np.dtype(data["$np"]).type(data["v"])
        if "$tuple" in data:
            return tuple(decode(v) for v in data["$tuple"])
        return {k: decode(v) for k, v in data.items()}
    return data


def identical(a, b) -> bool:
    """Equal values of the same types, floats bit for bit (NaN and -0.0 included)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    if isinstance(a, np.generic):
        return a.tobytes() == b.tobytes()
    if type(a) is float:
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b


def to_json(result) -> str:
    """``result`` as JSON text that reads back :func:`identical` to it, else NotMemoisable."""
    text = json.dumps(encode(result), allow_nan=True)
    if not identical(decode(json.loads(text)), result):
        raise NotMemoisable("a result that JSON does not give back exactly")
    return text


# ------------------------------------------------------------------ the files


def checksum(result_data) -> str:
    """sha256 of an encoded result's JSON text (a damaged entry's digits no longer match it)."""
    return hashlib.sha256(json.dumps(result_data, allow_nan=True).encode()).hexdigest()


def read_entry(folder: Path, key: str) -> dict | None:
    """The stored entry of ``key``; None when absent, unreadable, not an entry or damaged."""
    try:
        entry = json.loads((folder / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or "result" not in entry:
        return None
    if entry.get("sha256") != checksum(entry["result"]):
        return None
    return entry


def write_entry(folder: Path, key: str, entry: dict) -> bool:
    """Store ``entry`` atomically (a temporary file renamed into place); False if it cannot."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:16]}-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(entry, allow_nan=True))
            os.replace(tmp, folder / f"{key}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError:
        return False
    return True


# ------------------------------------------------------------------ the memo


_DRAW_CODE: list[str] = []


def draw_code_hash() -> str:
    """sha256 of the sources ``KvgraphDraws`` samples with: kvgraph's ``sample`` and the
    ``models`` modules it reaches, and ``whisper_doubles`` itself (computed once)."""
    if not _DRAW_CODE:
        import inspect
        import sys

        import whisper_doubles

        from models.whisper.decoding import search

        todo, seen = [search, whisper_doubles], set()
        while todo:
            module = todo.pop()
            if module.__name__ in seen:
                continue
            seen.add(module.__name__)
            for obj in vars(module).values():
                name = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
                if isinstance(name, str) and name.startswith("models.") and name in sys.modules:
                    todo.append(sys.modules[name])
        h = hashlib.sha256()
        for name in sorted(seen):
            h.update(name.encode() + b"\0" + Path(inspect.getfile(sys.modules[name])).read_bytes())
        _DRAW_CODE.append(h.hexdigest())
    return _DRAW_CODE[0]


def memoised(call: str, run, model, audio, options: dict, draws: int | None = None):
    """The oracle's result for this call, from the memo when it holds it. ``run()`` is the
    oracle itself; it returns ``(result, drew_from_torch, drew_from_kvgraph)``."""
    folder = cache_dir()
    key = None
    if folder is not None:
        try:
            if options.get("verbose"):
                raise NotMemoisable("verbose=True prints")
            key = call_key(call, model, audio, options, draws)
        except NotMemoisable as exc:
            STATS.unmemoised[str(exc)] += 1
    if key is not None:
        entry = read_entry(folder, key)
        code = entry.get("draw_code") if entry is not None else None
        if entry is not None and (code is None or code == draw_code_hash()):
            try:
                result = decode(entry["result"])
            except (TypeError, ValueError, KeyError, AttributeError):
                pass  # a damaged entry: recomputed below
            else:
                STATS.reused += 1
                return result
    result, drew_torch, drew_kvgraph = run()
    STATS.ran += 1
    if key is None:
        return result
    try:
        if drew_torch:
            raise NotMemoisable("drew from torch's generator")
        data = json.loads(to_json(result))
        entry = {"format": FORMAT, "call": call, "sha256": checksum(data), "result": data}
        if drew_kvgraph:
            entry["draw_code"] = draw_code_hash()
    except NotMemoisable as exc:
        STATS.unmemoised[str(exc)] += 1
        return result
    if write_entry(folder, key, entry):
        STATS.stored += 1
    return result


def _run_transcribe(model, audio, options: dict, draws: int | None):
    import torch
    import whisper
    from whisper_doubles import KvgraphDraws

    before = torch.get_rng_state()
    if draws is None:
        result = whisper.transcribe(model, audio, **options)
        drew = False
    else:
        with KvgraphDraws(draws) as d:
            start = repr(d.rng.bit_generator.state)
            result = whisper.transcribe(model, audio, **options)
            drew = repr(d.rng.bit_generator.state) != start
    return result, not torch.equal(before, torch.get_rng_state()), drew


def transcribe(model, audio, *, draws: int | None = None, **options) -> dict:
    """``whisper.transcribe(model, audio, **options)`` (under ``KvgraphDraws(draws)`` when
    ``draws`` is a seed), reused from the memo for identical inputs."""
    import torch
    import whisper.decoding

    if whisper.decoding.Categorical is not torch.distributions.Categorical:
        # someone else's sampler is in place: the result is theirs, not the key's
        STATS.unmemoised["whisper.decoding.Categorical is patched"] += 1
        STATS.ran += 1
        return whisper.transcribe(model, audio, **options)
    return memoised(
        "whisper.transcribe",
        lambda: _run_transcribe(model, audio, options, draws),
        model,
        audio,
        options,
        draws,
    )
