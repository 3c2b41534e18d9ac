#!/usr/bin/env bash
# The GPU sweep, in one command on a machine with a CUDA GPU and no network, after
# benchmarks/gpu_first.sh (which builds and runs the tests):
#
#     benchmarks/gpu_suite.sh OUTDIR [report options, e.g. --ops upsample_skip]
#     benchmarks/gpu_suite.sh --dry-run OUTDIR   the same steps on the CPU: no build, the
#                                                quick sweep (CI runs this)
#
# 1. builds the extension with its CUDA kernels for this GPU's architecture only
#    (pip install --no-build-isolation -e ., falling back to setup.py build_ext --inplace),
#    unless fcn_fast._C already has CUDA kernels newer than every source (BUILD=auto:
#    benchmarks/preflight.py --built; BUILD=1 always builds, BUILD=0 never),
# 2. with TESTS=1 only, runs pytest -m gpu (gpu_first.sh ran them already),
# 3. runs the autocast probe of issue 8 (benchmarks/probe_autocast.py, seconds),
# 4. runs the benchmark report's default GPU sweep in a lease's order (python -m
#    fcn_fast.bench --device cuda --order priority: the fused heads and model rows first, the
#    torch.compile rows last) and prints the GPU_PREFERENCE it measured (python -m
#    fcn_fast.bench prefer, into steps.log),
# and leaves these files in OUTDIR (the device tool brings back at most eight):
#   environment.txt   date, nvidia-smi line, torch/triton/CUDA versions, backends
#   steps.log         each step's start time, the report's progress and its table
#   build.log  (tests.log)  probe_autocast.txt
#   results.json  results.md  speedup.png (when matplotlib is installed)
# With PACK=1 it packs them into OUTDIR.tar.gz instead and removes OUTDIR: one file.
#
# GPU time is scarce (15 minutes a session, start-up included): the whole script keeps
# to TOTAL_LIMIT seconds (default 300, 5 minutes) and each step to its own limit.
# A report cut short still writes the rows it measured (results.json is written after
# every row; the compile rows come last, so they are what a cut loses). The default GPU sweep
# is 166 runs, 7 of them torch.compile: about 80 s at the 0.4 s a row of the first H200 run
# (python -m fcn_fast.bench --device cuda --list --order priority lists them, on any machine).
#   PYTHON=python3  TOTAL_LIMIT=300  BUILD=auto  BUILD_LIMIT=150  TESTS=0  TEST_LIMIT=60
#   PROBE_LIMIT=30  TORCH_CUDA_ARCH_LIST (default: the visible GPU's)   PACK=0
#   BENCH_DEVICE=cuda (cpu: the dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
report=(--order priority)
if [ "${1:-}" = "--dry-run" ]; then
  shift
  export BENCH_DEVICE=cpu
fi
if [ "${BENCH_DEVICE:-cuda}" = cpu ]; then # the dry run: CPU kernels, no build, quick sweep
  export FCN_FAST_CUDA=0 BUILD=0
  report+=(--quick)
fi
out=${1:?usage: benchmarks/gpu_suite.sh [--dry-run] OUTDIR [report options]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)
py=${PYTHON:-python3}
deadline=$((SECONDS + ${TOTAL_LIMIT:-300}))
status=0

left() { # seconds for a step: its own limit ($1), or what is left of the total minus a reserve
  # ($2) for the steps after it: the report, which needs about 80 s, is what the GPU run is for
  local rest=$((deadline - SECONDS - ${2:-0}))
  ((rest < 1)) && rest=1
  ((rest < $1)) && echo "$rest" || echo "$1"
}
step() { echo "== $(date -u +%H:%M:%S) (${SECONDS}s) $*" | tee -a "$out/steps.log"; }

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
build=${BUILD:-auto}
if [ "$build" = auto ] && "$py" benchmarks/preflight.py --built >> "$out/build.log" 2>&1; then
  build=0
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FCN_FAST_CUDA=${FCN_FAST_CUDA:-1}  # a GPU run without CUDA kernels is no GPU run
# nvcc for this GPU only: every extra architecture is another full compile of each .cu file.
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2> /dev/null)
  [ -n "$arch" ] && export TORCH_CUDA_ARCH_LIST=$arch
