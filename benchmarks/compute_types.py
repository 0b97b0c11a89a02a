"""kvgraph's ``compute_type`` modes side by side: speed, memory and accuracy of Whisper
(default tiny.en) in each mode of ``models.whisper.model.compute`` (the encoder in float32 or
bfloat16, the decoder's linears in float32 or int8), beside faster-whisper (CTranslate2) int8
and float32 on the same weights and audio.

Per kvgraph mode, each in its own process (``load_model(name, compute_type=mode)``):

1. encoder: one 30 s mel window (JFK's), best and median of ``--repeats`` calls;
2. decoder steps: the 1-row step and the 8-row step (8 distinct audios), ``backend.decoder``
   after a prefill of 48 tokens (``step_floor.few_cases``); each repetition is the mean of
   ``--calls`` calls after one untimed call (the float32 decoder in float32 and bfloat16, the
   int8 one in the int8 modes);
3. corpus: every clip of ../shared/data/speech/*.wav and examples/jfk.wav transcribed one
   after the other (greedy, temperature 0, language "en", no timestamp tokens), total wall
   time after the model is loaded (fastest of ``--corpus-reps`` passes), each clip's text and
   tokens;
4. peak RSS: ``ru_maxrss`` of a whole process that loads the model and transcribes JFK, with
   a program store of that mode alone (``rss_store``).

faster-whisper runs in the interpreter of ``--faster-python`` (default ``$FASTER_WHISPER_PYTHON``,
else this one), skipped with a message where it lacks faster_whisper; it reads
the CTranslate2 model directory kvgraph parses (``resolve_source``), ``beam_size=1``
(greedy), temperature 0, language "en", ``without_timestamps=True``, no VAD. Every engine
reads the same decoded 16 kHz arrays (kvgraph's ``load_audio``, saved to a temporary .npz).

Accuracy, against the reference engine (kvgraph float32, else the first mode): the share of
clips whose token sequence is identical; ``prefix_agreement`` = sum over clips of the common
prefix length / sum of the longer sequence's length; ``position_agreement`` = sum over clips
of the positions i where both sequences hold the same token / sum of the longer length (one
inserted token shifts every later position: a lower bound); ``aligned_agreement`` = 1 - token
edits (Levenshtein over token ids, as WER over words) summed over clips / reference tokens
summed, i.e. 1 - the token error rate. WER
(word-level Levenshtein, ``models.whisper.streaming.agreement``): edits summed over clips /
reference words summed, words lower-cased with punctuation dropped (numbers are not
normalised: "1" and "one" differ), against the read scripts (speech/transcripts.txt; JFK's
inaugural sentence) and against the reference engine's text.

Timed runs wait for a quiet machine (``quiet.wait_quiet``); a run during which other
processes kept ``--threshold`` cores or more busy is discarded and run again (at most
``--retries`` times, then kept and flagged busy). Whisper.cpp is not measured (no GGML weights
offline); the JSON says what was checked. JSON (default benchmarks/results/compute_types.json)
with lscpu's model name and the date; a table on stdout.

    python benchmarks/compute_types.py [--model tiny.en] [--modes float32,bfloat16,int8,int8_bfloat16]
        [--repeats 10] [--corpus-reps 2] [--faster-python PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quiet import Probe, machine, wait_quiet, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech"
JFK = ROOT / "examples" / "jfk.wav"
# the sentence JFK read (inaugural address, 1961; as in tests/test_writers.py)
JFK_SCRIPT = "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
POSITION = 48  # tokens in the cache before a timed decoder step (as step_floor.py)
STEP_CASES = {"1 row": "1 row", "8 rows": "8 rows, 8 audios"}  # ours: step_floor.few_cases' name
KV_OPTIONS = {"language": "en", "temperature": 0.0, "without_timestamps": True}  # greedy: no beam_size
FW_OPTIONS = {
    "language": "en",
    "temperature": 0.0,
    "beam_size": 1,
    "without_timestamps": True,
    "vad_filter": False,
}
FW_TYPES = ("int8", "float32")
DEFINITIONS = {
    "identical_clips": "share of clips whose token sequence equals the reference engine's",
    "steps_speech": "decoder.step at JFK's state (its features from this mode's encoder, the SOT sequence "
    "and its transcript but the last token in the cache, stepping that token), 1 row and 8 copies; "
    "each repetition the mean of --calls calls after one untimed call",
    "prefix_agreement": "sum over clips of the common prefix length / sum of max(len(ref), len(hyp))",
    "position_agreement": "sum over clips of #{i: ref[i] == hyp[i]} / sum of max(len(ref), len(hyp))",
    "aligned_agreement": "1 - sum over clips of token edits (Levenshtein) / sum of len(ref): 1 - token error rate",
    "wer": "word-level Levenshtein edits summed over clips / reference words summed; words "
    "lower-cased, punctuation dropped (models.whisper.streaming.agreement.words_of), "
    "numbers not normalised",
    "encoder": "one 30 s log-mel window (JFK's) through the encoder; best and median of the repetitions",
    "steps": f"decoder.step after a prefill of {POSITION} tokens, each repetition the mean of "
    "--calls calls after one untimed call; 8 rows = 8 distinct audios",
    "corpus_wall_s": "sequential transcription of every clip after the model is loaded "
    "(and one untimed JFK transcription); fastest quiet pass",
    "peak_rss_mb": "ru_maxrss of a fresh process that loads the model and transcribes JFK (kvgraph: with a program store of its mode alone)",
}


# ---------------------------------------------------------------- quiet timing
def quiet_times(fn, reps: int, threshold: float, retries: int, calls: int = 1, warmup: int = 0) -> dict:
    """``reps`` timings of ``fn`` (each the mean of ``calls`` calls after ``warmup`` untimed
    ones), each after ``wait_quiet``; a repetition during which other processes kept
    ``threshold`` cores busy is discarded and run again, at most ``retries`` times per
    repetition (then kept, counted in ``busy_kept``)."""
    times, other, discarded, busy_kept = [], [], 0, 0
    for _ in range(reps):
        for attempt in range(retries + 1):
            wait_quiet(threshold, timeout=60)
            for _ in range(warmup):
                fn()
            with Probe() as p:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                dt = (time.perf_counter() - t0) / calls
            if p.other_cores < threshold or attempt == retries:
                busy_kept += p.other_cores >= threshold
                times.append(dt)
                other.append(round(p.other_cores, 2))
                break
            discarded += 1
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "all_s": [round(t, 6) for t in times],
        "other_cores": other,
        "discarded": discarded,
        "busy_kept": busy_kept,
    }


# ---------------------------------------------------------------- children
def corpus_pass(transcribe, clips: dict, args) -> dict:
    """``transcribe(audio) -> (text, tokens)`` over every clip, ``--corpus-reps`` quiet passes
    (see :func:`quiet_times`); the texts and tokens of the first pass, and whether every pass
    gave the same."""
    outputs = []

    def one_pass():
        outputs.append({name: transcribe(audio) for name, audio in clips.items()})

    transcribe(clips["jfk"])  # untimed: first-call costs
    res = quiet_times(one_pass, args.corpus_reps, args.threshold, args.retries)
    first = outputs[0]
    res["same_output_every_pass"] = all(o == first for o in outputs)
    res["clips"] = {n: {"text": t, "tokens": list(map(int, k))} for n, (t, k) in first.items()}
    return res


def program_sources(be) -> dict:
    """``{program: "store" | "compiled"}`` of the programs ``be`` holds now."""
    return {"encoder": be.encoder.source} | {k: p.source for k, p in be.decoder.loaded.items()}


def kvgraph_child(args, clips: dict) -> dict:
    """Everything measured of one kvgraph mode in this process (see the module docstring)."""
    import numpy as np
    from step_floor import few_cases, jfk_mel

    from models.whisper import load_model

    t0 = time.perf_counter()
    model = load_model(args.model, compute_type=args.mode)
    be = model.backend
    out = {"load_s": time.perf_counter() - t0, "compile_or_store_s": be.compile_s}
    if args.jfk_only:
        text = model.transcribe(str(JFK), **KV_OPTIONS)["text"]
        return out | {"text": text, "programs": program_sources(be)}
    out["programs"] = program_sources(be)
    mel = jfk_mel()
    out["encoder"] = quiet_times(lambda: be.encode(mel), args.repeats, args.threshold, args.retries, warmup=1)
    cases = few_cases(be.decoder, be.dims, POSITION, np.random.default_rng(0))
    out["steps"] = {
        ours: quiet_times(cases[theirs][0], args.repeats, args.threshold, args.retries, args.calls, 1)
        for ours, theirs in STEP_CASES.items()
    }
    speech = speech_cases(model, mel)
    out["steps_speech"] = {
        name: quiet_times(fn, args.repeats, args.threshold, args.retries, args.calls, 1)
        for name, fn in speech.items()
    }

    def transcribe(audio):
        r = model.transcribe(audio, **KV_OPTIONS)
        return r["text"], [t for s in r["segments"] for t in s["tokens"]]

    out["corpus"] = corpus_pass(transcribe, clips, args)
    return out


def speech_cases(model, mel) -> dict:
    """``{name: step callable}`` at a real decoding state: JFK's features (this mode's
    encoder) and the SOT sequence + JFK's transcript in the cache, in 1 and 8 rows (8 copies).
    The random state of ``few_cases`` suits float32 (its cost does not depend on values); an
    int8 vocabulary with a float32 top recomputes the logits its bound cannot rule out, few on
    speech's peaked logits, many on the flat ones of random states."""
    import numpy as np

    from models.whisper.decoding.task import is_multilingual, num_languages
    from models.whisper.decoding.tokenizer import get_tokenizer

    be = model.backend
    tok = get_tokenizer(
        is_multilingual(be.dims), num_languages=num_languages(be.dims), language="en", task="transcribe"
    )
    text = [t for s in model.transcribe(str(JFK), **KV_OPTIONS)["segments"] for t in s["tokens"]]
    prompt = np.array([[*tok.sot_sequence_including_notimestamps, *text[:-1]]], np.int64)
    feats = be.encode(mel)
    out = {}
    for rows in (1, 8):
        _, st = be.decoder.prefill(np.repeat(prompt, rows, 0), np.repeat(feats, rows, 0))
        new = np.full((rows, 1), text[-1], np.int64)
        out[f"{rows} row" + ("s" if rows > 1 else "")] = lambda new=new, st=st: be.decoder.step(new, st)
    return out


