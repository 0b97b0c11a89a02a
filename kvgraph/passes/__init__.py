"""Rewrite passes over kvgraph programs. Each pass is a frozen value with ``apply``."""

from .compute import ComputeType, compute_type
from .dce import DCE
from .expose import ExposeAttention
from .hoist import HoistInvariant
from .kv_cache import KVCache
from .manager import Pass, PassResult, Programs, Stage, run_passes
from .share import ShareContexts
from .sink import SinkTakeLast

DEFAULT_PASSES = (KVCache(), HoistInvariant(), ShareContexts(), SinkTakeLast(), DCE())


def default_pipeline(cache_layout: str = "concat", capacity=None, per_row: bool = False):
    """The passes ``kvgraph.compile`` runs for a cached decoder (``cache_layout``,
    ``capacity`` and ``per_row`` go to :class:`KVCache`). With ``per_row`` (continuous
    batching: each row another stream, at its own position) hoisted state stays one row per
    batch row: ``ShareContexts`` is left out."""
    if cache_layout == "concat" and capacity is None and not per_row:
        return list(DEFAULT_PASSES)
    rest = list(DEFAULT_PASSES[1:])
    if per_row:  # rows of different streams read different contexts: no ShareContexts
        rest = [p for p in rest if not isinstance(p, ShareContexts)]
    return [KVCache(cache_layout, capacity=capacity, per_row=per_row)] + rest


__all__ = [
    "ComputeType",
    "DCE",
    "DEFAULT_PASSES",
    "ExposeAttention",
    "HoistInvariant",
    "KVCache",
    "Pass",
    "PassResult",
    "Programs",
    "ShareContexts",
    "SinkTakeLast",
    "Stage",
    "compute_type",
    "default_pipeline",
    "run_passes",
]
