#!/usr/bin/env bash
# `make demo`: train with a hard crash after epoch 3, resume on retry, show the checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$ROOT/demo-output"
rm -rf "$OUT"
mkdir -p "$OUT"
export USERNAME="${USERNAME:-demo}"
export METAFLOW_HOME="$OUT" METAFLOW_DEFAULT_DATASTORE=local METAFLOW_DEFAULT_METADATA=local
export METAFLOW_DATASTORE_SYSROOT_LOCAL="$OUT"
cd "$OUT"

echo "== Training with a simulated hard crash after epoch 3 (attempt 0 dies, @retry resumes) =="
"$PY" "$ROOT/flows/train_resume.py" --no-pylint run --crash-at 3 --epochs 6

echo
echo "== Checkpoints of the train step, from the datastore =="
"$PY" "$ROOT/scripts/show_checkpoints.py" TrainResumeFlow

cat <<MSG

Where to look:
  datastore:   $OUT/.metaflow/TrainResumeFlow/_implicit_checkpoints
  re-run:      cd $OUT && env METAFLOW_HOME=$OUT METAFLOW_DATASTORE_SYSROOT_LOCAL=$OUT \\
                 $PY $ROOT/flows/train_resume.py run --crash-at 3
MSG
