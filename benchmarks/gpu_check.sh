#!/usr/bin/env bash
# The one GPU check (docs: docs/contributing.md, "Working without a GPU"), and its CPU rehearsal.
#
#   benchmarks/gpu_check.sh OUTDIR DATA_DIR               on the GPU machine (one run, < 8 min)
#   benchmarks/gpu_check.sh --rehearse OUTDIR [DATA_DIR]  on a CPU machine (CI): the same control flow
#
# Stages, in order, each under `timeout` (cap s: GPU budget; the rest of the run is reserved for later stages):
#   install      (30)  pip install --no-index --no-deps --no-build-isolation -e . (no extension yet)
#   preflight    (20)  versions, nvidia-smi, bcrn_fast imports with the GPU image's packages only,
#                      kernels are compiled JITFunctions, TRITON_INTERPRET unset
#   build        (75)  the same install with the CUDA extension, BCRN_CUDA_ARCHS = the card's capability only
#   sanitizer  (3x40)  compute-sanitizer memcheck of a 15x15 and 33x17 forward per backend, racecheck of the
#                      CUDA shared-memory kernels ("device not supported" is recorded, not fatal)
#   tests      (8x45)  GPU correctness tests, fused modules first, one process per test file, -k "not emu"
#   determinism  (25)  50 forwards at N=8 bit-identical (torch.equal)
#   profile      (60)  per-kernel torch.profiler table of one forward, 320x180 and 960x540 fp16, and the
#                      ConvNeXt, BSConv and ESA-apply launches timed under bcrn_fast.occupancy.TIMED
#   bench      (rest)  benchmark, every row in its own process (--isolate), baselines before fused rows
# Rehearsal only: venv (pinned GPU-image packages), aot (compile under Triton 3.6), interp (interpreter tests),
# collect (pytest --collect-only with BCRN_REHEARSE_GPU=1). GPU-only parts print SKIPPED with the reason.
#
# OUTDIR gets at most 8 files, written as they go (a timeout keeps what was measured): gpu_check.log (all
# output), summary.json (stage statuses, rewritten after every stage), build.log, sanitizer.log (GPU) or
# aot.md (rehearsal), tests.log, profile.md, and the benchmark's <date>_<device>.json / .md.
# Exit status: 0 when every stage passed (or was skipped with its reason), 1 otherwise, 2 for bad usage.
#
# Remote GPU run (device tool), after `cp -r ../shared/data gpu_data` (git-ignored):
#   run(command="PYTHONUNBUFFERED=1 benchmarks/gpu_check.sh $OUT gpu_data", carry=["gpu_data"], timeout_s=560)
#
# Knobs: PYTHON (default python3), GPU_CHECK_BUDGET_S (470), GPU_CHECK_STAGES (comma list: run only those),
# GPU_CHECK_AOT_ARGS (rehearsal AOT subset, default "--arch 90 --quick"), GPU_CHECK_INTERP_TESTS and
# GPU_CHECK_INTERP_K (rehearsal interpreter subset: tests/test_fused_modules.py -k "matches_reference and triton and (fp32 or fp16)"),
# GPU_CHECK_TESTS_DIR (tests), BENCH_ARGS (extra benchmark options), BCRN_REHEARSE_VENV (the rehearsal venv;
# default ~/.cache/bcrn_rehearse/venv-<pin hash>), BCRN_REHEARSE_PYTHON (use this interpreter instead of the venv:
# for the script's own tests), BCRN_REHEARSE_TORCH (the torch wheel or requirement; default the local CPU wheel).
set -u -o pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }

REHEARSE=0
POSITIONAL=()
for arg in "$@"; do
  case "$arg" in
    --rehearse|--dry-run) REHEARSE=1 ;;
    -h|--help) usage 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (expected --rehearse)" >&2; exit 2 ;;
    *) POSITIONAL+=("$arg") ;;
  esac
