"""``kvgraph listen`` on real-time paced speech: per-word commit lag and the final text's WER.

The stream: examples/jfk.wav and tests/data/speech/*.wav (8 kHz telephone prompts, resampled to
16 kHz), with short pauses between them (~49 s). For each ``--min-chunk`` setting, ``kvgraph
listen - --output jsonl`` runs in a subprocess (tiny.en by default); once it says it is
listening, a thread writes the stream to its stdin as s16le at real-time pace (0.1 s pieces,
each written when a microphone would deliver it), and the parent reads the committed batches
from its stdout, stamping each line with the wall clock when it arrived.

A word's lag = the wall time its line was read less the wall time the audio up to the word's
end had been written (the definition of Macháček et al. 2023, whisper_streaming's "latency").
Other processes' CPU use during a run is measured (``quiet.Probe``); a setting is run up to
``--attempts`` times until one run had them below 0.3 cores, and the quietest run is reported.
Reported: median, p90 and max over all words, and over the words committed while the audio was
still arriving (the rest are committed at the end of the stream). The final text's word error
rate is against the offline transcript of the same stream (``transcribe(backend, stream)``,
openai's defaults), on normalised words (lower case, punctuation dropped), and also with the
number words zero..twenty written as digits (the offline transcript, conditioned on its previous
text, writes "press 1" where the streamed one writes "press one"), and with openai-whisper's
EnglishTextNormalizer (the Whisper paper's convention; it keeps "one" as a word). Targets (issue #29): median
lag <= 2.0 s, WER within 2 %.

    python benchmarks/listen.py [--model tiny.en] [--min-chunk 1.0,0.5] [--out benchmarks/results/listen.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, lscpu_model, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
CLIPS = ("examples/jfk.wav", "tests/data/speech/basic-pbx-ivr-main.wav", "tests/data/speech/demo-nogo.wav")
PAUSE_S = 1.0
PIECE_S = 0.1
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty".split()


def stream() -> np.ndarray:
    from models.whisper.audio.load import load_audio  # resamples the 8 kHz clips to 16 kHz

    gap = np.zeros(int(PAUSE_S * SR), np.float32)
    parts = []
    for clip in CLIPS:
        parts += [load_audio(str(ROOT / clip)), gap]
    return np.concatenate(parts[:-1])


def offline_text(model: str, audio: np.ndarray) -> str:
    from models.whisper.model.backend import load_backend
    from models.whisper.transcription.transcribe import transcribe

    return transcribe(load_backend(model), audio)["text"]


def digits(words: list[str]) -> list[str]:
    table = {w: str(i) for i, w in enumerate(NUMBERS)}
    return [table.get(w, w) for w in words]


def standard_words(text: str) -> list[str] | None:
    """``text`` through openai-whisper's EnglishTextNormalizer (the WER convention of the
    Whisper paper), split into words; None where openai-whisper is not installed."""
    try:
        from whisper.normalizers import EnglishTextNormalizer
    except ImportError:
        return None
    return EnglishTextNormalizer()(text).split()


def feed(pipe, pcm: bytes, written: list) -> None:
    """Write ``pcm`` in PIECE_S pieces at real-time pace; ``written`` gets ``(wall time, bytes
    written by then)`` after each piece."""
    step = int(PIECE_S * SR) * 2
    t0 = time.monotonic()
    for at in range(0, len(pcm), step):
        delay = t0 + (at + step) / (2 * SR) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        pipe.write(pcm[at : at + step])
        pipe.flush()
        written.append((time.monotonic(), min(len(pcm), at + step)))
    pipe.close()


def run_listen(model: str, min_chunk: float, audio: np.ndarray) -> dict:
    """One paced run of ``kvgraph listen``; its words with their lags."""
    cmd = [sys.executable, "-m", "kvgraph", "listen", "-", "--model", model, "--output", "jsonl"]
    cmd += ["--min-chunk-size", str(min_chunk)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
    )
    stderr = []
    for line in proc.stderr:
        stderr.append(line.decode())
        if b"listening on" in line:
            break
    else:
        raise RuntimeError("kvgraph listen did not start:\n" + "".join(stderr))
    threading.Thread(target=lambda: stderr.extend(x.decode() for x in proc.stderr), daemon=True).start()
    pcm = (np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    written: list = []
    with Probe() as probe:
        feeder = threading.Thread(target=feed, args=(proc.stdin, pcm, written), daemon=True)
        feeder.start()
        lines = [(time.monotonic(), json.loads(line)) for line in proc.stdout]
        proc.wait()
    feeder.join()
    if proc.returncode != 0:
        raise RuntimeError(f"kvgraph listen exited {proc.returncode}:\n" + "".join(stderr))
    counts = [n for _, n in written]
    words = []
    for seen, batch in lines:
        for w in batch["words"]:
            i = min(int(np.searchsorted(counts, round(w["end"] * SR) * 2)), len(counts) - 1)
            words.append({**w, "lag": round(seen - written[i][0], 3), "final": batch["final"]})
    return {"words": words, "other_cores": round(probe.other_cores, 2), "stderr_tail": stderr[-1].strip()}


def lag_stats(lags: list[float]) -> dict:
    if not lags:
        return {"n": 0}
    a = np.asarray(lags)
    return {
        "n": len(lags),
        "median": round(float(np.median(a)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "mean": round(float(a.mean()), 3),
        "max": round(float(a.max()), 3),
    }


def main() -> None:
    from models.whisper.streaming.agreement import word_error_rate, words_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--min-chunk", default="1.0,0.5", help="comma-separated --min-chunk-size values")
    ap.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="runs per setting at most, until one has other processes below 0.3 cores",
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "listen.json"))
    args = ap.parse_args()
    audio = stream()
    offline = offline_text(args.model, audio)
    reference, reference_std = words_of(offline), standard_words(offline)
    runs = {}
    for min_chunk in [float(x) for x in args.min_chunk.split(",")]:
        tries = []
        for _ in range(args.attempts):  # the quietest of up to --attempts runs
            quiet = wait_quiet(threshold=0.3, timeout=300)
            tries.append((run_listen(args.model, min_chunk, audio), quiet))
            if tries[-1][0]["other_cores"] < 0.3:
                break
        run, quiet = min(tries, key=lambda t: t[0]["other_cores"])
        text = "".join(w["word"] for w in run["words"])
        streamed, streamed_std = words_of(text), standard_words(text)
        live = [w["lag"] for w in run["words"] if not w["final"]]
        runs[str(min_chunk)] = {
            "quiet_before": quiet,
            "other_cores_during": run["other_cores"],
            "other_cores_of_each_try": [t[0]["other_cores"] for t in tries],
            "lag_s_all_words": lag_stats([w["lag"] for w in run["words"]]),
            "lag_s_words_committed_live": lag_stats(live),
            "wer": round(word_error_rate(reference, streamed), 4),
            "wer_numbers_as_digits": round(word_error_rate(digits(reference), digits(streamed)), 4),
            "wer_whisper_normalizer": None
            if reference_std is None
            else round(word_error_rate(reference_std, streamed_std), 4),
            "summary": run["stderr_tail"],
            "text": text.strip(),
            "words": [[w["word"].strip(), w["end"], w["lag"], w["final"]] for w in run["words"]],
        }
        r = runs[str(min_chunk)]
        print(
            f"min-chunk {min_chunk}: lag median {r['lag_s_all_words'].get('median')} s, "
            f"p90 {r['lag_s_all_words'].get('p90')} s; WER {r['wer']:.2%} "
            f"({r['wer_numbers_as_digits']:.2%} numbers as digits, {r['wer_whisper_normalizer']} with "
            f"whisper's normalizer); other cores {run['other_cores']}",
            flush=True,
        )
    report = {
        "machine": {**machine(), "lscpu_model": lscpu_model(), "loadavg": os.getloadavg()},
        "model": args.model,
        "stream": {
            "clips": CLIPS,
            "pause_s": PAUSE_S,
            "seconds": round(len(audio) / SR, 2),
            "piece_s": PIECE_S,
        },
        "targets": {"median_lag_s": 2.0, "wer": 0.02},
        "offline_text": offline,
        "offline_text_words": len(reference),
        "runs": runs,
    }
    write_json(report, args.out)


if __name__ == "__main__":
    main()
