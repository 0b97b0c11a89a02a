"""Declare a Llama-style decoder, rewrite it for KV caching, compile it on MAX, generate."""

import numpy as np

import kvgraph
from kvgraph.passes import default_pipeline

spec = kvgraph.DecoderSpec(  # = kvgraph.specs.get("llama-demo")
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
    tie_embeddings=False,
    name="llama_demo",
)
weights = kvgraph.init_weights(spec, seed=0)  # random weights: a demo, not a model

result = kvgraph.run_passes(kvgraph.build(spec), default_pipeline())
print(kvgraph.format_graph(result.step))  # the cached single-step program

model = kvgraph.compile(spec, weights)  # prefill + step on MAX (minutes cold)
prompt = np.array([[1, 2, 3, 4]])
logits, state = model.prefill(prompt)
out = [int(logits.argmax(-1)[0])]
for _ in range(15):  # greedy decoding, one token per step
    logits, state = model.step(np.array([[out[-1]]]), state)
    out.append(int(logits[0, -1].argmax()))
print("generated:", out)

# the cache-off fallback gives the same tokens
full = model.logits(np.concatenate([prompt, [out[:-1]]], axis=1))
assert (full[0, 3:].argmax(-1) == out).all()
print("cached steps agree with full recomputation")
