"""The core's own named specs (``llama-demo``), registered by :data:`kvgraph.plugins.REGISTRY`
on discovery like a plugin's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .spec import DecoderSpec

if TYPE_CHECKING:
    from .plugins import Registry


def llama_demo() -> DecoderSpec:
    """A small Llama-style decoder: RMSNorm, SwiGLU, rotary positions, grouped-query attention."""
    return DecoderSpec(
        vocab_size=512,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        max_seq_len=256,
        mlp_hidden=176,
        norm="rmsnorm",
        mlp="swiglu",
        positions="rotary",
        rope_theta=10000.0,
        tie_embeddings=False,
        eps=1e-5,
        naming="llama",
        name="llama_demo",
    )


def register_core(registry: Registry) -> None:
    """The core's own named specs (applied by :data:`kvgraph.plugins.REGISTRY` on discovery)."""
    registry.add_spec("llama-demo", llama_demo)