done
[ "${#POSITIONAL[@]}" -ge 1 ] || { echo "gpu_check.sh: expected OUTDIR [DATA_DIR]" >&2; exit 2; }
OUTDIR=${POSITIONAL[0]}
DATA_DIR=${POSITIONAL[1]:-}
if [ "$REHEARSE" = 0 ] && [ -z "$DATA_DIR" ]; then
  echo "gpu_check.sh: the GPU run needs DATA_DIR (a copy of ../shared/data inside the checkout, e.g. gpu_data)" >&2
  exit 2
fi

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
mkdir -p "$OUTDIR" && OUTDIR=$(cd "$OUTDIR" && pwd) || exit 2
if [ -n "$DATA_DIR" ]; then
  [ -d "$DATA_DIR" ] || { echo "gpu_check.sh: DATA_DIR $DATA_DIR is not a folder" >&2; exit 2; }
  DATA_DIR=$(cd "$DATA_DIR" && pwd)
  export BCRN_DATA_DIR="$DATA_DIR"
fi
exec > >(tee -a "$OUTDIR/gpu_check.log") 2>&1

PINS="$ROOT/benchmarks/gpu_image_packages.txt"
# The caps below are the GPU run's; a rehearsal runs them on a slow shared CPU: SCALE times longer, plus its
# own stages (venv, aot, interp, collect) with their own limits.
SCALE=1; [ "$REHEARSE" = 1 ] && SCALE=${GPU_CHECK_CPU_SCALE:-3}
BUDGET=${GPU_CHECK_BUDGET_S:-$(( 470 * SCALE + (REHEARSE ? 1800 : 0) ))}
START=$SECONDS
STAGES_WANTED=${GPU_CHECK_STAGES:-}
TESTS_DIR=${GPU_CHECK_TESTS_DIR:-tests}
export PYTHONUNBUFFERED=1
left() { echo $(( BUDGET - (SECONDS - START) )); }
# stage_limit CAP RESERVE: at most CAP seconds, leaving RESERVE seconds for later stages (at least 10)
stage_limit() {
  local l cap=$(( $1 * SCALE )); l=$(( $(left) - $2 * SCALE )); [ "$l" -gt "$cap" ] && l=$cap; [ "$l" -lt 10 ] && l=10
  echo "$l"
}
stamp() { echo; echo "== [$(( SECONDS - START ))s] $*"; }
wanted() { [ -z "$STAGES_WANTED" ] || [[ ",$STAGES_WANTED," == *",$1,"* ]]; }

NAMES=(); STATES=(); DETAILS=()
FAILED=0
# record NAME STATUS DETAIL: STATUS is ok, SKIPPED, FAILED, TIMEOUT or REFUSED; summary.json is rewritten each time
record() {
  NAMES+=("$1"); STATES+=("$2"); DETAILS+=("$3")
  case "$2" in FAILED|TIMEOUT) FAILED=1 ;; esac
  echo "-- $1: $2${3:+ ($3)}"
  {
    printf '{\n  "mode": "%s",\n  "elapsed_s": %d,\n  "budget_s": %d,\n  "stages": [\n' "$MODE" $(( SECONDS - START )) "$BUDGET"
    local i sep
    for i in "${!NAMES[@]}"; do
      sep=","; [ "$i" -eq $(( ${#NAMES[@]} - 1 )) ] && sep=""
      printf '    {"stage": "%s", "status": "%s", "detail": "%s"}%s\n' "${NAMES[$i]}" "${STATES[$i]}" \
        "$(printf '%s' "${DETAILS[$i]}" | tr '"\\\n' "'/ " | cut -c1-400)" "$sep"
    done
    printf '  ]\n}\n'
  } > "$OUTDIR/summary.json"
}
# status_of RC LIMIT: the stage status for a command's exit code
status_of() { case $1 in 0) echo ok ;; 124|137) echo TIMEOUT ;; *) echo FAILED ;; esac; }

