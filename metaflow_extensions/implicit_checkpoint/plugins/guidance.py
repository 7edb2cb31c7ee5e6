"""What a @checkpoint step tells its user, once, where a silent default would cost them:

- ``LeftOutNote``: a save that leaves out attributes the step assigned (``include=``
  names others), or a load of a checkpoint that lacks attributes the step assigned
  before ``load()``: those keep the value the step gave them, so a resume silently
  restarts that part of the state (an epoch counter at 0 with trained weights).
- ``failure_note``: a step that failed with a checkpoint to resume from, but that nothing
  will resume (no @retry, its retries used up, or an error no retry fixes): the command
  that does.
- ``NotInCheckpointStep``: ``current.checkpoint`` outside a @checkpoint step says what
  to add, instead of Metaflow's "Internal error" and an AttributeError.
"""

import os
import sys
from typing import Any, Callable, Dict, Iterable, Optional

from ..engine.errors import CheckpointException
from ..engine.fields import FieldSelector
from ..engine.notices import warn


def _names(names: Iterable[str]) -> str:
    return ", ".join("self.%s" % name for name in names)


class LeftOutNote:
    """Says once per attempt which assigned attributes its checkpoints do not hold.

    ``on_commit`` (a ``CheckpointSession.on_commit`` listener): at the first save, when
    ``include=`` leaves assigned attributes out. ``on_load`` (an ``on_load`` listener):
    when the loaded checkpoint lacks attributes the step assigned before ``load()``."""

    def __init__(self, step: str, selector: FieldSelector, assigned: Callable[[], Dict[str, Any]]):
        self._step = step
        self._selector = selector
        self._assigned = assigned
        self._said = False

    def _include(self) -> str:
        return "@checkpoint(include=%r)" % (self._selector.include,)

    def on_commit(self, artifact, manifest) -> None:
        if self._said or self._selector.include is None:
            return
        self._said = True
        left = self._selector.left_out(self._assigned(), artifact.implicit_manifest["fields"])
        if left:
            warn(
                "%s on step *%s*: checkpoint %s leaves out %s, which the step assigned. A "
                "retry that loads it restores %s, but %s keep%s the value the step gives "
                "%s before load(), so that part of the state starts over. Add %s to "
                "include=, or use exclude=[...] to leave out only what you name."
                % (self._include(), self._step, artifact.key, _names(left),
                   ", ".join(sorted(artifact.implicit_manifest["fields"])) or "nothing",
                   _names(left), "s" if len(left) == 1 else "",
                   "it" if len(left) == 1 else "them", ", ".join(repr(n) for n in left))
            )

    def on_load(self, artifact) -> None:
        if self._said:
            return
        saved = artifact.implicit_manifest.get("fields") or {}
        left = self._selector.left_out(self._assigned(), saved)
        if not left:
            return
        self._said = True
        if self._selector.include is not None:
            why = "%s leaves %s out of every save" % (
                self._include(), "it" if len(left) == 1 else "them")
        else:
            why = ("%s not assigned when it was saved, or it was saved by a worker's "
                   "Checkpoint().save()" % ("it was" if len(left) == 1 else "they were"))
        warn(
            "@checkpoint on step *%s*: loaded checkpoint %s, which does not hold %s: %s "
            "the value the step assigned before load() (%s)."
            % (self._step, artifact.key, _names(left),
               "it keeps" if len(left) == 1 else "they keep", why)
        )


def failure_note(
    step: str,
    newest_key: Optional[str],
    retries: int,
    retries_left: int,
    not_retryable: Optional[str],
    load_policy: str,
) -> Optional[str]:
    """What to say when a step ends failed and nothing will resume it (None: nothing).

    ``retries``: the step's @retry count (0: none); ``retries_left``: how many of them
    this failure leaves; ``not_retryable``: why the error is one no retry fixes (the task
    is then not retried, see retry_policy.py)."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "flow.py"
    resumable = newest_key is not None and load_policy != "none"
    resume = (
        "`python %s resume` reruns the failed step in a new run, and it continues from the "
        "newest checkpoint (%s)" % (script, newest_key)
        if resumable
        else "`python %s resume` reruns the failed step in a new run" % script
    )
    if not_retryable:
        spared = (
            ", so it is not retried: its %d remaining @retry attempt(s) would fail the same way"
            % retries_left
            if retries_left > 0
            else ""
        )
        return (
            "@checkpoint: step *%s* failed with an error no retry can fix (%s)%s. Fix it, "
            "then %s." % (step, not_retryable, spared, resume)
        )
    if not resumable:
        return None
    why = (
        "it has no @retry"
        if retries == 0
        else "this was its last attempt (@retry(times=%d) used up)" % retries
    )
    hint = (
        " Add @retry(times=3) above @checkpoint to resume automatically after a crash."
        if retries == 0
        else ""
    )
    return (
        "@checkpoint: step *%s* failed and %s, so nothing resumes it now. Its checkpoints "
        "are kept: %s.%s" % (step, why, resume, hint)
    )


class NotInCheckpointStep(CheckpointException, AttributeError):
    """``current.checkpoint`` where there is none: outside a running @checkpoint step.

    Also an AttributeError, so ``"checkpoint" in current`` and ``getattr(current,
    "checkpoint", None)`` keep answering False and None."""

    headline = "current.checkpoint is not available here"


def not_in_checkpoint_step() -> NotInCheckpointStep:
    """The error ``current.checkpoint`` raises outside a @checkpoint step."""
    from metaflow import current

    step = current.step_name if current.is_running_flow else None
    if step:
        return NotInCheckpointStep(
            "Step *%s* uses current.checkpoint but has no @checkpoint. Add it above @step "
            "(with @retry, so that a crash resumes from the newest checkpoint):\n\n"
            "    @retry(times=3)\n    @checkpoint\n    @step\n    def %s(self):\n        ...\n\n"
            "or run with `--with checkpoint` to add it to every step." % (step, step)
        )
    return NotInCheckpointStep(
        "current.checkpoint exists while a @checkpoint step runs. In a notebook or a "
        "script, use the client: `from metaflow import Checkpoint; "
        "Checkpoint().list(task=\"Flow/run/step/task\")`."
    )
