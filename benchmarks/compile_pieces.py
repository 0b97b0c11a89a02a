"""Cold MAX compile of pieces of Whisper's encoder, each in a fresh process with an empty MAX
cache (a fresh HOME) and the program store off: which part of the cold compile costs what.

    python benchmarks/compile_pieces.py conv attn mlp encoder

Pieces: ``conv`` (the two GELU convolutions), ``attn`` (q/k/v linears and unmasked attention
over 1500 frames), ``mlp`` (LayerNorm, the 4x GELU MLP, residual add), ``block`` (attn + mlp),
``encoder`` (the whole encoder). Prints one line per piece (compile seconds, wall seconds).
Takes minutes per piece on a 2-core machine: run on demand."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import time, sys, numpy as np
import kvgraph
from kvgraph import ir
from kvgraph.ir import GraphBuilder
from kvgraph.types import f32, sym
from models.whisper import build_encoder
from models.whisper import load_checkpoint
import types
dims, w = load_checkpoint("tiny.en", keep_float16=True, dims_class=types.SimpleNamespace)
what = sys.argv[1]
d, H, T = dims.n_audio_state, dims.n_audio_head, dims.n_audio_ctx
g = GraphBuilder("piece")
if what == "conv":
    mel = g.input("mel", f32(sym("b"), dims.n_mels, 2 * T))
    x = g.add(ir.Transpose(mel), "mel_t")
    x = g.add(ir.Conv1d(x, g.weight("encoder.conv1.weight", (d, dims.n_mels, 3)), g.weight("encoder.conv1.bias", (d,)), 1, 1), "c1")
    x = g.add(ir.Gelu(x), "g1")
    x = g.add(ir.Conv1d(x, g.weight("encoder.conv2.weight", (d, d, 3)), g.weight("encoder.conv2.bias", (d,)), 2, 1), "c2")
    out = g.finish([("y", x)])
elif what in ("block", "attn", "mlp"):
    x = g.input("x", f32(sym("b"), T, d))
    B = "encoder.blocks.0."
    def lin(base, x, o, i, hint, bias=True):
        return g.add(ir.Linear(x, g.weight(base + ".weight", (o, i)), g.weight(base + ".bias", (o,)) if bias else None), hint)
    if what in ("block", "attn"):
        q = lin(B + "attn.query", x, d, d, "q"); k = lin(B + "attn.key", x, d, d, "k", False); v = lin(B + "attn.value", x, d, d, "v")
        x = g.add(ir.Attention(q, k, v, H, H, False, ir.scale_for(d // H)), "a")
    if what in ("block", "mlp"):
        h = g.add(ir.LayerNorm(x, g.weight(B + "mlp_ln.weight", (d,)), g.weight(B + "mlp_ln.bias", (d,)), 1e-5), "ln")
        u = g.add(ir.Gelu(lin(B + "mlp.0", h, 4 * d, d, "fc1")), "u")
        x = g.add(ir.Add(x, lin(B + "mlp.2", u, d, 4 * d, "fc2")), "x2")
    out = g.finish([("y", x)])
elif what == "encoder":
    out = build_encoder(dims)
from kvgraph.max.lower import lower
from kvgraph.max.runtime import session
mg, reg = lower(out, w)
t0 = time.perf_counter()
session().compile(mg)
print("RESULT", what, round(time.perf_counter() - t0, 1))
"""


def main(argv=None) -> int:
    for what in argv if argv is not None else sys.argv[1:]:
        home = tempfile.mkdtemp(prefix="kvgraph-cold-")
        env = dict(os.environ, HOME=home, KVGRAPH_CACHE_DIR="off", PYTHONPATH=str(ROOT))
        env.pop("XDG_CACHE_HOME", None)
        t0 = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-c", CHILD, what], cwd=ROOT, env=env, capture_output=True, text=True
        )
        line = [x for x in r.stdout.splitlines() if x.startswith("RESULT")]
        err = r.stderr[-500:] if r.returncode else ""
        print(what, line, f"wall {time.perf_counter() - t0:.1f}", err, flush=True)
        subprocess.run(["rm", "-rf", home], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
