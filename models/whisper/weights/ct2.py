"""Reader for CTranslate2 ``model.bin`` files.

The ``ctranslate2`` Python package can write models but cannot hand the stored
variables back, so this module parses the binary layout directly into numpy
(:func:`read_model_bin`) and reads the variables by name (:class:`CT2Variables`).

Layout (all integers little-endian), as written by ``ModelSpec._serialize`` in
CTranslate2's ``python/ctranslate2/specs/model_spec.py`` and read back by
``src/models/model.cc`` (github.com/OpenNMT/CTranslate2):

    uint32  binary_version                      (1 .. 6)
    string  spec_name       \\  binary_version >= 2
    uint32  spec_revision   /
    uint32  num_variables
    num_variables times:
        string  name
        uint8   rank
        uint32  dims[rank]
        binary_version >= 4:  uint8 dtype_id, uint32 num_bytes
        binary_version <  4:  uint8 item_size, uint32 num_elements
        bytes   payload[num_bytes]
    binary_version >= 3:
        uint32  num_aliases
        num_aliases times: string alias, string target_variable_name

    string := uint16 length (including the trailing NUL), bytes, NUL

dtype ids follow ``DataType`` in ``include/ctranslate2/types.h``:
0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["CT2FormatError", "CT2Variables", "read_model_bin", "MAX_BINARY_VERSION"]

MAX_BINARY_VERSION = 6

# dtype id -> (name, numpy dtype used to view the payload)
_DTYPES = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # widened to float32 after reading
}
# binary_version < 4 stored an item size instead of a dtype id
# (CTranslate2's get_dtype_from_item_size).
_LEGACY_ITEM_SIZE = {4: 0, 2: 2, 1: 1}

PathLike = str | os.PathLike


class CT2FormatError(ValueError):
    """A CTranslate2 model.bin file is truncated, corrupt or unsupported."""


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


class _Cursor:
    def __init__(self, buf, label: str):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.label = label
        self.where = "header"

    def fail(self, what: str, offset: int | None = None) -> CT2FormatError:
        off = self.pos if offset is None else offset
        return CT2FormatError(
            f"{self.label}: corrupt CTranslate2 model.bin at byte offset {off} ({self.where}): {what}"
        )

    def take(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"truncated: need {n} bytes for {what}, only "
                f"{self.size - self.pos} left (file size {self.size})"
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        st = struct.Struct("<" + fmt)
        start = self.take(st.size, what)
        return st.unpack_from(self.buf, start)

    def u8(self, what):
        return self.unpack("B", what)[0]

    def u16(self, what):
        return self.unpack("H", what)[0]

    def u32(self, what):
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        start_off = self.pos
        length = self.u16(what + " length")
        if length == 0:
            raise self.fail(f"{what} has length 0 (no NUL terminator)", start_off)
        start = self.take(length, what)
        raw = bytes(self.buf[start : start + length])
        if raw[-1] != 0:
            raise self.fail(f"{what} is not NUL-terminated", start_off)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not valid UTF-8 ({e})", start_off) from None


def _open_buffer(path):
    """Returns (buffer, label, closer). A single path is memory-mapped; a
    sequence of paths (a file split into parts) is read once into memory."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        label = str(p)
        try:
            f = open(p, "rb")
        except OSError as e:
            raise CT2FormatError(f"{label}: cannot open CTranslate2 model.bin ({e.strerror})") from e
        with f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise CT2FormatError(f"{label}: empty file, not a CTranslate2 model.bin (byte offset 0)")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return mm, label
    parts = [Path(p) for p in path]
    if not parts:
        raise CT2FormatError("read_model_bin: empty list of file parts")
    label = " + ".join(str(p) for p in parts)
    try:
        total = sum(p.stat().st_size for p in parts)
        buf = bytearray(total)
        view = memoryview(buf)
        off = 0
        for p in parts:
            with open(p, "rb") as f:
                while True:
                    n = f.readinto(view[off:])
                    if not n:
                        break
                    off += n
        if off != total:
            raise CT2FormatError(f"{label}: parts changed size while being read")
    except OSError as e:
        raise CT2FormatError(f"{label}: cannot read CTranslate2 model.bin parts ({e})") from e
    if total == 0:
        raise CT2FormatError(f"{label}: empty file, not a CTranslate2 model.bin (byte offset 0)")
    return buf, label


