#!/usr/bin/env bash
# The first three minutes of a GPU run (issue 25), in one call on a machine with a CUDA GPU
# and no network; run it before benchmarks/gpu_suite.sh:
#
#     benchmarks/gpu_first.sh [OUTDIR]             (default OUTDIR: $OUT, else ./gpu-first-out)
#     benchmarks/gpu_first.sh --dry-run [OUTDIR]   the same steps on the CPU at tiny sizes,
#                                                  without the build (CI runs this)
#
#  0. preflight   benchmarks/preflight.py --cuda: every tool, present or not, with versions
#  1. build       TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 pip install --no-build-isolation
#                 --no-deps --no-index -e .   (setup.py build_ext --inplace if that fails)
# then, within TOTAL_LIMIT seconds, each step time-boxed (python -m fcn_fast.bench first ...,
# fcn_fast/bench/first.py; CUDA events, L2 flushed, median of 10):
#  2. bandwidth   upsample without skip, interpolate_add with skip, the resampler backward,
#                 the loss forward and backward at the `large` shapes, cuda and triton, fp32
#                 and bf16, each against a device copy of the same bytes
#  3. fused       the fused head's forward, backward and argmax at `large`, C/2, twice the
#                 pixels, inputs resident in L2, and uint8 labels, beside the unfused
#                 chain: work- or byte-bound?
#  4. downsample  interpolate_add 1x2x512x40 -> 7x40 and interpolate_cross_entropy
#                 96x8 -> 2x8 backward: twice (bitwise), against the reference and triton
#  5. tiny        one small call of every kernel (channels_last, storage offset 1, odd widths,
#                 the backward kernels, the staged loss, the last-block reduction), then the
#                 same under compute-sanitizer --tool racecheck, then --tool memcheck
#  6. tests       pytest -m gpu -x (-n 8 with pytest-xdist); then FCN_FAST_CUDA_INDEX64=1 on
#                 one pixel_cross_entropy and one resampler test (tests-index64)
#  7. ncu         if ncu is there: SpeedOfLight, Occupancy, WarpStateStats of the loss forward
#                 and the fused forward
#  8. summary     python -m fcn_fast.bench first summary: each step's exit status and time,
#                 and its figures
# Leaves two files in OUTDIR (the device tool brings back at most eight): gpu-first.tar.gz
# (gpu-first/: environment.txt, steps.tsv, every step's .log and .json, summary.md) and
# gpu-first-summary.md. Exit status 1 when a step failed or ran out of time, else 0.
#   PYTHON=python3  TOTAL_LIMIT=180  BUILD_LIMIT=170  TORCH_CUDA_ARCH_LIST=9.0  MAX_JOBS=16
#   GPU_TESTS_STOP=-x  (e.g. --maxfail=20 to see more than the first failing test)
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
  shift
fi
[ "${BENCH_DEVICE:-cuda}" = cpu ] && dry=1
out=${1:-${OUT:-gpu-first-out}}
mkdir -p "$out" && out=$(cd "$out" && pwd)
work="$out/gpu-first"
rm -rf "$work" && mkdir -p "$work"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
deadline=$((SECONDS + ${BUILD_LIMIT:-170}))

# step NAME LIMIT COMMAND...: runs COMMAND into NAME.log within LIMIT seconds (and before the
# deadline), records NAME, exit status, seconds and limit in steps.tsv. SIG=INT for pytest:
# stopped at the limit, it still prints its summary.
step() {
  local name=$1 limit=$2 rest=$((deadline - SECONDS)) start=$SECONDS rc
  shift 2
  if ((rest < 3)); then
    echo "== $name: no time left" | tee -a "$work/$name.log"
    printf '%s\tno time left\t0\t0\n' "$name" >> "$work/steps.tsv"
    status=1
    return
  fi
  ((limit > rest)) && limit=$rest
  echo "== $(date -u +%H:%M:%S) (${SECONDS}s) $name (limit ${limit}s): $*"
  timeout -s "${SIG:-TERM}" -k 10 "$limit" "$@" > "$work/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$work/steps.tsv"
  tail -n 3 "$work/$name.log"
  ((rc != 0)) && status=1
}
absent() { # absent NAME WHY: a step whose tool is not installed (not a failure)
  echo "== $1: skipped ($2)"
  printf '%s\tskipped: %s\t0\t0\n' "$1" "$2" >> "$work/steps.tsv"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse --short HEAD 2> /dev/null) ($(git status --porcelain 2> /dev/null | wc -l) files changed)"
  echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm \
    --format=csv,noheader 2> /dev/null | head -1)"
  ((dry)) && echo "dry run on the CPU (tiny sizes, no build)"
} > "$work/environment.txt"
cuda=(--cuda)
((dry)) && cuda=()
step preflight 60 "$py" benchmarks/preflight.py "${cuda[@]}" --json "$work/preflight.json"
cat "$work/preflight.log" >> "$work/environment.txt"

