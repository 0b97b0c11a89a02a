"""kvgraph: declare transformer decoders, rewrite them for KV caching, run them on MAX.

Importing kvgraph is cheap: MAX is imported only by :func:`compile`.
"""
from . import passes, reference
from .build import build
from .errors import (InputError, InputTypeError, IRTypeError, KvgraphError, LoweringError, PassError,
                     ReferenceRunError, SpecError, VerifyError)
from .ir import Graph
from .passes import run_passes
from .printer import format_graph
from .spec import CrossAttention, DecoderSpec
from .verify import verify
from .weights import init_weights


def compile(spec_or_graph, weights, *, kv_cache=True, device="cpu", passes=None, eager=True,
            weights_mode="registry", cache_layout="auto", capacity=None, f16_weights=True):
    """Compile for MAX (imports MAX on first use). See :func:`kvgraph.compiler.compile`."""
    from .compiler import compile as _compile
    return _compile(spec_or_graph, weights, kv_cache=kv_cache, device=device, passes=passes,
                    eager=eager, weights_mode=weights_mode, cache_layout=cache_layout,
                    capacity=capacity, f16_weights=f16_weights)


__all__ = [
    "CrossAttention", "DecoderSpec", "Graph", "IRTypeError", "InputError", "InputTypeError", "KvgraphError",
    "LoweringError", "PassError", "ReferenceRunError", "SpecError", "VerifyError", "build", "compile", "format_graph", "init_weights",
    "passes", "reference", "run_passes", "verify",
]