def read_model_bin(path: PathLike | Sequence[PathLike]):
    """Parses a CTranslate2 ``model.bin``.

    ``path`` is a file, or a sequence of files whose concatenation is the
    model.bin (read once into memory, nothing written to disk).

    Returns ``(variables, aliases, meta)``:
      * ``variables``: name -> numpy array with the stored shape. float32,
        int8, int16, int32 and float16 arrays are read-only zero-copy views of
        the file (memory-mapped for a single path); bfloat16 is widened to
        float32 (bit shift), with the original dtype recorded in meta.
      * ``aliases``: alias name -> target variable name (as stored).
      * ``meta``: ``binary_version``, ``spec_name``, ``spec_revision``,
        ``path``, ``file_size`` and ``dtypes`` (name -> stored dtype name).

    Raises ``CT2FormatError`` (a ``ValueError``) naming the file, the byte
    offset and the variable at fault for truncated or corrupt input.
    """
    buf, label = _open_buffer(path)
    cur = _Cursor(buf, label)

    version = cur.u32("binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise cur.fail(
            f"unsupported binary version {version} (expected 1..{MAX_BINARY_VERSION}); "
            "not a CTranslate2 model.bin?",
            0,
        )
    spec_name, spec_revision = "", 1
    if version >= 2:
        spec_name = cur.string("spec name")
        spec_revision = cur.u32("spec revision")

    cur.where = "variable count"
    num_vars = cur.u32("number of variables")
    # Each variable needs at least 2+1+1+1+4 header bytes: a cheap sanity check
    # that catches garbage counts before looping.
    if num_vars * 9 > cur.size - cur.pos:
        raise cur.fail(
            f"truncated or corrupt: {num_vars} variables cannot fit in the remaining "
            f"{cur.size - cur.pos} bytes"
        )

    variables: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for i in range(num_vars):
        name, arr, dname = _read_variable(cur, buf, version, i, variables)
        variables[name] = arr
        dtypes[name] = dname
    aliases = _read_aliases(cur, version)

    if cur.pos != cur.size:
        cur.where = "end of file"
        raise cur.fail(f"{cur.size - cur.pos} unexpected trailing bytes")

    meta = {
        "binary_version": version,
        "spec_name": spec_name,
        "spec_revision": spec_revision,
        "path": label,
        "file_size": cur.size,
        "dtypes": dtypes,
    }
    return variables, aliases, meta


def _read_variable(cur: _Cursor, buf, version: int, i: int, seen) -> tuple[str, np.ndarray, str]:
    """Variable ``i`` at the cursor: ``(name, array, stored dtype name)``; ``seen``: the names
    read before (a duplicate is an error)."""
    cur.where = f"variable #{i}"
    name = cur.string("variable name")
    cur.where = f"variable #{i} '{name}'"
    if name in seen:
        raise cur.fail("duplicate variable name")
    rank = cur.u8("rank")
    shape = cur.unpack(f"{rank}I", "shape") if rank else ()
    hdr_off = cur.pos
    if version >= 4:
        type_id = cur.u8("dtype id")
        num_bytes = cur.u32("byte count")
        if type_id not in _DTYPES:
            raise cur.fail(f"unknown dtype id {type_id}", hdr_off)
    else:
        item_size = cur.u8("item size")
        count = cur.u32("element count")
        if item_size not in _LEGACY_ITEM_SIZE:
            raise cur.fail(f"unknown item size {item_size}", hdr_off)
        type_id = _LEGACY_ITEM_SIZE[item_size]
        num_bytes = count * item_size
    dname, dt = _DTYPES[type_id]
    n_elem = int(np.prod(shape, dtype=np.int64)) if rank else 1
    if num_bytes != n_elem * dt.itemsize:
        raise cur.fail(
            f"payload is {num_bytes} bytes but shape {tuple(shape)} of {dname} needs {n_elem * dt.itemsize}",
            hdr_off,
        )
    start = cur.take(num_bytes, "payload")
    arr = np.frombuffer(buf, dtype=dt, count=n_elem, offset=start).reshape(shape)
    if dname == "bfloat16":
        arr = _bfloat16_to_float32(arr)
    elif arr.flags.writeable:  # bytearray-backed: keep the read-only contract
        arr.flags.writeable = False
    return name, arr, dname