if ((dry)); then
  # The CPU stands in for the GPU: tiny sizes, the cpu backend, and the reference as the
  # second backend where a step compares two; collect-only for the tests.
  device=(--device cpu)
  one=(--backends cpu)
  two=(--backends cpu,reference)
  collect=(--collect-only)
  absent build "dry run"
else
  device=(--device cuda)
  one=()
  two=()
  collect=()
  export FCN_FAST_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  step build "${BUILD_LIMIT:-170}" "$py" -m pip install --no-build-isolation --no-deps --no-index -e .
  if ! "$py" -c "import fcn_fast._C as c; assert c.with_cuda" 2>> "$work/build.log"; then
    echo "no fcn_fast._C with CUDA kernels after pip install -e .; building in place" \
      | tee -a "$work/build.log"
    step build-inplace "${BUILD_LIMIT:-170}" "$py" setup.py build_ext --inplace
  fi
  "$py" -m fcn_fast backends >> "$work/environment.txt" 2>&1
fi

deadline=$((SECONDS + ${TOTAL_LIMIT:-180}))
step bandwidth 40 "$py" -m fcn_fast.bench first bandwidth "${device[@]}" "${one[@]}" \
  --json "$work/bandwidth.json"
step fused 35 "$py" -m fcn_fast.bench first fused "${device[@]}" "${one[@]}" \
  --json "$work/fused.json"
step downsample 10 "$py" -m fcn_fast.bench first downsample "${device[@]}" "${two[@]}" \
  --json "$work/downsample.json"
step tiny 10 "$py" -m fcn_fast.bench first tiny "${device[@]}" "${two[@]}" --json "$work/tiny.json"

sanitizer=$("$py" benchmarks/preflight.py --which compute-sanitizer 2> /dev/null)
if [ -n "$sanitizer" ]; then
  # One cudaMalloc per tensor: an access past a tensor's end is outside its allocation.
  for tool in racecheck memcheck; do
    limit=20
    [ $tool = racecheck ] && limit=25
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 step $tool $limit "$sanitizer" --tool $tool \
      --error-exitcode 3 --print-limit 50 "$py" -m fcn_fast.bench first tiny "${device[@]}"
  done
else
  absent racecheck "no compute-sanitizer"
  absent memcheck "no compute-sanitizer"
fi

xdist=()
"$py" -c "import xdist" 2> /dev/null && ((!dry)) && xdist=(-n 8)
SIG=INT step tests 50 "$py" -m pytest tests/ -m gpu ${GPU_TESTS_STOP:--x} -q -rfEs \
  -p no:cacheprovider "${xdist[@]}" "${collect[@]}"
SIG=INT FCN_FAST_CUDA_INDEX64=1 step tests-index64 15 "$py" -m pytest -q -rfEs \
  -p no:cacheprovider "${collect[@]}" \
  "tests/test_pixel_cross_entropy.py::test_layouts_and_expanded_grad[cuda]" \
  "tests/test_resample_skip.py::test_non_contiguous_inputs_and_grad[cuda]"

ncu=$("$py" benchmarks/preflight.py --which ncu 2> /dev/null)
if [ -n "$ncu" ]; then
  # Only the calls between torch.cuda.profiler.start and stop (fcn_fast.bench first profile).
  # --clock-control none: the card's clocks as found (ncu would lock them to base otherwise).
  step ncu 20 "$ncu" --clock-control none --profile-from-start off --section SpeedOfLight \
    --section Occupancy --section WarpStateStats "$py" -m fcn_fast.bench first profile \
    "${device[@]}"
elif ((dry)); then
  step profile 20 "$py" -m fcn_fast.bench first profile "${device[@]}" "${one[@]}"
else
  absent ncu "no ncu"
fi

"$py" -m fcn_fast.bench first summary "$work" > "$work/summary.md" 2>&1 || status=1
echo "== done (status $status, ${SECONDS}s)" >> "$work/summary.md"
cp "$work/summary.md" "$out/gpu-first-summary.md"
tar -czf "$out/gpu-first.tar.gz" -C "$out" gpu-first && rm -rf "$work"
cat "$out/gpu-first-summary.md"
echo "packed into $out/gpu-first.tar.gz"
exit $status
