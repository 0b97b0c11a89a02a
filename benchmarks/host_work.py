"""Host work per decoding step: everything ``transcribe`` does on the CPU besides the MAX
programs (logit filters, torch-exact log-softmax statistics, the search, Python), measured by
replaying a recorded decode. A first run records every backend call's outputs; the replays
answer each call with its recorded output at once, so a replay's time is the host's alone
(the decode itself, ``DecodingTask.run``, is timed: the log-mel and the segment bookkeeping
around it are left out). Issue #26's target: <= 0.2 ms per step at one row, <= 0.05 ms per
row at 8 rows (beam 8; best_of 8 is measured too).

Both ways of computing torch's float32 statistics are measured in the same run: the Mojo
twin (``torch_float.mojo``, the default where it builds) and the NumPy emulation.

    python benchmarks/host_work.py [--reps 5] [--out benchmarks/results/host_work.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import machine, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """A backend that keeps every call's output (in order) for :class:`Replay`."""

    def __init__(self, inner):
        self.inner, self.log = inner, []
        self.dims, self.alignment_heads = inner.dims, inner.alignment_heads

    def _keep(self, out):
        self.log.append(out)
        return out

    def encode(self, mel):
        return self._keep(np.array(self.inner.encode(mel)))

    def prefill(self, tokens, features):
        logits, state = self.inner.prefill(tokens, features)
        return self._keep((np.array(logits), state))

    def step(self, tokens, state):
        logits, state = self.inner.step(tokens, state)
        return self._keep((np.array(logits), state))

    def reorder(self, state, indices):
        return self._keep(self.inner.reorder(state, indices))

    def release(self):
        getattr(self.inner, "release", lambda: None)()


class Replay:
    """Answers each call with the recorded output (no compute). The decode loop masks the
    logits it is given in place, so each answer is a copy: made at the call (``fresh``, the
    default) into one of two buffers kept per shape, so that the logits are in cache and
    their memory reused, as a step program leaves the logits it has just written (the copy's
    seconds are kept in ``copy_s`` for the caller to take off); or all made beforehand
    (``fresh=False``: each step's logits read from memory, not cache, and freed at the end --
    this benchmark's method before 2026-12-07 evening)."""

    def __init__(self, rec: Recorder, fresh: bool = True):
        self.fresh, self.copy_s, self.at = fresh, 0.0, 0
        self.log = rec.log if fresh else [_copied(out) for out in rec.log]
        self.dims, self.alignment_heads = rec.dims, rec.alignment_heads
        self._buffers: dict = {}

    def _into_buffer(self, out):
        if isinstance(out, tuple):
            return tuple(self._into_buffer(x) for x in out)
        if not isinstance(out, np.ndarray):
            return out
        pair = self._buffers.setdefault((out.shape, out.dtype.str), [np.empty_like(out), np.empty_like(out)])
        pair.reverse()  # the other one than last time: the loop may still hold that
        np.copyto(pair[0], out)
        return pair[0]

    def _next(self, *_):
        out = self.log[self.at]
        self.at += 1
        if self.fresh:
            t0 = time.perf_counter()
            out = self._into_buffer(out)
            self.copy_s += time.perf_counter() - t0
        return out

    prefill = step = reorder = _next  # all inside DecodingTask._main_loop

    def encode(self, *_):  # outside the decode's clock: its copy is not counted
        out = self.log[self.at]
        self.at += 1
        return _copied(out) if self.fresh else out

    def release(self):
        pass


def _copied(out):
    if isinstance(out, tuple):
        return tuple(_copied(x) for x in out)
    return out.copy() if isinstance(out, np.ndarray) else out


