"""kvgraph: declare transformer decoders, rewrite them for KV caching, run them on MAX.

Importing kvgraph is cheap: MAX is imported only when :func:`compile` runs (the backend is
the package :mod:`kvgraph.max`).
"""

from . import passes, reference
from .build import build
from .compiler import compile
from .errors import (
    InputError,
    InputTypeError,
    IRTypeError,
    KvgraphError,
    LoweringError,
    PassError,
    ReferenceRunError,
    SpecError,
    VerifyError,
)
from .ir import Graph
from .passes import run_passes
from .printer import format_graph
from .spec import CrossAttention, DecoderSpec
from .verify import verify
from .weights import init_weights

__all__ = [
    "CrossAttention",
    "DecoderSpec",
    "Graph",
    "IRTypeError",
    "InputError",
    "InputTypeError",
    "KvgraphError",
    "LoweringError",
    "PassError",
    "ReferenceRunError",
    "SpecError",
    "VerifyError",
    "build",
    "compile",
    "format_graph",
    "init_weights",
    "passes",
    "reference",
    "run_passes",
    "verify",
]
