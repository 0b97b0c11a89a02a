"""Writes CTranslate2 model.bin files for tests (the layout of models/ct2.py's docstring)."""

import struct

import numpy as np


def _ct2_string(s):
    b = s.encode()
    return struct.pack("<H", len(b) + 1) + b + b"\0"


def write_model_bin(path, variables, aliases=(), spec="WhisperSpec", revision=3, version=6):
    """Minimal writer following CTranslate2's ModelSpec._serialize layout.
    ``variables``: name -> (dtype id, ndarray of the stored dtype)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", version))
        f.write(_ct2_string(spec) + struct.pack("<I", revision))
        f.write(struct.pack("<I", len(variables)))
        for name, (type_id, arr) in variables.items():
            arr = np.asarray(arr, order="C")  # (ascontiguousarray makes 0-d 1-d)
            f.write(_ct2_string(name) + struct.pack("<B", arr.ndim))
            f.write(struct.pack(f"<{arr.ndim}I", *arr.shape))
            f.write(struct.pack("<BI", type_id, arr.nbytes))
            f.write(arr.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases:
            f.write(_ct2_string(alias) + _ct2_string(target))
