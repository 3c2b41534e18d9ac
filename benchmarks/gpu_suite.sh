#!/usr/bin/env bash
# The GPU run, in one command, on a machine with a CUDA GPU and no network:
#
#     benchmarks/gpu_suite.sh OUTDIR [report options, e.g. --ops upsample_skip]
#
# 1. builds the extension with its CUDA kernels (pip install --no-build-isolation -e .,
#    falling back to setup.py build_ext --inplace),
# 2. runs the CUDA and Triton tests (pytest tests/ -k "cuda or triton"),
# 3. runs the benchmark report on the GPU (python -m fcn_fast.bench --device cuda),
# and writes into OUTDIR: environment.txt (date, nvidia-smi line, torch/triton/CUDA
# versions, backends), build.log, tests.log, report.txt, results.json, results.md,
# speedup.png (when matplotlib is installed).
#
# GPU time is scarce (15 minutes a session, start-up included): the whole script keeps
# to TOTAL_LIMIT seconds (default 450) and each step to its own limit. A report cut
# short still writes the rows it measured (results.json is written after every row).
#   PYTHON=python3   TOTAL_LIMIT=450   BUILD_LIMIT=240   TEST_LIMIT=120
#   BENCH_DEVICE=cuda (cpu only to try the script on a machine without a GPU)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/gpu_suite.sh OUTDIR [report options]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
deadline=$((SECONDS + ${TOTAL_LIMIT:-450}))
status=0

left() { # seconds for the next step: its own limit, or what is left of the total
  local rest=$((deadline - SECONDS - ${2:-0}))
  ((rest < 1)) && rest=1
  ((rest < $1)) && echo "$rest" || echo "$1"
}
step() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$out/steps.log"; }

step "environment"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv,noheader 2>&1 | head -1)"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  "$py" - <<'PY'
import platform
import torch
try:
    import triton
    triton_version = triton.__version__
except Exception as error:
    triton_version = f"not importable ({error})"
print(f"python: {platform.python_version()}")
print(f"torch: {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})")
print(f"triton: {triton_version}")
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible"
print(f"gpu: {gpu}")
PY
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) ($(git status --porcelain 2>/dev/null | wc -l) files changed)"
} > "$out/environment.txt" 2>&1
cat "$out/environment.txt"

step "build"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FCN_FAST_CUDA=${FCN_FAST_CUDA:-1}  # a GPU run without CUDA kernels is no GPU run
if ! timeout "$(left "${BUILD_LIMIT:-240}" 150)" "$py" -m pip install --no-build-isolation \
  --no-deps --no-index -e . > "$out/build.log" 2>&1 || ! "$py" -c "import fcn_fast._C" 2>> "$out/build.log"; then
  echo "pip install -e . did not give an importable fcn_fast._C; building in place" | tee -a "$out/build.log"
  timeout "$(left "${BUILD_LIMIT:-240}" 150)" "$py" setup.py build_ext --inplace >> "$out/build.log" 2>&1 || status=1
fi
tail -3 "$out/build.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" -m fcn_fast backends 2>&1 | tee -a "$out/environment.txt"

step "CUDA and Triton tests"
timeout -k 10 "$(left "${TEST_LIMIT:-120}" 120)" "$py" -m pytest tests/ -k "cuda or triton" -q -rs \
  -p no:cacheprovider > "$out/tests.log" 2>&1
rc=$?
((rc != 0 && rc != 5)) && status=1  # 5: no test matched
tail -5 "$out/tests.log"

step "benchmark report"
plot=()
if "$py" -c "import matplotlib" 2> /dev/null; then
  plot=(--plot "$out/speedup.png")
else
  echo "matplotlib is not installed: no speedup.png" | tee -a "$out/steps.log"
fi
timeout -k 15 "$(left 600 25)" "$py" -m fcn_fast.bench --device "${BENCH_DEVICE:-cuda}" --json "$out/results.json" \
  --markdown "$out/results.md" "${plot[@]}" "$@" > "$out/report.txt" 2> "$out/progress.log"
rc=$?
if ((rc == 124 || rc == 130 || rc == 137)) && [ -f "$out/results.json" ]; then
  # Cut short by the time limit: render the rows that were measured.
  echo "report cut short at the time limit; rendering the rows measured" | tee -a "$out/steps.log"
  "$py" -m fcn_fast.bench show "$out/results.json" --markdown "$out/results.md" "${plot[@]}" \
    > "$out/report.txt" 2>> "$out/progress.log"
fi
((rc != 0)) && status=1
cat "$out/report.txt"
step "done (status $status, ${SECONDS}s); results in $out"
exit $status