if [ "$REHEARSE" = 1 ]; then MODE="rehearsal (CPU)"; else MODE="GPU"; fi
stamp "bcrn_fast GPU check: $MODE; out $OUTDIR; data ${DATA_DIR:-none}; budget ${BUDGET}s"
date -u
if COMMIT=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null); then
  export BCRN_GIT_COMMIT="$COMMIT"
  echo "git $COMMIT$( [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' (+ uncommitted changes)')"
fi

# ------------------------------------------------------------------ the interpreter
if [ "$REHEARSE" = 1 ]; then
  # A throw-away venv holding only the GPU image's packages (the local torch CPU wheel stands in for 2.11).
  TORCH_REQ=${BCRN_REHEARSE_TORCH:-$(ls /opt/wheels/torch-2.13.0+cpu-*.whl 2>/dev/null | head -n 1)}
  TORCH_REQ=${TORCH_REQ:-torch==2.13.0}
  if [ -n "${BCRN_REHEARSE_PYTHON:-}" ]; then
    PYTHON=$BCRN_REHEARSE_PYTHON
    record venv SKIPPED "BCRN_REHEARSE_PYTHON=$PYTHON given: using it as is"
  else
    KEY=$( { cat "$PINS"; echo "$TORCH_REQ"; python3 --version 2>&1; } | sha256sum | cut -c1-12)
    VENV=${BCRN_REHEARSE_VENV:-$HOME/.cache/bcrn_rehearse/venv-$KEY}
    PYTHON=$VENV/bin/python
    if [ -f "$VENV/.complete" ]; then
      record venv ok "reused $VENV (pin hash $KEY)"
    else
      stamp "venv: building $VENV from $PINS (pin hash $KEY)"
      rm -rf "$VENV.partial" && mkdir -p "$(dirname "$VENV")"
      if timeout -k 10 900 bash -c 'set -e; python3 -m venv "$1"; "$1/bin/pip" install -q --no-deps "$2";
           "$1/bin/pip" install -q --no-deps -r "$3"; "$1/bin/pip" check' _ "$VENV.partial" "$TORCH_REQ" "$PINS" \
           > "$OUTDIR/build.log" 2>&1; then
        # only a complete venv gets the final name (scripts are always run as "$PYTHON -m ...")
        rm -rf "$VENV" && mv "$VENV.partial" "$VENV" && touch "$VENV/.complete"
        record venv ok "built $VENV"
      else
        tail -n 20 "$OUTDIR/build.log"
        record venv FAILED "could not build the rehearsal venv (see build.log)"
        stamp "summary"; exit 1
      fi
    fi
  fi
else
  PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
fi
echo "python: $PYTHON"

