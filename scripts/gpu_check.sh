#!/usr/bin/env bash
# The one-shot device check of issue 23, for a bare GPU machine without network (torch
# with CUDA, numpy, msgpack and cloudpickle there; Metaflow, blake3 and boto3 not):
#
#   1. the machine: Python, torch, the CUDA devices;
#   2. installs what it lacks from the wheels carried in the working tree (gpu-wheels/,
#      made by scripts/fetch_gpu_wheels.sh) into .gpu-deps/, nothing system-wide, and puts
#      this checkout on PYTHONPATH (Metaflow finds the extension on sys.path);
#   3. the CUDA tests (pytest -m cuda tests/test_cuda.py) and the device ordering and
#      placement tests;
#   4. the GPU benchmark (benchmarks/gpu_bench.py: 1 GB and 10 GB side by side, the
#      physical limits, training throughput), within what is left of the time budget.
#
# Usage: scripts/gpu_check.sh [--dry-run | --rehearse]
#   --dry-run   print what it would install and run, run nothing (works without CUDA).
#   --rehearse  run it all on a machine without CUDA (a Python 3.12 with torch, numpy,
#               msgpack, cloudpickle, as the GPU machine has): the CUDA tests skip and
#               the benchmark runs --smoke; for trying the check before a GPU is lent.
# Settings (environment): PYTHON (python3), GPU_WHEELS (gpu-wheels), CHECK_BUDGET (seconds
# for the whole check, 450: under 8 minutes), OUT (results go to $OUT/gpu_check; default
# gpu-check-output/gpu_check).
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$PWD"
DRY_RUN=0
REHEARSE=0
for argument in "$@"; do
  case "$argument" in
    --dry-run) DRY_RUN=1 ;;
    --rehearse) REHEARSE=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $argument (use --dry-run, --rehearse or nothing)" >&2; exit 64 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-gpu-wheels}"
DEPS="$REPO/.gpu-deps"
BUDGET="${CHECK_BUDGET:-450}"
RESULTS="${OUT:-$REPO/gpu-check-output}/gpu_check"
REQUIREMENTS=(metaflow blake3 boto3 pytest)
TESTS=(tests/test_cuda.py tests/test_device_ordering.py tests/test_device_placement.py)
TEST_TIMEOUT=240
RUN_ENV=(env "PYTHONPATH=$DEPS:$REPO${PYTHONPATH:+:$PYTHONPATH}" "USERNAME=${USERNAME:-gpucheck}")
START=$SECONDS

section() { echo; echo "=== gpu_check: $* ==="; }
show() { printf '  %s\n' "$*"; }
would() { echo "  would run: $*"; }

section "1/4 machine"
show "python: $("$PYTHON" --version 2>&1)"
TORCH_REPORT="$("$PYTHON" - <<'EOF' 2>&1
try:
    import torch
except Exception as ex:  # a report line, not a failure: the dry run works anywhere
    print("torch: not importable (%s)" % ex)
else:
    print("torch: %s, CUDA %s" % (torch.__version__, torch.version.cuda))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    print("CUDA devices: %d" % count)
    for index in range(count):
        print("  cuda:%d %s" % (index, torch.cuda.get_device_name(index)))
EOF
)"
echo "$TORCH_REPORT" | sed 's/^/  /'
if ! echo "$TORCH_REPORT" | grep -q "^CUDA devices: [1-9]"; then
  if [ "$DRY_RUN" = 0 ] && [ "$REHEARSE" = 0 ]; then
    echo "gpu_check: no CUDA device on this machine; run it on the GPU machine, or with --dry-run to see the plan (--rehearse to run it on CPU)." >&2
    exit 2
  fi
  show "(no CUDA device here: $([ "$DRY_RUN" = 1 ] && echo "a dry run only" || echo "a rehearsal: CUDA tests skip, the benchmark is a smoke run"))"
fi

