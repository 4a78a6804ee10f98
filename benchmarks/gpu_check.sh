#!/usr/bin/env bash
# One short GPU run for issue 17 (the lead runs it on the device machine; < 8 min on one H200:
# the four steps are capped at 100 + 90 + 90 + 120 s, installing a missing venv at 60 s).
# Writes everything under $OUT/ (default ./gpu_out): the environment, the CUDA tests that skip
# on CPU, bench_nmf, bench_pipeline --quick and bench_atlas --device cuda.
# Usage: OUT=/path bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
status=0
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the output, note the status
  local name=$1 limit=$2; shift 2
  log "start $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  log "end $name: exit $rc after $((SECONDS - t0))s"
  [ $rc -eq 0 ] || status=1
}

# 1. A Python with torch and conceptkit: the one on PATH if it works, else a venv (PyPI may be
#    unreachable there: detect and report instead of hanging).
PY=${PYTHON:-python}
if ! $PY -c "import torch, conceptkit" > /dev/null 2>&1; then
  for candidate in .venv/bin/python python3; do
    if $candidate -c "import torch, conceptkit" > /dev/null 2>&1; then PY=$candidate; break; fi
  done
fi
if ! $PY -c "import torch, conceptkit" > /dev/null 2>&1; then
  log "no python with torch+conceptkit; trying: python3 -m venv .venv && pip install -e .[dev]"
  if timeout 20 python3 -m pip download --no-deps --dest /tmp/probe-pip pip > /dev/null 2>&1; then
    python3 -m venv .venv && timeout 60 .venv/bin/pip install -q -e ".[dev]" > "$OUT/pip.txt" 2>&1
    PY=.venv/bin/python
    if ! $PY -c "import torch, conceptkit" > /dev/null 2>&1; then
      log "pip install -e .[dev] did not finish in 60 s or failed (see pip.txt): stopping"
      exit 2
    fi
  else
    log "PyPI is unreachable from this machine: cannot install; stopping (nothing measured)"
    exit 2
  fi
fi
$PY - > "$OUT/environment.txt" 2>&1 <<'PYEOF'
import platform, torch, conceptkit
print("python", platform.python_version(), "torch", torch.__version__, "conceptkit", conceptkit.__version__)
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.0f} GiB", "capability", p.major, p.minor)
PYEOF
cat "$OUT/environment.txt" | tee -a "$OUT/summary.txt"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "torch sees no CUDA device: stopping"
  exit 2
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# 2. The CUDA tests that skip on CPU (every test whose name mentions cuda or gpu).
step cuda_tests 150 $PY -m pytest -q -p no:cacheprovider -rs --continue-on-collection-errors -k "cuda or gpu" tests/concepts tests/pipeline/test_result_devices.py tests/extraction tests/importance
# 3. NMF solvers on the GPU (quick problems), the whole-class pipeline, the atlas.
step bench_nmf 90 $PY benchmarks/bench_nmf.py --quick --device cuda
step bench_pipeline 90 $PY benchmarks/bench_pipeline.py --quick
step bench_atlas 120 $PY benchmarks/bench_atlas.py --quick --device cuda
log "done (status $status); outputs in $OUT"
exit $status
