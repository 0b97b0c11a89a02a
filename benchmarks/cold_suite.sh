#!/usr/bin/env bash
# The suite as a fresh machine runs it: a fresh clone of this checkout's HEAD, empty caches (a
# new HOME: no pip cache, no MAX cache ~/.cache/modular, no program store, no kernel package; a
# new TMPDIR), then the README's test command, timed. Writes a JSON line of results: wall time
# (install and tests), the suite's MAX compile count and seconds, pass/fail counts, the commit
# and the CPU (`lscpu` model name, family/model, vector extensions).
#
#   benchmarks/cold_suite.sh [RESULTS_FILE]   (default benchmarks/results/cold_suite.jsonl, appended)
#   COLD_SUITE_WARM=1 also times a second, warm run in the same clone (its caches kept).
#
# Takes the whole suite's time (tens of minutes): run on demand, on a quiet machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/benchmarks/results/cold_suite.jsonl}"
work="$(mktemp -d "${COLD_SUITE_DIR:-/tmp}/kvgraph-cold-XXXXXX")"
mkdir -p "$work/home" "$work/tmp" "$(dirname "$out")"
git clone -q --no-local "$here" "$work/repo"
commit="$(git -C "$work/repo" rev-parse --short HEAD)"

run_suite() {  # $1: label; runs `make test` in the clone with the fresh HOME and TMPDIR
  local log="$work/$1.log" t0 t1 rc=0
  t0=$(date +%s)
  (cd "$work/repo" && env -u XDG_CACHE_HOME -u KVGRAPH_CACHE_DIR -u KVGRAPH_COMPILE_LOG \
    HOME="$work/home" TMPDIR="$work/tmp" make test) >"$log" 2>&1 || rc=$?
  t1=$(date +%s)
  python3 - "$1" "$log" "$rc" "$((t1 - t0))" "$commit" "$out" <<'EOF'
import json, re, subprocess, sys, time
label, log, rc, wall, commit, out = sys.argv[1:]
text = open(log, errors="replace").read()
def lscpu(field):
    m = re.search(rf"^{field}:\s*(.*)$", subprocess.run(["lscpu"], capture_output=True, text=True).stdout, re.M)
    return m.group(1).strip() if m else None
flags = (lscpu("Flags") or "").split()
compiles = re.search(r"MAX compiles this run: (\d+) calls \((\d+) compiled, \d+ from MAX's cache\), (\d+) s compiling", text)
summary = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|errors?)\b.* in [\d.]+s", ln)]
counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)\b", summary[-1] if summary else "")}
row = {
    "run": label,
    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    "commit": commit,
    "cpu": lscpu("Model name"),
    "cpu_family_model": f"{lscpu('CPU family')}/{lscpu('Model')}",
    "vector": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
    "cores": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout),
    "wall_s": int(wall),
    "exit": int(rc),
    "compile_calls": int(compiles.group(1)) if compiles else None,
    "compiles": int(compiles.group(2)) if compiles else None,
    "compile_s": int(compiles.group(3)) if compiles else None,
    **counts,
}
with open(out, "a") as f:
    f.write(json.dumps(row) + "\n")
print(json.dumps(row))
EOF
  return "$rc"
}

rc=0
run_suite cold || rc=$?
if [ "${COLD_SUITE_WARM:-0}" = 1 ]; then run_suite warm || rc=$?; fi
echo "logs: $work/*.log"
exit "$rc"
