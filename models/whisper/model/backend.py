"""Whisper compiled through kvgraph and running on MAX: the encoder and decoder programs, loaded
from a checkpoint (:func:`load_backend`)."""

from __future__ import annotations

import types
from concurrent.futures import ThreadPoolExecutor

import kvgraph
from kvgraph.errors import KvgraphError
from models.whisper.model.spec import build_encoder, cross_attention_name, spec_from_dims
from models.whisper.weights.load import load_checkpoint


class MaxWhisperBackend:
    """Whisper's encoder and decoder compiled through kvgraph and running on MAX.

    Implements the backend protocol of :mod:`models.whisper.decoding.protocol`: ``encode``,
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

    ``compute_type``: the arithmetic of the encoder and the decoder, by faster-whisper's names
    (:mod:`models.whisper.model.compute`): ``"float32"`` (default: exact, token for token
    openai-whisper's float32), ``"bfloat16"`` (the encoder's products on bfloat16 operands
    with float32 sums: AMX tiles or AVX512-BF16 where the CPU has them, else emulated on float32 ops, the
    same arithmetic, slower), ``"int8vocab"`` (the vocabulary projection on int8 weights, the
    logits that may be a row's 16 largest recomputed in float32), ``"int8vocab_bfloat16"``,
    ``"int8"`` / ``"int8_float32"`` (every decoder linear on int8 weights with per-row scales,
    the vocabulary's as int8vocab's) and ``"int8_bfloat16"``. Accuracy against float32:
    ``docs/compute_types.md``.

    ``defer=True``: build, load nothing yet (:meth:`pending_requests`, :meth:`finish_loading`),
    so several backends of one checkpoint (compute types) compile in one MAX call.
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
        compute_type: str = "float32",
        defer: bool = False,
    ):
        import time

        from kvgraph.max.runtime import ProgramRequest
        from kvgraph.passes import compute_type as with_compute_type
        from models.whisper.model.compute import split_compute_type
        from models.whisper.weights.alignment_heads import default_alignment_heads, heads_from

        self.dims, self.kv_cache = dims, kv_cache
        enc_type, dec_type, vocab_type = split_compute_type(compute_type)
        self.compute_type = compute_type
        if enc_type == "bfloat16":
            from kvgraph.max.isa import note_bfloat16

            note_bfloat16()  # one warning where bfloat16 runs emulated (no AMX, no AVX512-BF16)
        #: the cross-attention heads ``((layer, head), ...)`` word timestamps read
        #: (``models.whisper.weights.alignment_heads``); openai's default when the checkpoint names none
        self.alignment_heads = (
            default_alignment_heads(dims)
            if alignment_heads is None
            else heads_from(alignment_heads, dims, "alignment_heads=")
        )
        t0 = time.perf_counter()
        self.decoder = kvgraph.compile(
            spec_from_dims(dims),
            weights,
            kv_cache=kv_cache,
            cache_layout=cache_layout,
            eager=False,
            compute_type=dec_type,
            output_compute_type=vocab_type,
            # the timestamp tokens are the vocabulary's last 1,501 (<|0.00|> .. <|30.00|>, openai-
            # whisper's tokenizer): their top logits float32's too (the timestamp rules take an
            # argmax over them alone)
            exact_top_splits=(dims.n_vocab - 1501,),
        )
        # encoder + the decoder's first programs (+ ``preload``: more decoder programs, and
        # "alignment" for word timestamps' program) in one go: one stored artifact, or one compile
        encoder = ProgramRequest(with_compute_type(build_encoder(dims), enc_type, attention=True), weights)
        together = compute_type == "float32"  # else: the float32 mode's stored programs serve the rest
        extra = [encoder] if together else []
        if "alignment" in preload:
            extra.append(self.decoder.exposed_request(self.alignment_scores()))
        names = list(dict.fromkeys([*self.decoder.eager_programs, *(n for n in preload if n != "alignment")]))
        self._pending = (names, extra, encoder, together)
        self.compile_s = time.perf_counter() - t0
        if not defer:
            self.finish_loading()

    def pending_requests(self) -> list:
        """What a backend made with ``defer=True`` has yet to load: its programs' requests, to
        compile together with other backends' of the same weights (one MAX call:
        ``kvgraph.max.runtime.load_programs``) before :meth:`finish_loading` takes them from the
        in-process cache."""
        if self._pending is None:
            return []
        names, extra, encoder, together = self._pending
        return [*(self.decoder.request(n) for n in names), *extra, *([] if together else [encoder])]

    def finish_loading(self) -> None:
        """Load the programs (from the in-process cache, the program store, or compiled)."""
        import time

        from kvgraph.max.runtime import load_programs

        if self._pending is None:
            return
        t0 = time.perf_counter()
        names, extra, encoder, together = self._pending
        loaded = self.decoder.load(names, extra=extra)
        if together:
            self.encoder = loaded[0]
        else:  # loaded alone: a float32 encoder is found in the float32 mode's stored Module
            (self.encoder,) = load_programs([encoder])
        self._pending = None
        self.compile_s += time.perf_counter() - t0

    def encode(self, mel):
        import numpy as np

        mel = np.asarray(mel, dtype=np.float32)
        want = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.ndim != 3 or mel.shape[1:] != want:
            raise ValueError(f"encode: mel must be [batch, {want[0]}, {want[1]}], got {list(mel.shape)}")
        if self._pending is not None:
            raise KvgraphError("encode: this backend was made with defer=True; call finish_loading() first")
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


#: Every decoder program a transcription can run beyond a cached backend's first ones (prefill
#: and the few-row step), as ``preload`` names them: the GEMM step (more than
#: ``kvgraph.max.decoder.STEP_FEW_ROWS`` rows a step), batching's per-row step, the full
#: sequence (``kv_cache=False``) and word timestamps' attention scores. ``kvgraph prepare
#: --all-programs`` compiles them with the first ones, in one MAX compile.
ALL_PROGRAMS = ("step", "step_rows", "full", "alignment")


def load_backend(
    name_or_path="tiny.en", *, kv_cache: bool = True, compute_type: str = "float32", preload=()
) -> MaxWhisperBackend:
    """The MAX backend of checkpoint ``name_or_path``, ready to decode (``compute_type``,
    ``preload``: see :class:`MaxWhisperBackend`). ``dims`` is a plain namespace of openai's
    ``ModelDimensions`` fields (no torch import)."""
    from models.whisper.model.compute import split_compute_type

    split_compute_type(compute_type)  # before minutes of loading
    from models.whisper.weights.alignment_heads import load_alignment_heads

    # float16 weights as stored: the lowering reads them for its float16 kernels as they are
    # and widens copies only where a kernel wants float32 (no float32 copy of every weight).
    # Read in a second thread while this one imports MAX (~0.15 s each; the read's copies and
    # page faults run outside the GIL)
    with ThreadPoolExecutor(1, thread_name_prefix="kvgraph-checkpoint") as pool:
        reading = pool.submit(
            load_checkpoint, name_or_path, keep_float16=True, dims_class=types.SimpleNamespace
        )
        import kvgraph.max.runtime  # noqa: F401

        dims, weights = reading.result()
    backend = MaxWhisperBackend(
        dims,
        weights,
        kv_cache=kv_cache,
        alignment_heads=load_alignment_heads(name_or_path, dims),
        preload=preload,
        compute_type=compute_type,
    )
    # The encoder's program binds copies of its weights made for it (float32, transposed,
    # packed: the checkpoint's are float16) and MAX keeps what it binds; the decoder's later
    # programs read decoder weights only. This checkpoint was read for this backend alone,
    # so its encoder arrays go (tiny.en: 16 MB of the process's peak; base: 40 MB).
    for name in [n for n in weights if n.startswith("encoder.")]:
        del weights[name]
    return backend