def faster_child(args, clips: dict) -> dict:
    """faster-whisper (``--mode``: its compute_type) in this process: load, then the corpus."""
    from faster_whisper import WhisperModel

    t0 = time.perf_counter()
    fw = WhisperModel(args.model_dir, device="cpu", compute_type=args.mode, cpu_threads=os.cpu_count() or 1)
    out = {"load_s": time.perf_counter() - t0}

    def transcribe(audio):
        segments = list(fw.transcribe(audio, **FW_OPTIONS)[0])
        return "".join(s.text for s in segments), [t for s in segments for t in s.tokens]

    if args.jfk_only:
        return out | {"text": transcribe(str(JFK))[0]}
    out["corpus"] = corpus_pass(transcribe, clips, args)
    return out


def child_main(args) -> int:
    """The ``--child`` entry point: measure, write JSON to ``--child-out``."""
    clips = {}
    if not args.jfk_only:
        import numpy as np

        with np.load(args.audio) as z:
            clips = {k: z[k] for k in z.files}
    run = kvgraph_child if args.child == "kvgraph" else faster_child
    Path(args.child_out).write_text(json.dumps(run(args, clips)))
    return 0


# ---------------------------------------------------------------- parent
def run_child(python: str, child: str, mode: str, args, tmp: Path, extra=(), env_extra=None) -> dict:
    """This script as ``--child`` in a fresh ``python`` process: its JSON, plus the process's
    wall and CPU time and peak RSS (``os.wait4``); ``{"error": ...}`` where it failed."""
    out = tmp / f"{child}-{mode}-{len(list(tmp.iterdir()))}.json"
    cmd = [python, __file__, "--child", child, "--mode", mode, "--child-out", str(out), *extra]
    cmd += ["--model", args.model, "--repeats", str(args.repeats), "--calls", str(args.calls)]
    cmd += ["--corpus-reps", str(args.corpus_reps), "--threshold", str(args.threshold)]
    cmd += ["--retries", str(args.retries), "--audio", str(tmp / "audio.npz"), "--model-dir", args.model_dir]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    proc = {
        "process_wall_s": round(time.perf_counter() - t0, 3),
        "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }
    if os.waitstatus_to_exitcode(status) != 0 or not out.exists():
        return {"error": err[-3000:].strip(), **proc}
    return json.loads(out.read_text()) | proc


def corpus_files() -> dict[str, Path]:
    """``{clip name: path}``: JFK, then the recorded prompts (where ../shared holds them)."""
    files = {"jfk": JFK} | {p.stem: p for p in sorted(SPEECH.glob("*.wav"))}
    if len(files) == 1:
        print(f"no clips in {SPEECH}: the corpus is JFK alone", file=sys.stderr)
    return files


def scripts(names) -> dict[str, str]:
    """The read scripts (``name: text`` lines of speech/transcripts.txt; JFK's sentence)."""
    out = {"jfk": JFK_SCRIPT}
    path = SPEECH / "transcripts.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, text = line.partition(":")
            if sep:
                out[name.strip()] = text.strip()
    return {n: out[n] for n in names if n in out}


def faster_python(path: str) -> tuple[str | None, str]:
    """``(path, "")`` where ``path`` runs and imports faster_whisper, else ``(None, why)``."""
    if not Path(path).exists():
        return None, f"{path}: no such interpreter"
    r = subprocess.run([path, "-c", "import faster_whisper"], capture_output=True, text=True)
    if r.returncode:
        return None, f"{path}: cannot import faster_whisper ({r.stderr.strip().splitlines()[-1:]})"
    return path, ""


def whisper_cpp(python: str | None) -> dict:
    """What is known of whisper.cpp here: not measured (no GGML weights offline)."""
    importable = None
    if python:
        importable = not subprocess.run([python, "-c", "import pywhispercpp"], capture_output=True).returncode
    return {
        "measured": False,
        "reason": "not measured: no GGML weights offline (whisper.cpp reads only its own "
        "ggml-*.bin files, not the CTranslate2 directory; none was on this machine when this "
        "script was written)",
        "binding": "pywhispercpp (1.5.1 on the local PyPI mirror when this script was written: a "
        "wheel with whisper.cpp built in, downloads no model; not installed)",
        "pywhispercpp_importable_in_faster_python": importable,
    }


# ---------------------------------------------------------------- accuracy
def token_agreement(ref: dict, hyp: dict) -> dict:
    """Token agreement of ``hyp`` with ``ref`` (``{clip: [token, ...]}``): see DEFINITIONS."""
    from models.whisper.streaming.agreement import word_error_rate

    identical = prefix = same = longest = edits = total = 0
    for name, r in ref.items():
        h = hyp.get(name, [])
        identical += r == h
        edits += round(word_error_rate(r, h) * len(r)) if r else len(h)
        total += len(r)
        n = 0
        while n < min(len(r), len(h)) and r[n] == h[n]:
            n += 1
        prefix += n
        same += sum(a == b for a, b in zip(r, h))
        longest += max(len(r), len(h))
    return {
        "identical_clips": identical / len(ref),
        "identical_count": f"{identical}/{len(ref)}",
        "prefix_agreement": prefix / longest if longest else 1.0,
        "position_agreement": same / longest if longest else 1.0,
        "aligned_agreement": 1.0 - edits / total if total else 1.0,
        "token_edits": edits,
        "tokens_compared": longest,
    }


def corpus_wer(ref_texts: dict, hyp_texts: dict) -> dict:
    """Corpus WER of ``hyp_texts`` against ``ref_texts`` (clips both hold), and per clip."""
    from models.whisper.streaming.agreement import word_error_rate, words_of

    edits = words = 0
    per_clip = {}
    for name, ref in ref_texts.items():
        if name not in hyp_texts:
            continue
        r, h = words_of(ref), words_of(hyp_texts[name])
        wer = word_error_rate(r, h)
        per_clip[name] = round(wer, 4)
        edits += round(wer * len(r))
        words += len(r)
    return {"wer": edits / words if words else 0.0, "edits": edits, "words": words, "per_clip": per_clip}


def accuracy(engines: dict, reference: str, script_texts: dict) -> dict:
    """Per engine: token agreement with ``reference`` and WER against the scripts and it."""
    clips = {k: e["corpus"]["clips"] for k, e in engines.items() if "corpus" in e}
    if reference not in clips:
        return {}
    ref_tokens = {n: c["tokens"] for n, c in clips[reference].items()}
    ref_texts = {n: c["text"] for n, c in clips[reference].items()}
    out = {}
    for name, c in clips.items():
        texts = {n: v["text"] for n, v in c.items()}
        out[name] = {
            "tokens_vs_reference": token_agreement(ref_tokens, {n: v["tokens"] for n, v in c.items()}),
            # the clips whose text differs from the reference engine's, both texts
            "differing_texts": {
                n: [ref_texts[n], t] for n, t in texts.items() if n in ref_texts and t != ref_texts[n]
            },
            "wer_vs_scripts": corpus_wer(script_texts, texts),
            "wer_vs_reference_text": corpus_wer(ref_texts, texts),
        }
    return out


# ---------------------------------------------------------------- report
def print_table(report: dict) -> None:
    """One line per engine: speed, memory, accuracy."""
    m = report["machine"]
    print(
        f"\n{m['lscpu'].get('Model name', m['cpu'])}, {m['cores']} cores, {m['date']}; model {report['model']}"
    )
    print(f"corpus: {len(report['corpus']['clips'])} clips, {report['corpus']['audio_s']:.1f} s of audio")
    head = (
        f"{'engine':24s} {'enc ms':>8s} {'1-row ms':>9s} {'8-row ms':>9s} {'1 speech':>9s} {'8 speech':>9s}"
        f" {'corpus s':>9s} {'RSS MB':>7s}"
    )
    print(f"\n{head} {'same clips':>10s} {'pos agr':>8s} {'aligned':>8s} {'WER scr':>8s} {'WER ref':>8s}")
    for name, e in report["engines"].items():
        if "error" in e and "corpus" not in e:
            print(f"{name:24s} failed: {e['error'].splitlines()[-1:]}")
            continue
        enc = e.get("encoder", {}).get("best_s")
        steps = e.get("steps", {})
        cells = [
            f"{enc * 1e3:8.1f}" if enc else f"{'-':>8s}",
            *(f"{steps[k]['median_s'] * 1e3:9.3f}" if k in steps else f"{'-':>9s}" for k in STEP_CASES),
            *(
                f"{e['steps_speech'][k]['median_s'] * 1e3:9.3f}"
                if k in e.get("steps_speech", {})
                else f"{'-':>9s}"
                for k in ("1 row", "8 rows")
            ),
            f"{e['corpus']['best_s']:9.2f}",
            f"{e['peak_rss_mb']:7.0f}" if e.get("peak_rss_mb") else f"{'-':>7s}",
        ]
        a = report["accuracy"].get(name)
        if a:
            t = a["tokens_vs_reference"]
            cells += [
                f"{t['identical_count']:>10s}",
                f"{t['position_agreement']:8.4f}",
                f"{t['aligned_agreement']:8.4f}",
                f"{a['wer_vs_scripts']['wer']:8.4f}",
                f"{a['wer_vs_reference_text']['wer']:8.4f}",
            ]
        print(f"{name:24s} " + " ".join(cells))
    for k, v in report["skipped"].items():
        print(f"{k}: {v}")
    print(f"whisper.cpp: {report['whisper_cpp']['reason']}")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument(
        "--modes",
        default="float32,bfloat16,int8,int8_bfloat16",
        help="kvgraph compute types, comma-separated",
    )
    ap.add_argument("--repeats", type=int, default=10, help="timed encoder calls and step repetitions")
    ap.add_argument("--calls", type=int, default=5, help="step calls averaged per repetition")
    ap.add_argument("--corpus-reps", type=int, default=2, help="timed passes over the corpus (fastest kept)")
    ap.add_argument("--threshold", type=float, default=0.3, help="other processes' cores that void a run")
    ap.add_argument("--retries", type=int, default=3, help="re-runs of a run voided by other processes")
    ap.add_argument(
        "--faster-python",
        default=os.environ.get("FASTER_WHISPER_PYTHON", sys.executable),
        help="interpreter with faster-whisper installed (default $FASTER_WHISPER_PYTHON, else "
        "this one); skipped where it is missing",
    )
    ap.add_argument("--no-faster", action="store_true", help="skip faster-whisper")
    ap.add_argument(
        "--max-clips", type=int, default=None, help="only the first N clips (JFK first): a quick check"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "compute_types.json"))
    for hidden in ("--child", "--mode", "--child-out", "--audio", "--model-dir"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--jfk-only", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def rss_store(mode: str) -> Path | None:
    """The program store of mode ``mode``'s whole-process run: one of its own beside the
    default store (kept, so only the first run compiles). A store shared with other modes can
    hold this mode's programs in a Module compiled together with theirs (the test suite
    compiles some modes together, and this script's measuring children use the default
    store), and MAX loads a Module whole: that run would hold the other modes' programs and
    weights too (int8: 508 MB against 430 MB alone, Zen 5, 2026-12-07)."""
    from kvgraph.store import default_root

    root = default_root()
    return None if root is None else root.parent / "kvgraph-rss-stores" / mode


def whole_process_jfk(python: str, child: str, mode: str, args, tmp: Path, tries: int = 3) -> dict:
    """Peak RSS of a fresh process loading the model and transcribing JFK, kvgraph's with a
    program store of its mode alone (:func:`rss_store`). A run that compiled a program (that
    store's first run, or its kernels changed) holds the compiler's memory too: run again, at
    most ``tries`` runs in all."""
    store = rss_store(mode) if child == "kvgraph" else None
    env = {"KVGRAPH_CACHE_DIR": str(store)} if store is not None else None
    for attempt in range(1, tries + 1):
        wait_quiet(args.threshold, timeout=60)
        rss = run_child(python, child, mode, args, tmp, ["--jfk-only"], env)
        compiled = sorted(k for k, v in rss.get("programs", {}).items() if v != "store")
        if not compiled:
            break
        print(f"  JFK run {attempt} compiled {compiled}: its RSS is not kept", file=sys.stderr)
    rss |= {
        "runs": attempt,
        "compiled_programs": compiled,
        "program_store": None if store is None else str(store),
    }
    return {"peak_rss_mb": None if compiled else rss.get("peak_rss_mb"), "jfk_run": rss}


def git_state() -> dict:
    """HEAD and the files changed beside it: what the numbers measured."""

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "changed": git("status", "--short", "--", "kvgraph", "models").splitlines(),
    }


