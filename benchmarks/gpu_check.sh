#!/usr/bin/env bash
# The one GPU check (docs: gpu-checks.md): versions -> build -> GPU tests -> benchmark -> table.
#
#   benchmarks/gpu_check.sh [--dry-run] OUTDIR [DATA_DIR]
#
# OUTDIR   receives gpu_check.log, build.log, tests.log, bench.log and the benchmark
#          <date>_<device>.json / .md (written after every row, so a timeout keeps them).
# DATA_DIR optional copy of ../shared/data (Set5/, bcrn_official/) inside the checkout;
#          exported as BCRN_DATA_DIR for the tests, and its official weights are used by
#          the benchmark.
#
# The whole script ends within GPU_CHECK_BUDGET_S seconds (default 450, i.e. < 8 min):
# every stage runs under `timeout`, the benchmark also gets --budget-s so it stops
# starting rows (cheap variants first, long autotuning last) before its hard limit.
#
# --dry-run (or DRY_RUN=1): the same control flow on the CPU with tiny settings: no pip
# install, tests/test_benchmarking.py only, a 32x18 benchmark whose GPU-only rows are
# SKIPPED with their reasons. Use it before spending GPU time.
#
# On the lent GPU machine (data copied into the git-ignored gpu_data/ and carried):
#   benchmarks/gpu_check.sh "$OUT" gpu_data        (then commit $OUT's .json/.md to
#   benchmarks/results/ and add a line to benchmarks/results/README.md)
#
# Environment knobs: PYTHON (default python), GPU_CHECK_BUDGET_S, GPU_CHECK_TESTS (pytest
# paths), STOP_ON_TEST_FAILURE=1 (skip the benchmark after a failing test; by default the
# benchmark still runs: it verifies every variant itself and never times a wrong one),
# BENCH_ARGS (extra arguments for the benchmark).
set -u -o pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }

DRY_RUN=${DRY_RUN:-0}
POSITIONAL=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg" >&2; usage 2 ;;
    *) POSITIONAL+=("$arg") ;;
  esac
done
[ "${#POSITIONAL[@]}" -ge 1 ] || usage 2
OUTDIR=${POSITIONAL[0]}
DATA_DIR=${POSITIONAL[1]:-}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 2
if [ -n "$DATA_DIR" ]; then
  [ -d "$DATA_DIR" ] || { echo "gpu_check.sh: DATA_DIR $DATA_DIR is not a folder" >&2; exit 2; }
  DATA_DIR=$(cd "$DATA_DIR" && pwd)
fi
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1

PYTHON=${PYTHON:-python}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
START=$SECONDS
left() { echo $(( BUDGET - (SECONDS - START) )); }
# stage_limit CAP RESERVE: at most CAP seconds, leaving RESERVE seconds for later stages (min 10)
stage_limit() { local l; l=$(( $(left) - $2 )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 10 ] && l=10; echo "$l"; }
stamp() { echo; echo "== [$(( SECONDS - START ))s] $*"; }

if [ "$DRY_RUN" = 1 ]; then
  MODE="DRY RUN (CPU, tiny settings)"
  DEVICE=cpu
  TESTS=${GPU_CHECK_TESTS:-tests/test_benchmarking.py}
  BENCH=(--device cpu --quick --sizes 32x18,48x27 --scales 4 --dtypes fp32,fp16 --variants all
         --max-row-s 0.3 --threads 1)
else
  MODE="GPU"
  DEVICE=cuda
  TESTS=${GPU_CHECK_TESTS:-tests}
  BENCH=(--device cuda --quick --sizes 320x180,960x540 --scales 4 --dtypes fp32,fp16 --variants all)
fi

stamp "bcrn_fast GPU check: $MODE; out $OUTDIR; data ${DATA_DIR:-none}; budget ${BUDGET}s"
date -u
if COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null); then
  export BCRN_GIT_COMMIT="$COMMIT"
  echo "git $COMMIT$( [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (+ uncommitted changes)')"
else
  echo "git: no repository here (commit recorded as ${BCRN_GIT_COMMIT:-unknown})"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
else
  echo "nvidia-smi: not available"
fi
"$PYTHON" - <<'EOF' | tee "$OUTDIR/versions.txt"
import platform
import torch
try:
    import triton
    tv = triton.__version__
except ImportError:
    tv = "not installed"
print(f"python {platform.python_version()}  torch {torch.__version__}  triton {tv}  "
      f"CUDA {torch.version.cuda}  cuDNN {torch.backends.cudnn.version() if torch.cuda.is_available() else 'n/a'}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}  sm_{p.major}{p.minor}  {p.total_memory / 2**30:.0f} GiB  {p.multi_processor_count} SMs")
else:
    print("device: no CUDA device visible")
EOF
if [ "$DRY_RUN" != 1 ] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: no CUDA device visible to torch; use --dry-run on a CPU machine" >&2
  exit 2
fi

# ---------------------------------------------------------------- 1. build
stamp "build"
if grep -qE "CUDAExtension|BuildExtension|ext_modules" setup.py 2>/dev/null; then
  HAS_EXT="setup.py builds a CUDA extension"
else
  HAS_EXT="setup.py builds no CUDA extension"
fi
echo "$HAS_EXT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [ "$DRY_RUN" = 1 ]; then
  echo "dry run: skipping 'pip install --no-deps --no-build-isolation -e .' (using the current environment)"
  BUILD="skipped (dry run)"
