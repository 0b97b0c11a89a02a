"""The names programs agree on: graph inputs and outputs, symbolic dims, state names.

``build`` gives the full-sequence graph these inputs and dims; the passes add ``past``
and the state inputs; the decoders (NumPy and MAX) call the programs by these names.
One module, so a rename cannot leave a matching string behind.
"""

from __future__ import annotations

#: the new token ids, i64[b, s]: the stream every cached program runs over
TOKENS = "tokens"
#: rows already cached, an i64[] scalar input of a cached step
PAST = "past"
#: the fixed cross-attention input (e.g. Whisper's audio features), f32[b, ctx, d]
CONTEXT = "context"
#: the output every decoder graph returns, f32[b, s, vocab] (prefill: [b, 1, vocab])
LOGITS = "logits"

#: symbolic dims: the batch, the new-token rows, and the cached rows (a dim named like the
#: ``past`` input whose value it is)
BATCH = "b"
SEQ = "s"
#: the distinct contexts a step's rows read (``ShareContexts``): rows are grouped
#: contiguously by context, ``b = c x g``; row ``i`` reads context ``i // (b / c)``
CONTEXTS = "c"
PAST_DIM = PAST

#: a step's calling convention: these inputs first, then its state (kept even if unread)
STEP_ARGS = (TOKENS, PAST)

CACHE_PREFIX = "cache."
#: outputs ``ExposeAttention`` adds: ``scores.<attention value name>``
SCORES_PREFIX = "scores."
HOISTED_PREFIX = "hoisted."


def cache_name(attn: str, which: str) -> str:
    """State name of attention ``attn``'s cached keys (``which="k"``) or values (``"v"``)."""
    return f"{CACHE_PREFIX}{attn}.{which}"


def hoisted_name(value: str) -> str:
    """State name of a step-invariant value computed once in prefill (``HoistInvariant``)."""
    return f"{HOISTED_PREFIX}{value}"


def scores_name(attn: str) -> str:
    """Output name of attention ``attn``'s exposed scores (``ExposeAttention``)."""
    return f"{SCORES_PREFIX}{attn}"
