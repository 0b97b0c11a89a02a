"""Test doubles of the Whisper backend protocol on openai-whisper's torch model: the oracle's
own forward passes behind kvgraph's ``encode`` / ``prefill`` / ``step`` / ``reorder`` /
``alignment``, so decoding code can be compared with openai's on the same logits."""

from __future__ import annotations

import numpy as np
import torch
from whisper.model import ModelDimensions, Whisper

# --------------------------------------------------------------------------
# Test double backend


class TorchBackend:
    """``WhisperBackend`` on top of an openai-whisper torch model.

    state = {"tokens": i64[b, t] history, "af": audio features, "cache": kv dict}
    Each call installs openai's kv-cache hooks on a copy of the cache and
    removes them afterwards, so states are immutable values.
    """

    def __init__(self, model: Whisper):
        self.model = model.eval()
        self.dims = model.dims
        self.calls: list[tuple] = []

    def _run(self, tokens, af, cache):
        cache, hooks = self.model.install_kv_cache_hooks(cache)
        try:
            logits = self.model.decoder(tokens, af, kv_cache=cache)
        finally:
            for h in hooks:
                h.remove()
        return logits, cache

    @torch.no_grad()
    def encode(self, mel):
        assert mel.dtype == np.float32 and mel.ndim == 3
        self.calls.append(("encode", mel.shape))
        return self.model.encoder(torch.from_numpy(mel)).numpy()

    @torch.no_grad()
    def prefill(self, tokens, audio_features):
        assert tokens.dtype == np.int64 and tokens.shape[0] == audio_features.shape[0]
        self.calls.append(("prefill", tokens.copy()))
        toks = torch.from_numpy(tokens)
        af = torch.from_numpy(audio_features)
        logits, cache = self._run(toks, af, None)
        return logits[:, -1].numpy(), {"tokens": toks, "af": af, "cache": cache}

    @torch.no_grad()
    def step(self, tokens, state):
        assert tokens.dtype == np.int64 and tokens.shape[0] == state["tokens"].shape[0]
        self.calls.append(("step", tokens.copy()))
        toks = torch.from_numpy(tokens)
        history = torch.cat([state["tokens"], toks], dim=1)
        if toks.shape[1] == 1:
            logits, cache = self._run(toks, state["af"], state["cache"])
        else:
            # openai's TextDecoder cannot take several new tokens on top of a
            # kv cache (its causal mask is not offset); recompute everything.
            logits, cache = self._run(history, state["af"], None)
            logits = logits[:, -toks.shape[1] :]
        return logits.numpy(), {"tokens": history, "af": state["af"], "cache": cache}

    def reorder(self, state, indices):
        self.calls.append(("reorder", np.asarray(indices).copy()))
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        return {
            "tokens": state["tokens"][idx],
            "af": state["af"][idx],
            "cache": {k: v[idx] for k, v in state["cache"].items()},
        }

    def kinds(self):
        return [c[0] for c in self.calls]


class AligningTorchBackend(TorchBackend):
    """``TorchBackend`` with word timestamps' ``alignment``: openai's own forced pass with
    forward hooks on its cross-attention modules (what ``find_alignment`` does)."""

    @property
    def alignment_heads(self):
        return [tuple(p) for p in self.model.alignment_heads.indices().T.tolist()]

    @torch.no_grad()
    def alignment(self, tokens, audio_features):
        from whisper.model import disable_sdpa

        self.calls.append(("alignment", tokens.copy()))
        qks = {}
        hooks = [
            b.cross_attn.register_forward_hook(lambda _, ins, outs, i=i: qks.__setitem__(i, outs[-1]))
            for i, b in enumerate(self.model.decoder.blocks)
        ]
        try:
            with disable_sdpa():
                logits = self.model.decoder(torch.from_numpy(tokens), torch.from_numpy(audio_features))
        finally:
            for h in hooks:
                h.remove()
        return logits.numpy(), {(l, h): qks[l][:, h].numpy() for l, h in self.alignment_heads}


def random_model(n_vocab: int, seed: int = 0) -> Whisper:
    dims = ModelDimensions(
        n_mels=80,
        n_audio_ctx=1500,
        n_audio_state=64,
        n_audio_head=2,
        n_audio_layer=1,
        n_vocab=n_vocab,
        n_text_ctx=448,
        n_text_state=64,
        n_text_head=2,
        n_text_layer=2,
    )
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        # openai-whisper creates this with torch.empty
        model.decoder.positional_embedding.normal_(0, 0.02)
    return model.eval()


class KvgraphDraws:
    """``with KvgraphDraws(seed):`` openai-whisper samples at T > 0 with kvgraph's draws: its
    ``Categorical(logits=...).sample()`` becomes ``sample(logits, 1.0, rng)`` on a NumPy
    generator seeded with ``seed``, the generator ``transcribe(..., seed=seed)`` draws from.
    openai's temperature fallback, ranking and seeking then run on the same draws as kvgraph's,
    so a sampled transcription is compared token for token (the draws themselves are
    kvgraph's; their probabilities are compared with torch's in test_filters_search.py)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __enter__(self):
        import whisper.decoding

        from models.whisper.decoding.search import sample

        rng = self.rng

        class Drawn:
            def __init__(self, logits):
                self.logits = logits

            def sample(self):
                return torch.from_numpy(sample(self.logits.detach().numpy(), 1.0, rng))

        self.saved = whisper.decoding.Categorical
        whisper.decoding.Categorical = Drawn
        return self

    def __exit__(self, *exc):
        import whisper.decoding

        whisper.decoding.Categorical = self.saved


def torch_tiny_en():
    """openai's torch ``Whisper`` with the tiny.en weights kvgraph ships (its CTranslate2
    package mapped to openai's names); ``pytest.skip`` when they are not installed."""
    import pytest

    try:
        from models.whisper.weights.load import load_checkpoint

        dims, weights = load_checkpoint("tiny.en")
    except Exception as e:  # noqa: BLE001 - weights package missing etc.
        pytest.skip(f"tiny.en weights unavailable: {type(e).__name__}: {e}")
    model = Whisper(dims)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model.eval()