def measure_all(args, files: dict, fpy: str | None, tmp: Path) -> dict:
    """Every engine's child runs: measurements, then a whole-process JFK run for its RSS."""
    engines = {}
    runs = [(sys.executable, "kvgraph", m) for m in args.modes.split(",")]
    runs += [(fpy, "faster", t) for t in FW_TYPES] if fpy else []
    for python, child, mode in runs:
        name = f"kvgraph {mode}" if child == "kvgraph" else f"faster-whisper {mode}"
        print(f"{name}: measuring", file=sys.stderr, flush=True)
        engines[name] = run_child(python, child, mode, args, tmp)
        engines[name]["measuring_process_peak_rss_mb"] = engines[name].pop("peak_rss_mb")
        engines[name] |= whole_process_jfk(python, child, mode, args, tmp)
        if "error" in engines[name]:
            print(f"{name} failed:\n{engines[name]['error']}", file=sys.stderr)
    return engines


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        return child_main(args)
    import numpy as np
    from step_floor import lscpu

    from models.whisper.audio.load import load_audio
    from models.whisper.weights.packages import resolve_source

    args.model_dir = str(resolve_source(args.model)["parts"][0].parent)  # faster-whisper's too
    files = dict(list(corpus_files().items())[: args.max_clips])
    skipped = {}
    fpy, why = (None, "--no-faster") if args.no_faster else faster_python(args.faster_python)
    if fpy is None:
        skipped["faster-whisper"] = f"skipped: {why}"
        print(skipped["faster-whisper"], file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        audio = {name: load_audio(str(p)) for name, p in files.items()}
        np.savez(tmp / "audio.npz", **audio)
        engines = measure_all(args, files, fpy, tmp)
    modes = args.modes.split(",")
    reference = "kvgraph float32" if "float32" in modes else f"kvgraph {modes[0]}"
    report = {
        "machine": machine() | {"lscpu": lscpu()},
        "model": args.model,
        "git": git_state(),
        "ct2_model_dir": args.model_dir,
        "options": {"kvgraph": KV_OPTIONS, "faster_whisper": FW_OPTIONS | {"cpu_threads": os.cpu_count()}},
        "settings": {
            k: getattr(args, k) for k in ("repeats", "calls", "corpus_reps", "threshold", "retries")
        },
        "definitions": DEFINITIONS,
        "corpus": {
            "clips": {n: round(len(a) / 16000, 2) for n, a in audio.items()},
            "audio_s": sum(len(a) for a in audio.values()) / 16000,
        },
        "reference_engine": reference,
        "engines": engines,
        "accuracy": accuracy(engines, reference, scripts(files)),
        "skipped": skipped,
        "whisper_cpp": whisper_cpp(fpy),
    }
    write_json(report, args.out)
    print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
