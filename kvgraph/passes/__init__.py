"""Rewrite passes over kvgraph programs. Each pass is a frozen value with ``apply``."""

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
    ``capacity`` and ``per_row`` go to :class:`KVCache`)."""
    if cache_layout == "concat" and capacity is None and not per_row:
        return list(DEFAULT_PASSES)
    return [KVCache(cache_layout, capacity=capacity, per_row=per_row)] + list(DEFAULT_PASSES[1:])


__all__ = [
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
    "default_pipeline",
    "run_passes",
]