# ------------------------------------------------------------------ carried wheels (GPU: no index, nothing resolved)
if [ -d "$ROOT/.whl" ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  SITE=${TMPDIR:-/tmp}/bcrn_site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$ROOT"/.whl/*.whl && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "carried wheels installed into $SITE: $(ls "$ROOT"/.whl)"
fi

HAVE_GPU=0
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && HAVE_GPU=1
if [ "$REHEARSE" = 0 ] && [ "$HAVE_GPU" = 0 ]; then
  echo "gpu_check.sh: nvidia-smi sees no GPU here; use --rehearse on a CPU machine" >&2
  record preflight FAILED "no GPU (nvidia-smi)"; exit 1
fi

# ------------------------------------------------------------------ install (the same command on both machines)
PIP_INSTALL=("$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e .)
if wanted install; then
  stamp "install: BCRN_NO_CUDA=1 ${PIP_INSTALL[*]} (Python package only; the extension is built after preflight)"
  BCRN_NO_CUDA=1 timeout -k 10 "$(stage_limit 30 400)" "${PIP_INSTALL[@]}" >>"$OUTDIR/build.log" 2>&1
  rc=$?
  [ $rc -eq 0 ] || tail -n 30 "$OUTDIR/build.log"
  record install "$(status_of $rc)" "rc $rc"
  [ $rc -eq 0 ] || { echo "gpu_check.sh: the project does not install; stopping here"; exit 1; }
fi

# ------------------------------------------------------------------ preflight
if wanted preflight; then
  stamp "preflight"
  [ "$HAVE_GPU" = 1 ] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap \
    --format=csv,noheader
  EXPECT=(); [ "$REHEARSE" = 0 ] && EXPECT=(--expect-gpu)
  timeout -k 5 "$(stage_limit 20 300)" "$PYTHON" benchmarks/gpu_stages.py preflight --pins "$PINS" \
    ${EXPECT[@]+"${EXPECT[@]}"} ${GPU_CHECK_PREFLIGHT_MODULES:+--modules "$GPU_CHECK_PREFLIGHT_MODULES"}
  rc=$?
  record preflight "$(status_of $rc)" "imports with the GPU image's packages only; rc $rc"
  if [ $rc -ne 0 ]; then
    echo "gpu_check.sh: preflight failed: nothing later can be trusted, stopping here"
    stamp "summary"; cat "$OUTDIR/summary.json"; exit 1
  fi
fi

# ------------------------------------------------------------------ build the CUDA extension for this card only
if wanted build; then
  stamp "build: ${PIP_INSTALL[*]} with the CUDA extension"
  if [ "$HAVE_GPU" = 0 ]; then
    record build SKIPPED "the CUDA extension is built for the card it runs on: needs a GPU"
  else
    CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' .')
    export BCRN_CUDA_ARCHS=${BCRN_CUDA_ARCHS:-${CAP:-90}}
    echo "CUDA extension for sm_$BCRN_CUDA_ARCHS only (this card)"
    timeout -k 10 "$(stage_limit 75 330)" "${PIP_INSTALL[@]}" >>"$OUTDIR/build.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || tail -n 30 "$OUTDIR/build.log"
    grep -E "bcrn_fast: (built|NOT building)" "$OUTDIR/build.log" | tail -n 2
    EXT=$("$PYTHON" -c "from bcrn_fast.ops import cuda_ext as c; i = c.info(); print('built sm_' + str(i['archs']) if i['built'] else 'NOT built: ' + str(i['error']))" 2>&1 | tail -n 1)
    echo "CUDA extension: $EXT"
    case "$EXT" in built*) ;; *) [ $rc -eq 0 ] && rc=1 ;; esac
    record build "$(status_of $rc)" "sm_$BCRN_CUDA_ARCHS; $EXT (the cuda rows and tests skip without it)"
  fi
fi

# ------------------------------------------------------------------ rehearsal: AOT compile under this Triton
if [ "$REHEARSE" = 1 ] && wanted aot; then
  # shellcheck disable=SC2206
  AOT_ARGS=(${GPU_CHECK_AOT_ARGS:---arch 90 --quick} --markdown "$OUTDIR/aot.md")
  stamp "aot: python -m bcrn_fast.aot ${AOT_ARGS[*]} (TRITON_INTERPRET unset)"
  env -u TRITON_INTERPRET timeout -k 10 "${GPU_CHECK_AOT_LIMIT:-600}" "$PYTHON" -m bcrn_fast.aot "${AOT_ARGS[@]}" \
    > /dev/null
  rc=$?
  record aot "$(status_of $rc)" "${AOT_ARGS[*]}; rc $rc"
fi