def _read_aliases(cur: _Cursor, version: int) -> dict[str, str]:
    """The alias table at the cursor (binary version 3 on): alias name -> target name."""
    aliases: dict[str, str] = {}
    if version < 3:
        return aliases
    cur.where = "alias count"
    num_aliases = cur.u32("number of aliases")
    for i in range(num_aliases):
        cur.where = f"alias #{i}"
        alias = cur.string("alias name")
        cur.where = f"alias #{i} '{alias}'"
        target = cur.string("alias target")
        aliases[alias] = target
    return aliases


def _f32(x: np.ndarray) -> np.ndarray:
    """A writable, C-contiguous float32 copy (never a view of the file)."""
    return np.array(x, dtype=np.float32, order="C", copy=True)


class CT2Variables:
    """Variable access over :func:`read_model_bin`'s result: names resolved through the
    aliases, integer (int8/int16) weights dequantized, every array read as a float32 copy —
    or, with ``keep_float16``, float16 variables as a float16 copy (the same values, half the
    bytes)."""

    def __init__(self, variables, aliases, meta, keep_float16: bool = False):
        self.v, self.a, self.meta = variables, aliases, meta
        self.label = meta["path"]
        self.keep_float16 = keep_float16

    def resolve(self, name):
        seen = set()
        while name not in self.v and name in self.a and name not in seen:
            seen.add(name)
            name = self.a[name]
        return name

    def has(self, name):
        return self.resolve(name) in self.v

    def raw(self, name) -> np.ndarray:
        r = self.resolve(name)
        if r not in self.v:
            raise CT2FormatError(f"{self.label}: missing variable '{name}'")
        return self.v[r]

    def get(self, name) -> np.ndarray:
        x = self.raw(name)
        if np.issubdtype(x.dtype, np.integer) and x.ndim >= 1:
            # Quantized weight: value = round(w * scale) (CTranslate2
            # model_spec._quantize), scale per output row for int8, scalar for int16.
            scale_name = self.resolve(name) + "_scale"
            if scale_name not in self.v:
                raise CT2FormatError(f"{self.label}: integer variable '{name}' has no '{scale_name}'")
            if self.resolve(name) + "_zero" in self.v:
                raise CT2FormatError(
                    f"{self.label}: '{name}' uses zero-point (AWQ) quantization, unsupported"
                )
            scale = np.asarray(self.v[scale_name], dtype=np.float32)
            if scale.ndim == 1:
                scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
            return (x.astype(np.float32) / scale).astype(np.float32, copy=False)
        if self.keep_float16 and x.dtype == np.float16:
            return np.array(x, order="C", copy=True)  # the file's variables need not be aligned
        return _f32(x)

    def scalar(self, name):
        return int(self.raw(name)) if self.has(name) else None

    def count_layers(self, prefix: str) -> int:
        """How many ``{prefix}/layer_N/...`` blocks the model has (numbered 0..N-1)."""
        pat = re.compile(rf"^{prefix}/layer_(\d+)/")
        idx = {int(m.group(1)) for k in list(self.v) + list(self.a) if (m := pat.match(k))}
        if idx and idx != set(range(len(idx))):
            raise CT2FormatError(f"{prefix} layers are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
        return len(idx)
