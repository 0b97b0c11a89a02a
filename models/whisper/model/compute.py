"""Whisper's ``compute_type`` modes (faster-whisper's option names): the arithmetic of the
encoder and of the decoder, each a kvgraph compute type (:mod:`kvgraph.numerics`).

==============  =========  =======  ==================================================
mode            encoder    decoder  what it buys
==============  =========  =======  ==================================================
float32         float32    float32  exact: token for token openai-whisper's float32
bfloat16        bfloat16   float32  the encoder's GEMMs, convolutions and attention
                                    on bfloat16 operands (AMX tiles where the CPU has
                                    them): an encoder window ~2.5x faster on AMX
int8            float32    int8     the decoder's linears on int8 weights (per-row
                                    scales): a step reads half the weight bytes
int8_float32    float32    int8     the same as int8 (CTranslate2's name for it)
int8_bfloat16   bfloat16   int8     both
==============  =========  =======  ==================================================

The decoder stays float32 under ``bfloat16``: its steps are bound by reading the weights,
and bfloat16 weights are no smaller than the float16 ones it already reads. Accuracy and
speed of each mode: ``docs/compute_types.md`` (``benchmarks/compute_types.py``). Cheap to
import (no MAX).
"""

from __future__ import annotations

from kvgraph.errors import InputError

#: mode -> (encoder compute type, decoder compute type)
MODES: dict[str, tuple[str, str]] = {
    "float32": ("float32", "float32"),
    "bfloat16": ("bfloat16", "float32"),
    "int8": ("float32", "int8"),
    "int8_float32": ("float32", "int8"),
    "int8_bfloat16": ("bfloat16", "int8"),
}
COMPUTE_TYPES = tuple(MODES)


def split_compute_type(mode: str) -> tuple[str, str]:
    """``(encoder, decoder)`` compute types of ``mode``; a one-line error for another name."""
    if mode not in MODES:
        raise InputError(f"compute_type={mode!r} is not a Whisper compute type: one of {', '.join(MODES)}")
    return MODES[mode]