section "2/4 install from $WHEELS"
shopt -s nullglob
WHEEL_FILES=("$WHEELS"/*.whl)
if [ ${#WHEEL_FILES[@]} = 0 ]; then
  echo "  no wheels in $WHEELS/: run scripts/fetch_gpu_wheels.sh on a machine with network, and carry $WHEELS/ to the GPU machine."
  [ "$DRY_RUN" = 1 ] || exit 3
else
  show "${#WHEEL_FILES[@]} wheels, $(du -sh "$WHEELS" | cut -f1):"
  for wheel in "${WHEEL_FILES[@]}"; do show "  $(basename "$wheel")"; done
fi
INSTALL=("$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$WHEELS" --target "$DEPS" --upgrade "${REQUIREMENTS[@]}")
IMPORT_CHECK=("${RUN_ENV[@]}" "$PYTHON" -c "import blake3, boto3, pytest; from metaflow import checkpoint; import metaflow; print('  metaflow', metaflow.__version__, 'sees @checkpoint')")
if [ "$DRY_RUN" = 1 ]; then
  would "${INSTALL[*]}"
  would "(without pip: each wheel unzipped into $DEPS)"
  would "cd $RESULTS && ${IMPORT_CHECK[*]}"
else
  rm -rf "$DEPS"
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "${INSTALL[@]}" || { echo "gpu_check: installing from $WHEELS failed" >&2; exit 3; }
  else
    show "no pip: unzipping the wheels into $DEPS"
    "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$DEPS" "${WHEEL_FILES[@]}" \
      || { echo "gpu_check: unzipping the wheels failed" >&2; exit 3; }
  fi
  mkdir -p "$RESULTS"
  # From another folder: the checkout must be found through PYTHONPATH, not the cwd.
  (cd "$RESULTS" && "${IMPORT_CHECK[@]}") || { echo "gpu_check: the package does not import with its dependencies" >&2; exit 3; }
fi

section "3/4 CUDA tests"
PYTEST=("${RUN_ENV[@]}" timeout "$TEST_TIMEOUT" "$PYTHON" -m pytest -q -rs -p no:cacheprovider "${TESTS[@]}")
if [ "$DRY_RUN" = 1 ]; then
  would "${PYTEST[*]}   (the cuda-marked tests are all of tests/test_cuda.py: pytest -m cuda)"
  TESTS_RC="not run"
else
  "${PYTEST[@]}" 2>&1 | tee "$RESULTS/tests.log"
  TESTS_RC=${PIPESTATUS[0]}
fi

section "4/4 GPU benchmark"
LEFT=$((BUDGET - (SECONDS - START) - 15))
# A 30 s training window holds one background save (at 15 s): a save every 30 s.
BENCH_ARGS=(--sizes-gb 1,10 --rounds 1 --train-seconds 30 --save-every 30)
[ "$REHEARSE" = 1 ] && BENCH_ARGS+=(--smoke)
BENCH=("${RUN_ENV[@]}" timeout "$LEFT" "$PYTHON" benchmarks/gpu_bench.py "${BENCH_ARGS[@]}" --json "$RESULTS/gpu_bench.json")
if [ "$DRY_RUN" = 1 ]; then
  would "${BENCH[*]}"
  "$PYTHON" benchmarks/gpu_bench.py --dry-run "${BENCH_ARGS[@]}" | sed 's/^/  /'
  BENCH_RC="not run"
elif [ "$LEFT" -lt 60 ]; then
  echo "  skipped: $LEFT s left of the $BUDGET s budget"
  BENCH_RC="skipped"
else
  "${BENCH[@]}" 2>&1 | grep -v "UserWarning\|return func" | tee "$RESULTS/gpu_bench.log"
  BENCH_RC=${PIPESTATUS[0]}
  [ "$BENCH_RC" = 124 ] && echo "  (cut at the time budget: the sizes printed above are complete)"
fi

section "summary"
show "mode:       $([ "$DRY_RUN" = 1 ] && echo "dry run (nothing installed or run)" || { [ "$REHEARSE" = 1 ] && echo "rehearsal on CPU" || echo "device check"; })"
show "tests:      exit $TESTS_RC"
show "benchmark:  exit $BENCH_RC"
show "elapsed:    $((SECONDS - START)) s of a $BUDGET s budget"
[ "$DRY_RUN" = 1 ] || show "results:    $RESULTS"
if [ "$DRY_RUN" = 1 ]; then exit 0; fi
[ "$TESTS_RC" = 0 ] && { [ "$BENCH_RC" = 0 ] || [ "$BENCH_RC" = 124 ]; }