# ------------------------------------------------------------------ sanitizer
if wanted sanitizer; then
  stamp "sanitizer"
  if [ "$HAVE_GPU" = 0 ] || ! command -v compute-sanitizer >/dev/null 2>&1; then
    record sanitizer SKIPPED "needs a GPU and compute-sanitizer"
  else
    SAN=ok; NOTE=""
    for spec in "memcheck triton" "memcheck cuda" "racecheck cuda"; do
      set -- $spec
      LIMIT=$(stage_limit 40 250)
      echo "compute-sanitizer --tool $1: forward with backend=$2 (limit ${LIMIT}s)"
      timeout -k 5 "$LIMIT" compute-sanitizer --tool "$1" --error-exitcode 9 \
        "$PYTHON" benchmarks/gpu_stages.py forward --backend "$2" >>"$OUTDIR/sanitizer.log" 2>&1
      rc=$?
      tail -n 3 "$OUTDIR/sanitizer.log"
      if tail -n 40 "$OUTDIR/sanitizer.log" | grep -q "^SKIPPED"; then
        NOTE="$NOTE $1/$2: SKIPPED ($(grep '^SKIPPED' "$OUTDIR/sanitizer.log" | tail -n 1 | cut -c1-120));"
      elif tail -n 40 "$OUTDIR/sanitizer.log" | grep -qiE "device not supported|error 999"; then
        NOTE="$NOTE $1/$2: REFUSED (device not supported);"; [ "$SAN" = ok ] && SAN=REFUSED
      elif [ $rc -ne 0 ]; then
        NOTE="$NOTE $1/$2: $(status_of $rc) rc $rc;"; SAN=FAILED
      else
        NOTE="$NOTE $1/$2: clean;"
      fi
    done
    record sanitizer "$SAN" "$NOTE"
  fi
fi

# ------------------------------------------------------------------ rehearsal: interpreter tests (bounded subset)
if [ "$REHEARSE" = 1 ] && wanted interp; then
  INTERP=${GPU_CHECK_INTERP_TESTS:-"$TESTS_DIR/test_fused_modules.py"}
  stamp "interp: BCRN_QUICK=1 pytest $INTERP (Triton interpreter, this Triton and NumPy)"
  # shellcheck disable=SC2086
  BCRN_QUICK=1 timeout -k 10 "${GPU_CHECK_INTERP_LIMIT:-600}" "$PYTHON" -m pytest $INTERP -x -q \
    -p no:cacheprovider -k "${GPU_CHECK_INTERP_K:-matches_reference and triton and (fp32 or fp16)}" >>"$OUTDIR/tests.log" 2>&1
  rc=$?
  tail -n 3 "$OUTDIR/tests.log"
  [ $rc -eq 5 ] && rc=1  # no tests collected is a failure
  record interp "$(status_of $rc)" "$INTERP; rc $rc"
fi

# ------------------------------------------------------------------ rehearsal: what the GPU session would collect
if [ "$REHEARSE" = 1 ] && wanted collect; then
  stamp "collect: BCRN_REHEARSE_GPU=1 pytest --collect-only $TESTS_DIR (no test module may set TRITON_INTERPRET)"
  env -u TRITON_INTERPRET BCRN_REHEARSE_GPU=1 timeout -k 10 120 "$PYTHON" -m pytest "$TESTS_DIR" --collect-only -q \
    -p no:cacheprovider >>"$OUTDIR/tests.log" 2>&1
  rc=$?
  tail -n 4 "$OUTDIR/tests.log"
  record collect "$(status_of $rc)" "rc $rc"
fi

# ------------------------------------------------------------------ GPU tests, one process per file
if wanted tests; then
  stamp "tests: one pytest process per file, -k 'not emu'"
  if [ "$HAVE_GPU" = 0 ]; then
    record tests SKIPPED "the GPU correctness tests need a GPU (the rehearsal ran interp and collect instead)"
  else
    FILES=()
    for f in test_fused_modules.py test_fused_model.py test_gpu_kernels.py test_op_bsconv.py test_op_convnext.py \
             test_op_bcb_front.py test_op_cca.py test_op_esa.py test_cuda_ext.py; do
      [ -f "$TESTS_DIR/$f" ] && FILES+=("$TESTS_DIR/$f")
    done
    T_STATE=ok; NOTE=""
    for f in "${FILES[@]}"; do
      LIMIT=$(stage_limit 45 200)
      echo "pytest $f (limit ${LIMIT}s)" | tee -a "$OUTDIR/tests.log"
      timeout -k 5 "$LIMIT" "$PYTHON" -m pytest "$f" -q -p no:cacheprovider -k "not emu" -m "not slow" \
        >>"$OUTDIR/tests.log" 2>&1
      rc=$?
      [ $rc -eq 5 ] && rc=0  # a file with nothing to run here (all deselected) is not a failure
      tail -n 1 "$OUTDIR/tests.log"
      NOTE="$NOTE $(basename "$f" .py): $(status_of $rc);"
      [ $rc -ne 0 ] && T_STATE=FAILED
    done
    record tests "$T_STATE" "$NOTE"
  fi
