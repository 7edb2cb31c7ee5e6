"""The checkpoint card type: Metaflow calls it, it reads the checkpoint store and renders.

Metaflow renders cards in a subprocess that is handed the client ``Task``. The card
finds the task's datastore in the task's metadata, reads every committed checkpoint of
every attempt from the checkpoint store (attempts killed hard left no artifacts, but
their checkpoints are there), walks the lineage, and gets each attempt's status from
Metaflow's metadata.
"""

from typing import Any, Dict, Optional

from metaflow.cards import MetaflowCard

from ....engine.keys import split_pathspec
from ....engine.lineage import lineage
from ....engine.reading import list_task
from ...store_binding import store_from_config
from ...task_status import attempt_records
from ..attach import CARD_TYPE
from .page import render_body, render_page
from .report import TaskCheckpoints, build_report, resume_key


class CheckpointCard(MetaflowCard):
    """
    What a @checkpoint step saved, by which attempt, what each attempt resumed from,
    and how its metrics moved across crashes.

    @checkpoint attaches this card to its step (``card=False`` turns that off). While
    the task runs the card refreshes after saves; the final card is rendered by the
    attempt that succeeds and covers every attempt of the task.

    Parameters
    ----------
    options : Dict
        Unused; the card has no options.
    """

    type = CARD_TYPE
    RUNTIME_UPDATABLE = True
    # Live updates replace the card's body in place; viewers reload only for the final card.
    RELOAD_POLICY = MetaflowCard.RELOAD_POLICY_NEVER

    def __init__(self, options=None, components=None, graph=None, flow=None, **kwargs):
        super().__init__(options=options or {}, components=components or [], graph=graph, flow=flow)

    def render(self, task) -> str:
        return render_page(self._report(task, attempt=None, live=False))

    def render_runtime(self, task, data) -> str:
        return render_page(self._report(task, _attempt_of(data), live=True))

    def refresh(self, task, data) -> Dict[str, Any]:
        final = (data or {}).get("render_seq") == "final"
        return {"body": render_body(self._report(task, _attempt_of(data), live=not final))}

    @staticmethod
    def _report(task, attempt: Optional[int], live: bool) -> Dict[str, Any]:
        metadata = task.metadata_dict
        store = store_from_config(metadata.get("ds-type"), metadata.get("ds-root"))
        if attempt is None:
            attempt = task.current_attempt
        return task_report(store, task.pathspec, attempt, live)


def task_report(store, pathspec: str, attempt: int, live: bool) -> Dict[str, Any]:
    """The card's data for ``attempt`` of the task ``pathspec``, read from ``store``
    and from Metaflow's metadata (through the client)."""
    flow, run_id, step, task_id = split_pathspec(pathspec)
    checkpoints = [
        artifact.implicit_manifest
        for artifact in list_task(store, flow, run_id, step, task_id)
    ]
    records = attempt_records(pathspec)
    loaded = {r.attempt: r.loaded for r in records if r.loaded}
    return build_report(
        TaskCheckpoints(
            pathspec=pathspec,
            attempt=attempt,
            statuses=[r.status for r in records],
            checkpoints=checkpoints,
            lineage=lineage(store, resume_key(checkpoints, attempt, loaded)),
            live=live,
            loaded=loaded,
        )
    )


def _attempt_of(data: Optional[dict]) -> Optional[int]:
    """The attempt a live refresh comes from (sent by the task with each refresh)."""
    user = (data or {}).get("user") or {}
    attempt = user.get("attempt") if isinstance(user, dict) else None
    return attempt if isinstance(attempt, int) else None
