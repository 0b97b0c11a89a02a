"""``kvgraph.compile``: the front of the MAX backend. It checks the options, picks the pass
pipeline (the cache layout and its capacity) and hands the graph to
:class:`kvgraph.max.decoder.CompiledDecoder`, the first point that imports MAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .analysis import limits
from .build import build
from .errors import InputError, InputTypeError, LoweringError
from .ir import Graph
from .numerics import check_compute_type
from .passes import compute_type as with_compute_type
from .passes import default_pipeline
from .spec import DecoderSpec

if TYPE_CHECKING:
    from .max.decoder import CompiledDecoder


def compile(
    spec_or_graph,
    weights: dict,
    *,
    kv_cache: bool = True,
    device: str = "cpu",
    passes=None,
    eager: bool = True,
    weights_mode: str = "registry",
    cache_layout: str = "auto",
    capacity: int | None = None,
    f16_weights: bool = True,
    compute_type: str = "float32",
    output_compute_type: str | None = None,
    exact_top_splits=(),
) -> CompiledDecoder:
    """Compile a decoder spec (or a full-sequence graph from ``kvgraph.build``) for MAX.

    ``weights_mode``: ``"registry"`` binds weights at load (one compile serves any weights
    of the same shapes); ``"constant"`` bakes them into the graph (see
    :func:`kvgraph.max.lower.lower`).

    ``f16_weights``: matrix weights whose values are all exactly float16 (an fp16
    checkpoint) are read as float16 by the one-token kernels, computing in float32:
    the same results with half the bytes per token. ``False`` keeps every weight float32.

    ``cache_layout``: ``"buffer"`` (fixed-capacity MAX buffers written in place;
    ``capacity`` rows, by default the graph's learned-position limit or the spec's
    ``max_seq_len``), ``"concat"`` (caches grow by a new tensor each step), or ``"auto"``
    (the default): ``"buffer"`` whenever a capacity is known, else ``"concat"``. The
    buffer layout was measured faster (README, Design notes); its states are written in
    place, so two branches stepped from one state need ``reorder`` (a stale state is
    refused). Ignored when ``passes`` is given.

    ``compute_type``: ``"float32"`` (exact) or ``"bfloat16"``: every weight linear with
    bfloat16 operands and float32 sums (:class:`kvgraph.passes.ComputeType`, run before the
    pipeline; AMX tiles or AVX512-BF16 where the CPU has them, else emulated on the float32 GEMM). It pays
    for many-row products (a prefill, an encoder); one-token steps read the weights either way.
    ``"int8"``: weights int8 with a scale per output row, activations float32 (a step reads
    half the bytes). ``output_compute_type``: the compute type of the linears whose value is
    an output (the logits; default ``compute_type``): ``"int8"`` there recomputes every
    output that may rank among a row's 16 largest in float32 (``ir.Linear.exact_top``), so
    the logits' argmax is float32's while the vocabulary projection reads int8 (in each group
    of logits ``exact_top_splits`` starts, e.g. Whisper's timestamp tokens)."""
    if device != "cpu":
        raise LoweringError(f"device={device!r}: this build lowers for 'cpu' only")
    if isinstance(spec_or_graph, DecoderSpec):
        g = build(spec_or_graph)
    elif isinstance(spec_or_graph, Graph):
        g = spec_or_graph
    else:
        raise InputTypeError(f"compile() takes a DecoderSpec or Graph, got {type(spec_or_graph).__name__}")
    g = _with_compute(g, compute_type, output_compute_type, exact_top_splits)
    if cache_layout not in ("auto", "concat", "buffer"):
        raise InputError(f"cache_layout={cache_layout!r}: expected 'auto', 'buffer' or 'concat'")
    if capacity is not None and cache_layout == "concat":
        raise InputError("capacity= is for cache_layout='buffer' (or 'auto') only")
    if passes is None and kv_cache and cache_layout != "concat":
        if capacity is None:
            capacity = limits(g)[1]
        if capacity is None and isinstance(spec_or_graph, DecoderSpec):
            capacity = spec_or_graph.max_seq_len
        if capacity is None and cache_layout == "buffer":
            raise InputError(
                f"cache_layout='buffer': graph {g.name} has no learned-position limit; "
                "pass capacity=<max rows the cache holds>"
            )
        if capacity is not None:
            passes = default_pipeline("buffer", capacity)
    from .max.decoder import CompiledDecoder  # imports MAX

    return CompiledDecoder(
        g,
        weights,
        kv_cache=kv_cache,
        passes=passes,
        eager=eager,
        weights_mode=weights_mode,
        f16_weights=f16_weights,
    )


def _with_compute(g: Graph, compute_type: str, output_compute_type, exact_top_splits) -> Graph:
    """``g`` with :func:`compile`'s compute types applied (unchanged when all are float32)."""
    outputs = check_compute_type(output_compute_type or compute_type, "output_compute_type")
    if check_compute_type(compute_type) == "float32" and outputs == "float32":
        return g
    if compute_type == "bfloat16":
        from .max.isa import note_bfloat16

        note_bfloat16()
    return with_compute_type(g, compute_type, outputs=outputs, exact_top_splits=exact_top_splits)