fi

# ------------------------------------------------------------------ determinism and profile
if wanted determinism; then
  stamp "determinism: 50 forwards at N=8 bit-identical"
  timeout -k 5 "$(stage_limit 25 150)" "$PYTHON" benchmarks/gpu_stages.py determinism
  rc=$?
  record determinism "$(status_of $rc)" "rc $rc$( [ "$HAVE_GPU" = 0 ] && echo '; GPU part SKIPPED: needs a CUDA device')"
fi
if wanted profile; then
  stamp "profile: one forward at 320x180 and 960x540 fp16, per kernel; the launch-configuration candidates"
  timeout -k 5 "$(stage_limit 60 110)" "$PYTHON" benchmarks/gpu_stages.py profile --out "$OUTDIR/profile.md"
  rc=$?
  record profile "$(status_of $rc)" "rc $rc$( [ "$HAVE_GPU" = 0 ] && echo '; GPU part SKIPPED: needs a CUDA device')"
fi

# ------------------------------------------------------------------ benchmark: every row in its own process
if wanted bench; then
  if [ "$REHEARSE" = 1 ]; then
    BENCH=(--device cpu --quick --sizes 32x18 --scales 4 --dtypes fp32
           --variants eager,onnxruntime,fused_torch,fused_triton,fused_triton_graph,fused_cuda,inductor_max_autotune
           --max-row-s 0.2 --threads 1)
  else
    BENCH=(--device cuda --quick --sizes 320x180,960x540 --scales 4 --dtypes fp32,fp16
           --variants eager,inductor,fused_triton,fused_triton_graph,fused_cuda,inductor_reduce_overhead,inductor_max_autotune)
    [ -f "$DATA_DIR/bcrn_official/best_epoch_x4.pth" ] && BENCH+=(--weights "$DATA_DIR/bcrn_official")
  fi
  LIMIT=$(stage_limit 600 10)
  SOFT=$(( LIMIT - 10 )); [ "$SOFT" -lt 5 ] && SOFT=5
  # shellcheck disable=SC2206
  EXTRA=(${BENCH_ARGS:-})
  CMD=("$PYTHON" -m bcrn_fast.benchmarking "${BENCH[@]}" --isolate --budget-s "$SOFT" --out "$OUTDIR"
       ${EXTRA[@]+"${EXTRA[@]}"})
  stamp "bench (limit ${LIMIT}s, starts no row that may not end by ${SOFT}s): ${CMD[*]}"
  timeout -k 10 "$LIMIT" "${CMD[@]}" > /dev/null
  rc=$?
  case $rc in
    0) B_STATE=ok ;; 1) B_STATE=FAILED ;; 124|137) B_STATE=TIMEOUT ;; *) B_STATE=FAILED ;;
  esac
  record bench "$B_STATE" "rc $rc$( [ $rc -eq 1 ] && echo ': a row was WRONG, CRASHED or TIMEOUT (see the table)')"
fi

# ------------------------------------------------------------------ summary, table last
stamp "summary ($MODE, $(( SECONDS - START ))s of ${BUDGET}s)"
for i in "${!NAMES[@]}"; do printf '  %-12s %-8s %s\n' "${NAMES[$i]}" "${STATES[$i]}" "${DETAILS[$i]}"; done
TABLE=$(ls -t "$OUTDIR"/*_*.md 2>/dev/null | head -n 1)
if [ -n "$TABLE" ]; then
  echo; echo "benchmark table: $TABLE"; echo
  sed -n '/^## Results/,$p' "$TABLE"
fi
exit $FAILED
