"""OpenAI Whisper on kvgraph: the decoder spec, the encoder graph, and the compiled model."""

from __future__ import annotations

import contextlib
import types

import kvgraph


def spec_from_dims(dims) -> kvgraph.DecoderSpec:
    """The Whisper text decoder as a kvgraph spec, for an openai-whisper ``ModelDimensions``.

    Pre-LayerNorm blocks with causal self-attention, cross-attention over the audio
    features, a 4x GELU MLP, learned positions and logits tied to the token embedding;
    parameter names equal openai-whisper's ``state_dict`` keys.
    """
    return kvgraph.DecoderSpec(
        vocab_size=dims.n_vocab,
        d_model=dims.n_text_state,
        n_heads=dims.n_text_head,
        n_layers=dims.n_text_layer,
        max_seq_len=dims.n_text_ctx,
        mlp_hidden=4 * dims.n_text_state,
        norm="layernorm",
        mlp="gelu",
        positions="learned",
        cross_attention=kvgraph.CrossAttention(context_len=dims.n_audio_ctx, context_dim=dims.n_audio_state),
        tie_embeddings=True,
        eps=1e-5,
        naming="whisper",
        name="whisper_decoder",
    )


def build_encoder(dims) -> kvgraph.Graph:
    """Whisper's audio encoder as kvgraph IR: ``mel f32[b, n_mels, 2*n_audio_ctx]`` ->
    ``features f32[b, n_audio_ctx, n_audio_state]``.

    Two GELU convolutions (kernel 3, padding 1; the second with stride 2), the stored
    sinusoidal positional embedding, non-causal pre-LN blocks, a final LayerNorm.
    """
    from kvgraph import ir
    from kvgraph.ir import GraphBuilder
    from kvgraph.types import f32, sym

    d, H, T = dims.n_audio_state, dims.n_audio_head, dims.n_audio_ctx
    g = GraphBuilder("whisper_encoder")
    mel = g.input("mel", f32(sym("b"), dims.n_mels, 2 * T))

    def w(name, *shape):
        return g.weight(name, shape)

    def ln(base, x, hint):
        return g.add(ir.LayerNorm(x, w(base + ".weight", d), w(base + ".bias", d), 1e-5), hint)

    def lin(base, x, out_dim, in_dim, hint, bias=True):
        return g.add(
            ir.Linear(x, w(base + ".weight", out_dim, in_dim), w(base + ".bias", out_dim) if bias else None),
            hint,
        )

    x = g.add(ir.Transpose(mel), "mel_t")
    x = g.add(
        ir.Conv1d(x, w("encoder.conv1.weight", d, dims.n_mels, 3), w("encoder.conv1.bias", d), 1, 1), "conv1"
    )
    x = g.add(ir.Gelu(x), "conv1_gelu")
    x = g.add(ir.Conv1d(x, w("encoder.conv2.weight", d, d, 3), w("encoder.conv2.bias", d), 2, 1), "conv2")
    x = g.add(ir.Gelu(x), "conv2_gelu")
    x = g.add(ir.Add(x, w("encoder.positional_embedding", T, d)), "x")
    for i in range(dims.n_audio_layer):
        B, p = f"encoder.blocks.{i}.", f"e{i}."
        h = ln(B + "attn_ln", x, p + "attn_ln")
        q = lin(B + "attn.query", h, d, d, p + "q")
        k = lin(B + "attn.key", h, d, d, p + "k", bias=False)
        v = lin(B + "attn.value", h, d, d, p + "v")
        a = g.add(ir.Attention(q, k, v, H, H, False, ir.scale_for(d // H)), p + "attn")
        x = g.add(ir.Add(x, lin(B + "attn.out", a, d, d, p + "attn_out")), p + "x1")
        h = ln(B + "mlp_ln", x, p + "mlp_ln")
        u = g.add(ir.Gelu(lin(B + "mlp.0", h, 4 * d, d, p + "fc1")), p + "gelu")
        x = g.add(ir.Add(x, lin(B + "mlp.2", u, d, 4 * d, p + "fc2")), p + "x2")
    out = ln("encoder.ln_post", x, "features")
    return g.finish([("features", out)])


# ----------------------------------------------------------------------------- MAX model


class MaxWhisperBackend:
    """Whisper's encoder and decoder compiled through kvgraph and running on MAX.

    Implements the backend protocol of :mod:`models.whisper_decode`: ``encode``,
    ``prefill``, ``step``, ``reorder``. The decoder runs the cached prefill/step programs
    (``kv_cache=True``) or recomputes the full sequence every step (``kv_cache=False``).

    The cache layout defaults to ``"buffer"`` (as ``kvgraph.compile``'s does): fixed-capacity
    caches (``n_text_ctx`` rows) written in place, measured faster than the functional
    concat for Whisper's steps (README, Design notes). Whisper decoding steps each state
    once, in order, and beam search branches through ``reorder`` (a copy); a stale state
    would be refused by the decoder.

    ``preload``: decoder programs to compile (or read from the store) together with the first
    ones rather than on first use, e.g. ``("step_rows", "alignment")`` for batching and word
    timestamps; one MAX compile for all of them costs little more than for the first ones.
    """

    def __init__(
        self,
        dims,
        weights,
        *,
        kv_cache: bool = True,
        cache_layout: str = "buffer",
        alignment_heads=None,
        preload=(),
    ):
        import time

        from kvgraph.max.runtime import ProgramRequest
        from models.alignment_heads import default_alignment_heads, heads_from

        self.dims, self.kv_cache = dims, kv_cache
        #: the cross-attention heads ``((layer, head), ...)`` word timestamps read
        #: (``models.alignment_heads``); openai's default when the checkpoint names none
        self.alignment_heads = (
            default_alignment_heads(dims)
            if alignment_heads is None
            else heads_from(alignment_heads, dims, "alignment_heads=")
        )
        t0 = time.perf_counter()
        self.decoder = kvgraph.compile(
            spec_from_dims(dims), weights, kv_cache=kv_cache, cache_layout=cache_layout, eager=False
        )
        # encoder + the decoder's first programs (+ ``preload``: more decoder programs, and
        # "alignment" for word timestamps' program) in one go: one stored artifact, or one compile
        extra = [ProgramRequest(build_encoder(dims), weights)]
        if "alignment" in preload:
            extra.append(self.decoder.exposed_request(self.alignment_scores()))
        names = [*self.decoder.eager_programs, *(n for n in preload if n != "alignment")]
        (self.encoder, *_) = self.decoder.load(names, extra=extra)
        self.compile_s = time.perf_counter() - t0

    def encode(self, mel):
        import numpy as np

        mel = np.asarray(mel, dtype=np.float32)
        want = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.ndim != 3 or mel.shape[1:] != want:
            raise ValueError(f"encode: mel must be [batch, {want[0]}, {want[1]}], got {list(mel.shape)}")
        return self.encoder(mel)[0].to_numpy()

    def prefill(self, tokens, audio_features):
        return self.decoder.prefill(tokens, audio_features)

    def step(self, tokens, state):
        return self.decoder.step(tokens, state)

    def reorder(self, state, indices):
        return self.decoder.reorder(state, indices)

    def alignment(self, tokens, audio_features):
        """The forced pass of word timestamps: ``(logits f32[b, t, vocab], {(layer, head):
        f32[b, t, n_audio_ctx]})``, the pre-softmax cross-attention scores (q·kᵀ/√d_head) of
        the alignment heads over ``tokens``, from the full-sequence decoder program with
        those scores as extra outputs (``ExposeAttention``), compiled on first use."""
        which = self.alignment_scores()
        logits, scores = self.decoder.logits_and_scores(tokens, audio_features, which=which)
        out = {}
        for layer, head in self.alignment_heads:
            name = cross_attention_name(layer)
            out[(layer, head)] = scores[name][:, which[name].index(head)]
        return logits, out

    def alignment_scores(self) -> dict[str, list[int]]:
        """The attention scores :meth:`alignment` asks of the decoder, ``{cross-attention
        value name: [head, ...]}`` (its program: ``decoder.exposed_request(...)`` of this)."""
        which: dict[str, list[int]] = {}
        for layer, head in self.alignment_heads:
            which.setdefault(cross_attention_name(layer), []).append(head)
        return which


def cross_attention_name(layer: int) -> str:
    """The value name ``kvgraph.build`` gives layer ``layer``'s cross-attention (``b1.cross``)."""
    return f"b{layer}.cross"


def load_checkpoint(name_or_path, *, keep_float16: bool = False, dims_class=None):
    """``(dims, weights)`` for ``"tiny.en"``, ``"base"``, a CTranslate2 directory or a ``.pt`` file
    (see ``models.whisper_weights.load_checkpoint``)."""
    from models.whisper_weights import load_checkpoint as _load

    return _load(name_or_path, keep_float16=keep_float16, dims_class=dims_class)


def load_backend(name_or_path="tiny.en", *, kv_cache: bool = True) -> MaxWhisperBackend:
    """The MAX backend of checkpoint ``name_or_path``, ready to decode.

    openai-whisper's decoding code (with torch: about a second of imports) is needed only
    once the backend is loaded, so it is imported in a background thread while this thread
    reads the checkpoint and loads the MAX programs (their file reads, hashing, weight
    conversions and MAX's own loading leave the interpreter to the import much of the time;
    measured in the README, *Performance*)."""
    from models.alignment_heads import load_alignment_heads

    pre = _BackgroundImport("models.whisper_decode")  # torch, openai-whisper
    # float16 weights as stored: the lowering reads them for its float16 kernels as they are
    # and widens copies only where a kernel wants float32 (no float32 copy of every weight)
    try:
        dims, weights = load_checkpoint(name_or_path, keep_float16=True, dims_class=types.SimpleNamespace)
        backend = MaxWhisperBackend(
            dims, weights, kv_cache=kv_cache, alignment_heads=load_alignment_heads(name_or_path, dims)
        )
    except BaseException:
        pre.thread.join()  # no import left running while the error unwinds (and the process exits)
        raise
    pre.join()
    from whisper.model import ModelDimensions

    backend.dims = ModelDimensions(**vars(dims)) if not isinstance(dims, ModelDimensions) else dims
    return backend


def defer_numba() -> None:
    """Import numba on first use instead of with openai-whisper (0.1-0.2 s of the start-up:
    numba and llvmlite). openai-whisper imports numba only to ``numba.jit`` its word-timestamp
    DTW at import time; until then ``numba`` is a stand-in module whose ``jit`` returns a
    wrapper that compiles with the real numba on the first call (as numba itself compiles
    lazily), and any other attribute access (a submodule import reads ``__path__``) imports
    the real numba and hands over to it. Used by kvgraph's command line, whose process it
    owns; a library caller keeps the plain import."""
    import sys

    if "numba" in sys.modules:
        return
    sys.modules["numba"] = _NumbaStandIn("numba")


def _real_numba():
    import importlib
    import sys

    if isinstance(sys.modules.get("numba"), _NumbaStandIn):
        del sys.modules["numba"]
    return importlib.import_module("numba")


class _NumbaStandIn(types.ModuleType):
    """``numba`` until it is used (see :func:`defer_numba`)."""

    def __init__(self, name):
        super().__init__(name)
        self._pending = []  # (fn, jit args, jit kwargs) not compiled yet

    def jit(self, *args, **kwargs):
        if args and callable(args[0]) and not kwargs:  # bare @numba.jit
            return _real_numba().jit(*args)

        def decorate(fn):
            import functools

            @functools.wraps(fn)
            def call(*a, **k):
                return self._compile_all()[fn](*a, **k)

            self._pending.append((fn, args, kwargs))
            return call

        return decorate

    def _compile_all(self) -> dict:
        """jit every deferred function with the real numba and rebind the module globals
        that named the stand-in wrappers (a jitted function calls its jitted neighbours)."""
        if not hasattr(self, "_compiled"):
            numba = _real_numba()
            self._compiled = {}
            for fn, args, kwargs in self._pending:
                self._compiled[fn] = numba.jit(*args, **kwargs)(fn)
            for fn, jitted in self._compiled.items():
                g = fn.__globals__
                if getattr(g.get(fn.__name__), "__wrapped__", None) is fn:
                    g[fn.__name__] = jitted
        return self._compiled


#: Standard-library modules both the MAX path and openai-whisper's import: imported before
#: the background import starts, so the two threads never wait on each other's module locks.
_SHARED_IMPORTS = (
    "asyncio",
    "concurrent.futures",
    "csv",
    "dataclasses",
    "email.utils",
    "importlib.metadata",
    "importlib.resources",
    "json",
    "logging",
    "socket",
    "ssl",
    "subprocess",
    "typing_extensions",
    "uuid",
    "zipfile",
)


class _BackgroundImport:
    """Import ``module`` in a daemon thread; :meth:`join` waits for it and re-raises its error
    (importing again in the calling thread, so the error is the one a plain import raises)."""

    def __init__(self, module: str):
        import importlib
        import threading

        for name in _SHARED_IMPORTS:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        self.module, self.error = module, None
        self.thread = threading.Thread(target=self._run, name="kvgraph-import", daemon=True)
        self.thread.start()

    def _run(self):
        import importlib

        try:
            importlib.import_module(self.module)
        except BaseException as e:  # noqa: BLE001 - re-raised by join()
            self.error = e

    def join(self):
        import importlib

        self.thread.join()
        if self.error is not None:
            importlib.import_module(self.module)  # raises as a plain import would


class WhisperModel:
    """A compiled Whisper: ``transcribe(audio, **options)`` returns openai-whisper's result
    dict (``text``, ``segments``, ``language``) computed on MAX."""

    def __init__(self, backend: MaxWhisperBackend):
        self.backend = backend
        self.dims = backend.dims

    def transcribe(self, audio, **options) -> dict:
        from models.whisper_decode import transcribe

        return transcribe(self.backend, audio, **options)

    def transcribe_many(
        self, audios, *, batch_size: int = 8, errors: str = "raise", progress=None, **options
    ):
        """``transcribe`` of each of ``audios`` (paths or 16 kHz arrays) with up to
        ``batch_size`` files decoding at once, their decoder steps batched into one MAX call
        (``models.batching``): one result per input, in order, each equal to a sequential
        ``transcribe`` of that input. ``errors="return"`` puts a failed input's exception in
        its place instead of raising it once all have finished."""
        from models.batching import transcribe_many

        return transcribe_many(
            self.backend, audios, batch_size=batch_size, errors=errors, progress=progress, **options
        )

    def engine(self, batch_size: int = 8, **default_options):
        """A :class:`models.batching.BatchedTranscriber` on this model: ``submit(audio,
        **options) -> Future`` of the result dict, ``close(wait=True)``."""
        from models.batching import BatchedTranscriber

        return BatchedTranscriber(self.backend, batch_size=batch_size, **default_options)


def load_model(name_or_path="tiny.en", *, kv_cache: bool = True) -> WhisperModel:
    """Load weights and compile encoder + decoder on MAX (cold compiles take minutes)."""
    return WhisperModel(load_backend(name_or_path, kv_cache=kv_cache))
