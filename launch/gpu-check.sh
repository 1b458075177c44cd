#!/usr/bin/env bash
# The GPU figures the docs quote, in one run of at most 8 minutes on one GPU, into one JSON file:
#   bash launch/gpu-check.sh [OUT]                      # on a GPU machine: Infinity-2B, random weights
#   PRESET=tiny DEVICE=cpu bash launch/gpu-check.sh      # the dry run (what CI machines can do)
# - restoration (onestep, bf16): s/image at 512 and 1024 px, with torch's attention kernel choice, each
#   of math / flash / efficient alone, and torch.compile on; peak memory with and without --offload;
# - training: s/step, images/s, MFU and peak memory at batch 4, 512 px, gradient checkpointing: the
#   default step, the paper's recipe (varestorer-2b-512) and the authors' trainer
#   (varestorer-2b-512-release-trainer).
# A command that fails (a kernel this GPU lacks, out of memory) is recorded with its error; the rest run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu-check}
PRESET=${PRESET:-infinity-2b}
DEVICE=${DEVICE:-cuda}
V=${VENV:-.venv}/bin
LIMIT=${LIMIT:-120}   # seconds a command may take
mkdir -p "$OUT"
if [ "$PRESET" = infinity-2b ]; then R1=512; R2=1024; else R1=64; R2=128; fi
if [ "$DEVICE" = cpu ]; then DTYPE=float32; else DTYPE=bfloat16; fi
BUDGET=${BUDGET:-450}  # seconds in all: a command that would start later is skipped (recorded so)
run() {  # name, then the varestorer arguments (each prints JSON with --json)
  local name=$1; shift
  local t0=$SECONDS
  if [ "$SECONDS" -ge "$BUDGET" ]; then
    echo "skipped: the ${BUDGET} s budget is spent" > "$OUT/$name.err"; : > "$OUT/$name.json"
    echo "$name: skipped (budget)"; return
  fi
  if timeout "$LIMIT" "$V/varestorer" "$@" --json > "$OUT/$name.json" 2> "$OUT/$name.err"; then
    echo "$name: ok ($((SECONDS - t0)) s)"
  else
    echo "$name: failed ($((SECONDS - t0)) s): $(tail -n 1 "$OUT/$name.err")"
  fi
}
L=(bench latency --preset "$PRESET" --methods onestep --device "$DEVICE" --dtype "$DTYPE" --repeats 3 --warmup 1)
run latency-$R1 "${L[@]}" --resolution $R1
run latency-$R2 "${L[@]}" --resolution $R2
for k in math flash efficient; do run latency-$R1-$k "${L[@]}" --resolution $R1 --sdpa $k; done
run latency-$R1-compiled "${L[@]}" --resolution $R1 --compile --warmup 2
run memory bench memory --preset "$PRESET" --resolutions $R1,$R2 --methods onestep --device "$DEVICE" --dtype "$DTYPE"
T=(bench train --preset "$PRESET" --resolution $R1 --batch 4 --gradient-checkpointing --device "$DEVICE" --steps 3 --warmup 1)
run train "${T[@]}"
run train-paper "${T[@]}" --recipe varestorer-2b-512
run train-release-trainer "${T[@]}" --recipe varestorer-2b-512-release-trainer
"$V/python" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
result = {}
for f in sorted(out.glob("*.json")):
    if f.name == "gpu-check.json":
        continue
    try:
        result[f.stem] = json.loads(f.read_text())
    except json.JSONDecodeError:
        err = (out / f"{f.stem}.err").read_text().strip().splitlines()
        result[f.stem] = {"error": err[-1] if err else "no output"}
(out / "gpu-check.json").write_text(json.dumps(result, indent=2))
print(f"wrote {out / 'gpu-check.json'}: {sum('error' not in v for v in result.values())} of {len(result)} ok")
PY