else
  LIMIT=$(stage_limit 200 240)
  if timeout -k 10 "$LIMIT" "$PYTHON" -m pip install --no-deps --no-build-isolation -e . >"$OUTDIR/build.log" 2>&1; then
    BUILD="pip install -e . ok"
  else
    rc=$?
    tail -n 40 "$OUTDIR/build.log"
    BUILD="pip install -e . FAILED (rc $rc); fell back to PYTHONPATH=."
    if [ "$HAS_EXT" = "setup.py builds a CUDA extension" ]; then
      LIMIT=$(stage_limit 200 200)
      if timeout -k 10 "$LIMIT" "$PYTHON" setup.py build_ext --inplace >>"$OUTDIR/build.log" 2>&1; then
        BUILD="$BUILD; build_ext --inplace ok"
      else
        BUILD="$BUILD; build_ext --inplace FAILED (the cuda backend will be skipped)"
      fi
    fi
    # kernels/ installs as bcrn_fast.kernels; from the source tree it needs a link
    if ! "$PYTHON" -c "import bcrn_fast.kernels" >/dev/null 2>&1 && [ ! -e bcrn_fast/kernels ]; then
      ln -s ../kernels bcrn_fast/kernels && BUILD="$BUILD; linked bcrn_fast/kernels -> kernels"
    fi
  fi
fi
echo "build: $BUILD"
"$PYTHON" - <<EOF
import torch
try:
    import bcrn_fast.fused as f
except Exception as exc:
    print(f"bcrn_fast.fused: not importable ({type(exc).__name__}: {exc})")
else:
    probe = getattr(f, "available_backends", None)
    dev = torch.device("$DEVICE")
    print("fused backends on", dev, ":", probe(dev) if probe else "(no available_backends(); inferred by the harness)")
EOF

# ---------------------------------------------------------------- 2. tests
stamp "tests: pytest $TESTS -x -q -m 'not slow'"
[ -n "$DATA_DIR" ] && export BCRN_DATA_DIR="$DATA_DIR"
LIMIT=$(stage_limit 180 200)
# shellcheck disable=SC2086
timeout -k 10 "$LIMIT" "$PYTHON" -m pytest $TESTS -x -q -m "not slow" -p no:cacheprovider 2>&1 | tee "$OUTDIR/tests.log"
rc=${PIPESTATUS[0]}
case $rc in
  0) TESTS_STATUS="passed" ;;
  124|137) TESTS_STATUS="TIMEOUT after ${LIMIT}s (results above are partial)" ;;
  *) TESTS_STATUS="FAILED (pytest rc $rc; stopped at the first failure, see tests.log)" ;;
esac
echo "tests: $TESTS_STATUS"

# ---------------------------------------------------------------- 2b. error table (every module x dtype x backend)
stamp "accuracy: python -m bcrn_fast.accuracy"
timeout -k 10 "$(stage_limit 60 100)" "$PYTHON" -m bcrn_fast.accuracy > "$OUTDIR/accuracy.md" 2>&1 \
  || echo "accuracy table failed (see accuracy.md)"
tail -n 30 "$OUTDIR/accuracy.md"

# ---------------------------------------------------------------- 3. benchmark
BENCH_STATUS="not run"
if [ "$TESTS_STATUS" != "passed" ] && [ "${STOP_ON_TEST_FAILURE:-0}" = 1 ]; then
  BENCH_STATUS="skipped (STOP_ON_TEST_FAILURE=1 and the tests did not pass)"
else
  WEIGHTS=()
  if [ -n "$DATA_DIR" ] && { [ -f "$DATA_DIR/bcrn_official/best_epoch_x4.pth" ] || [ -f "$DATA_DIR/best_epoch_x4.pth" ]; }; then
    WEIGHTS=(--weights "$DATA_DIR")
  fi
  LIMIT=$(stage_limit 600 15)
  SOFT=$(( LIMIT - 45 )); [ "$SOFT" -lt 5 ] && SOFT=5
  # shellcheck disable=SC2206
  EXTRA=(${BENCH_ARGS:-})
  CMD=("$PYTHON" -m bcrn_fast.benchmarking "${BENCH[@]}" ${WEIGHTS[@]+"${WEIGHTS[@]}"} --budget-s "$SOFT"
       --out "$OUTDIR" ${EXTRA[@]+"${EXTRA[@]}"})
  stamp "benchmark (limit ${LIMIT}s, stops starting rows after ${SOFT}s): ${CMD[*]}"
  # progress lines live; the full output (table included) goes to bench.log
  timeout -k 10 "$LIMIT" "${CMD[@]}" 2>&1 | tee "$OUTDIR/bench.log" \
    | grep --line-buffered -E '^\[([0-9]+/[0-9]+|profile)\]|^wrote|^bcrn-fast bench|Error|error:'
  rc=${PIPESTATUS[0]}
  case $rc in
    0) BENCH_STATUS="ok" ;;
    1) BENCH_STATUS="done, but some variant FAILED verification or raised (see the table)" ;;
    124|137) BENCH_STATUS="TIMEOUT after ${LIMIT}s (partial table below)" ;;
    *) BENCH_STATUS="crashed (rc $rc)"; tail -n 30 "$OUTDIR/bench.log" ;;
  esac
fi

# ---------------------------------------------------------------- 4. summary, table last
stamp "summary"
echo "mode:      $MODE"
echo "build:     $BUILD"
echo "tests:     $TESTS_STATUS"
echo "benchmark: $BENCH_STATUS"
echo "elapsed:   $(( SECONDS - START ))s of ${BUDGET}s"
TABLE=$(ls -t "$OUTDIR"/*.md 2>/dev/null | head -n 1)
if [ -n "$TABLE" ]; then
  echo "files:     ${TABLE%.md}.json, $TABLE"
  echo
  cat "$TABLE"
else
  echo "no benchmark table was written"
fi
[ "$TESTS_STATUS" = "passed" ] && [ "$BENCH_STATUS" = "ok" ]