fi
echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=$MAX_JOBS" | tee -a "$out/environment.txt"
build_end=$((SECONDS + $(left "${BUILD_LIMIT:-150}" 90)))  # both tries share one limit
if [ "$build" = 0 ]; then
  echo "build skipped (BUILD=${BUILD:-auto})" | tee -a "$out/build.log"
elif ! timeout $((build_end - SECONDS)) "$py" -m pip install --no-build-isolation \
  --no-deps --no-index -e . >> "$out/build.log" 2>&1 || ! "$py" -c "import fcn_fast._C" 2>> "$out/build.log"; then
  echo "pip install -e . did not give an importable fcn_fast._C; building in place" | tee -a "$out/build.log"
  timeout $((build_end - SECONDS > 1 ? build_end - SECONDS : 1)) "$py" setup.py build_ext --inplace \
    >> "$out/build.log" 2>&1 || status=1
fi
tail -3 "$out/build.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" -m fcn_fast backends 2>&1 | tee -a "$out/environment.txt"

if [ "${TESTS:-0}" = 1 ]; then
  step "GPU tests (pytest -m gpu)"
  parallel=()
  "$py" -c "import xdist" 2> /dev/null && parallel=(-n 8) # Triton compiles in every worker at once
  # SIGINT at the limit: pytest stops and still prints its summary of the tests that ran.
  timeout -s INT -k 10 "$(left "${TEST_LIMIT:-60}" 110)" "$py" -m pytest tests/ -m gpu \
    -q -rs -p no:cacheprovider "${parallel[@]}" > "$out/tests.log" 2>&1
  rc=$?
  ((rc != 0 && rc != 5)) && status=1 # 5: no test matched
  tail -5 "$out/tests.log"
else
  step "tests: run by gpu_first.sh (pytest -m gpu); TESTS=1 runs them here"
fi

step "autocast probe (issue 8)"
timeout -k 5 "$(left "${PROBE_LIMIT:-30}" 60)" "$py" benchmarks/probe_autocast.py \
  --device "${BENCH_DEVICE:-cuda}" > "$out/probe_autocast.txt" 2>&1
rc=$?
((rc != 0)) && echo "probe exited with $rc" | tee -a "$out/steps.log"
head -40 "$out/probe_autocast.txt"

step "benchmark report"
plot=()
if "$py" -c "import matplotlib" 2> /dev/null; then
  plot=(--plot "$out/speedup.png")
else
  echo "matplotlib is not installed: no speedup.png" | tee -a "$out/steps.log"
fi
timeout -k 15 "$(left 600 20)" "$py" -m fcn_fast.bench --device "${BENCH_DEVICE:-cuda}" \
  "${report[@]}" --json "$out/results.json" --markdown "$out/results.md" "${plot[@]}" "$@" \
  >> "$out/steps.log" 2>&1
rc=$?
if ((rc == 124 || rc == 130 || rc == 137)) && [ -f "$out/results.json" ]; then
  # Cut short by the time limit: render the rows that were measured.
  echo "report cut short at the time limit; rendering the rows measured" | tee -a "$out/steps.log"
  "$py" -m fcn_fast.bench show "$out/results.json" --markdown "$out/results.md" "${plot[@]}" \
    >> "$out/steps.log" 2>&1
fi
((rc != 0)) && status=1
[ -f "$out/results.md" ] && cat "$out/results.md"
if [ -f "$out/results.json" ]; then  # what _backend.GPU_PREFERENCE should say, as measured
  step "backend preference (python -m fcn_fast.bench prefer)"
  "$py" -m fcn_fast.bench prefer "$out/results.json" 2>&1 | tee -a "$out/steps.log"
fi
step "done (status $status, ${SECONDS}s); results in $out"
if [ "${PACK:-0}" = 1 ]; then
  tar -czf "$out.tar.gz" -C "$(dirname "$out")" "$(basename "$out")" && rm -rf "$out"
  echo "packed into $out.tar.gz"
fi
exit $status
