"""Whisper's ``compute_type`` modes (faster-whisper's option names, and two of kvgraph's own):
the arithmetic of the encoder, of the decoder's layers and of its vocabulary projection (the
logits), each a kvgraph compute type (:mod:`kvgraph.numerics`).

======================  =========  =======  ==========  ===================================
mode                    encoder    decoder  vocabulary  what it buys
======================  =========  =======  ==========  ===================================
float32                 float32    float32  float32     exact: token for token
                                                        openai-whisper's float32
bfloat16                bfloat16   float32  float32     the encoder's GEMMs, convolutions
                                                        and attention on bfloat16 operands
                                                        (AMX tiles or AVX512-BF16 where the
                                                        CPU has them)
int8vocab               float32    float32  int8*       a step reads the vocabulary
                                                        projection (most of a step's bytes
                                                        in small models) as int8; greedy
                                                        tokens float32's
int8vocab_bfloat16      bfloat16   float32  int8*       both
int8                    float32    int8     int8*       every decoder linear on int8
int8_float32            float32    int8     int8*       the same as int8 (CTranslate2's name)
int8_bfloat16           bfloat16   int8     int8*       both
======================  =========  =======  ==========  ===================================

(*) int8 weights with a scale per row, and every logit that may rank among a row's 16
largest (by the int8 error bound) recomputed in float32 from the float weights
(``kvgraph.ir.Linear.exact_top``): the largest logits are float32's, the rest within the bound.

The decoder's layers stay float32 under ``bfloat16``: its steps are bound by reading the
weights, and bfloat16 weights are no smaller than the float16 ones it already reads.
Accuracy and speed of each mode: ``docs/compute_types.md`` (``benchmarks/compute_types.py``).
Cheap to import (no MAX).
"""

from __future__ import annotations

from kvgraph.errors import InputError

#: mode -> (encoder, decoder layers, vocabulary projection) compute types
MODES: dict[str, tuple[str, str, str]] = {
    "float32": ("float32", "float32", "float32"),
    "bfloat16": ("bfloat16", "float32", "float32"),
    "int8vocab": ("float32", "float32", "int8"),
    "int8vocab_bfloat16": ("bfloat16", "float32", "int8"),
    "int8": ("float32", "int8", "int8"),
    "int8_float32": ("float32", "int8", "int8"),
    "int8_bfloat16": ("bfloat16", "int8", "int8"),
}
COMPUTE_TYPES = tuple(MODES)


def split_compute_type(mode: str) -> tuple[str, str, str]:
    """``(encoder, decoder, vocabulary)`` compute types of ``mode``; a one-line error for
    another name."""
    if mode not in MODES:
        raise InputError(f"compute_type={mode!r} is not a Whisper compute type: one of {', '.join(MODES)}")
    return MODES[mode]
