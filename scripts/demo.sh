#!/usr/bin/env bash
# `make demo`: train with a hard crash after epoch 3, resume on retry, show the checkpoints,
# and print the commands to look again, ready to copy.
#   PYTHON       the interpreter with this package installed (default: .venv/bin/python)
#   DEMO_OUTPUT  where the run's datastore and metadata go (default: demo-output/)
#   USERNAME     Metaflow's user name, which names the run's namespace (default: demo)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="${DEMO_OUTPUT:-$ROOT/demo-output}"
FLOW="$ROOT/flows/train_resume.py"
rm -rf "$OUT"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# Metaflow refuses to run without a user name (it names the run's namespace, user:NAME).
export USERNAME="${USERNAME:-demo}"
# A private Metaflow world in $OUT: local datastore and metadata, no config from ~/.metaflowconfig.
ENVIRONMENT=(
  METAFLOW_HOME="$OUT"
  METAFLOW_DEFAULT_DATASTORE=local
  METAFLOW_DEFAULT_METADATA=local
  METAFLOW_DATASTORE_SYSROOT_LOCAL="$OUT"
)
export "${ENVIRONMENT[@]}"
cd "$OUT"

echo "== Training with a simulated hard crash after epoch 3 (attempt 0 dies, @retry resumes) =="
"$PY" "$FLOW" --no-pylint run --crash-at 3 --epochs 6

NEWEST=$("$PY" "$FLOW" --quiet checkpoint list --json | "$PY" -c "import json,sys; print(json.load(sys.stdin)[-1]['key'])")
RUN_ID=$(echo "$NEWEST" | cut -d/ -f2)
TASK=$(echo "$NEWEST" | cut -d/ -f2-4)

echo
echo "== checkpoint status =="
"$PY" "$FLOW" --quiet checkpoint status
echo
echo "== checkpoint list =="
"$PY" "$FLOW" --quiet checkpoint list
echo
echo "== checkpoint inspect $NEWEST =="
"$PY" "$FLOW" --quiet checkpoint inspect "$NEWEST"

# The block below is meant to be pasted into any shell, as any user: it names the
# interpreter and the environment, and picks the run by id (Metaflow's client finds a
# run id in any namespace), so nothing depends on this script's USERNAME.
cat <<MSG

Run $RUN_ID of TrainResumeFlow is in namespace user:$USERNAME; its datastore is $OUT/.metaflow.
To look again, paste these lines into a shell (\`source $ROOT/.venv/bin/activate\` lets you
type \`python\` instead of the full path; Metaflow needs USERNAME set to run at all):

    cd $OUT
    export ${ENVIRONMENT[*]}
    export USERNAME=\${USERNAME:-demo}
    $PY $FLOW checkpoint status --run-id $RUN_ID
    $PY $FLOW checkpoint list --run-id $RUN_ID
    $PY $FLOW checkpoint inspect $NEWEST
    $PY $FLOW card get $TASK card.html --type implicit_checkpoint
    $PY -c 'from metaflow import Checkpoint; print(Checkpoint().load("$NEWEST", fields=["epoch"]))'

The card can also be browsed live: $PY $FLOW card server (then open the train step).
Checkpoint files: $OUT/.metaflow/TrainResumeFlow/_implicit_checkpoints
MSG