class DecodeClock:
    """Adds up the seconds spent in ``DecodingTask.<method>`` while it is installed (``run``:
    a window's whole decode; ``_main_loop``: its steps, without the task's set-up and the
    results' text, compression ratio and ranking)."""

    def __init__(self, method: str = "run"):
        from models.whisper.decoding.task import DecodingTask

        self.cls, self.method, self.seconds = DecodingTask, method, 0.0
        self.inner = getattr(DecodingTask, method)

    def __enter__(self):
        inner = self.inner

        def timed(task, *args):
            t0 = time.perf_counter()
            try:
                return inner(task, *args)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(self.cls, self.method, timed)
        return self

    def __exit__(self, *exc):
        setattr(self.cls, self.method, self.inner)


def measure(backend, audio, options: dict, reps: int, rows: int) -> dict:
    """Per-step host milliseconds of ``transcribe(audio, **options)``, replayed."""
    from models.whisper.decoding import torch_float as tf
    from models.whisper.transcription.transcribe import transcribe

    rec = Recorder(backend)
    ref = transcribe(rec, audio, **options)
    steps = ref["timings"]["step_calls"] + ref["timings"]["prefill_calls"]
    windows = ref["timings"]["encode_calls"]
    out = {"text": ref["text"], "steps": steps, "rows": rows, "windows": windows}
    native = tf.native_library
    ways = (("mojo", native, True), ("numpy", lambda: None, True), ("mojo_premade", native, False))
    for name, lib, fresh in ways:
        tf.native_library = lib
        try:
            times, loops = [], []
            for _ in range(reps):
                replay = Replay(rec, fresh)
                with DecodeClock() as clock, DecodeClock("_main_loop") as loop:
                    r = transcribe(replay, audio, **options)
                times.append(clock.seconds - replay.copy_s)  # the copies made at the calls off
                loops.append(loop.seconds - replay.copy_s)
                assert r["text"] == ref["text"] and replay.at == len(rec.log)
        finally:
            tf.native_library = native
        host, in_loop = min(times), min(loops)  # the fastest replay: the least disturbed
        out[name] = {
            "decode_s": host,
            "ms_per_step": round(1e3 * host / steps, 4),
            "ms_per_row_step": round(1e3 * host / steps / rows, 4),
            "loop_ms_per_step": round(1e3 * in_loop / steps, 4),
            "loop_ms_per_row_step": round(1e3 * in_loop / steps / rows, 4),
            "ms_per_window_outside_loop": round(1e3 * (host - in_loop) / windows, 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host_work.json"))
    args = ap.parse_args()

    from models.whisper.audio.load import load_audio
    from models.whisper.decoding import torch_float as tf
    from models.whisper.model.backend import load_backend

    assert tf.native_library() is not None, "the Mojo twin did not build"
    backend = load_backend("tiny.en")
    jfk = load_audio(str(ROOT / "examples" / "jfk.wav"))
    cases = {
        "greedy, 1 row (temperature 0)": (dict(temperature=0.0), 1),
        "beam 5 (5 rows)": (dict(temperature=0.0, beam_size=5), 5),
        "best_of 5 sampling at T=0.5 (5 rows)": (dict(temperature=0.5, best_of=5, seed=0), 5),
        # the target's "8 rows"
        "beam 8 (8 rows)": (dict(temperature=0.0, beam_size=8), 8),
        "best_of 8 sampling at T=0.5 (8 rows)": (dict(temperature=0.5, best_of=8, seed=0), 8),
    }
    results = {}
    for name, (options, rows) in cases.items():
        results[name] = measure(backend, jfk, options, args.reps, rows)
        print(name, {k: results[name][k] for k in ("mojo", "mojo_premade", "steps", "windows")}, flush=True)
    write_json(
        {
            "benchmark": "host_work",
            "machine": machine(),
            "audio": "examples/jfk.wav (11 s), tiny.en",
            "method": (
                "a recorded decode replayed with no compute; DecodingTask.run timed, fastest of --reps; "
                "mojo and numpy: each call's output copied at the call (in cache, as a program leaves its "
                "logits), the copies' time taken off; mojo_premade: every output copied beforehand (read "
                "from memory), the method before 2026-12-07 evening"
            ),
            "target_ms": {"1 row": 0.2, "per row, 8 rows": 0.05},
            "cases": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
