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

FLOW="$ROOT/flows/train_resume.py"
echo
echo "== python flows/train_resume.py checkpoint status =="
"$PY" "$FLOW" --quiet checkpoint status
echo
echo "== python flows/train_resume.py checkpoint list =="
"$PY" "$FLOW" --quiet checkpoint list
NEWEST=$("$PY" "$FLOW" --quiet checkpoint list --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)[-1]['key'])")
echo
echo "== python flows/train_resume.py checkpoint inspect $NEWEST =="
"$PY" "$FLOW" --quiet checkpoint inspect "$NEWEST"

cat <<MSG

Where to look (from $OUT, with the environment above):
  checkpoints: python $FLOW checkpoint list | status | inspect KEY | gc --dry-run
  notebook:    from metaflow import Checkpoint; Checkpoint().load("$NEWEST", fields=["epoch"])
  card:        python $FLOW card get $(echo "$NEWEST" | cut -d/ -f2-4) card.html --type implicit_checkpoint
               (or: python $FLOW card server, then open the train step)
  datastore:   $OUT/.metaflow/TrainResumeFlow/_implicit_checkpoints
  re-run:      cd $OUT && env METAFLOW_HOME=$OUT METAFLOW_DATASTORE_SYSROOT_LOCAL=$OUT \\
                 $PY $ROOT/flows/train_resume.py run --crash-at 3
MSG
