"""Putting the checkpoint card on a @checkpoint step, and refreshing it after saves.

This module sits beside the card package, not in it: the decorator imports it while
Metaflow is still resolving its plugins, and the card package imports Metaflow's card
modules, which load every extension's cards (ours included) on import. Metaflow's
card discovery only imports subpackages of ``plugins/cards``, so it skips this file.
"""

import os
import time
from typing import List, Optional

from ..metaflow_internals import (
    attach_step_decorators,
    card_datastore,
    card_of_this_task,
    storage_of,
    stored_card_files,
)
from ...engine.notices import warn

CARD_TYPE = "implicit_checkpoint"
#: The id the card gets when @checkpoint attaches it (or when a user's own
#: ``@card(type="implicit_checkpoint")`` has none).
CARD_ID = "implicit_checkpoint"


def attach_card(flow, step_name: str, decorators: list, wanted: bool) -> Optional[str]:
    """Make sure the step carries the checkpoint card; return its card id, or None.

    A checkpoint card already on the step (the user's own ``@card(type=...)``, or the
    one the runtime forwards to the task with ``--with``) is used as it is; it only
    gets the default id if it has none, so that the task can refresh it. Otherwise
    the card is attached when ``wanted``. Other cards on the step are left alone.
    """
    for deco in decorators:
        if deco.name == "card" and deco.attributes.get("type") == CARD_TYPE:
            if not deco.attributes.get("id"):
                deco.attributes["id"] = CARD_ID
            return deco.attributes["id"]
    if not wanted:
        return None
    attach_step_decorators(getattr(flow, step_name), ["card:type=%s,id=%s" % (CARD_TYPE, CARD_ID)])
    return CARD_ID


class LiveCardRefresh:
    """A ``CheckpointSession.on_commit`` listener that refreshes the running card.

    It hands the refresh to Metaflow's runtime card updates: Metaflow drops requests
    that come sooner than the card's ``refresh_interval`` after the previous one, and
    renders the others in a background process it starts without waiting for it. So a
    save pays for at most starting that process; a save that came too soon shows up
    with the next refresh, and every save is in the final card.
    """

    def __init__(self, card_id: str, attempt: int):
        self._card_id = card_id
        self._attempt = attempt
        self._card = None
        self._warned = False

    def __call__(self, artifact, manifest) -> None:
        try:
            if self._card is None:
                self._card = _runtime_card(self._card_id)
            self._card.refresh({"attempt": self._attempt})
        except Exception as ex:  # the checkpoint is committed: the card must not fail the save
            if not self._warned:
                self._warned = True
                warn(
                    "@checkpoint: checkpoint %s is committed, but the live card could not "
                    "be refreshed: %s: %s" % (artifact.key, type(ex).__name__, ex)
                )


def _own_card_uuid(card_id: str) -> Optional[str]:
    """The id Metaflow gave this process's checkpoint card (it names the card's files)."""
    return card_of_this_task(CARD_TYPE, card_id)[0]


def _runtime_card(card_id: str):
    """The task's handle on the checkpoint card (what ``current.card[card_id]`` returns)."""
    handle = card_of_this_task(CARD_TYPE, card_id)[1]
    if handle is None:
        raise LookupError("no %s card with id %r on this step" % (CARD_TYPE, card_id))
    return handle


#: Longest wait for an earlier attempt's card render to finish (Metaflow's own limit for
#: a card process it does not wait for).
ORPHAN_RENDER_TIMEOUT = 30.0


def wait_for_orphan_renders(pathspec: str, card_id: str, timeout: float = ORPHAN_RENDER_TIMEOUT) -> None:
    """Wait until no card render of this task's earlier attempts is running on this machine.

    An attempt killed hard leaves the card process it had started running; it writes its
    card when it finishes, possibly after this attempt removed the earlier cards. Such a
    process is found by its command line (``card create RUN/STEP/TASK ... --card-uuid U``,
    with another card's ``U``); where there is no ``/proc``, or the killed attempt ran on
    another machine (whose processes died with it), there is nothing to wait for.
    """
    runspec = pathspec.split("/", 1)[1]
    own = _own_card_uuid(card_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _card_processes(runspec, own):
        time.sleep(0.05)


def _card_processes(runspec: str, own_uuid: Optional[str]) -> List[int]:
    """Pids of checkpoint card renders of the task ``runspec`` other than ``own_uuid``'s."""
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    found = []
    for pid in entries:
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                args = f.read().decode("utf-8", "replace").split("\0")
        except OSError:
            continue
        if "create" not in args or runspec not in args or "--card-uuid" not in args:
            continue
        position = args.index("--card-uuid") + 1
        uuid = args[position] if position < len(args) else None
        if CARD_TYPE in args and uuid != own_uuid:
            found.append(int(pid))
    return found


def remove_cards_of_earlier_attempts(flow_datastore, pathspec: str, card_id: str) -> None:
    """In a retry: delete the checkpoint cards earlier attempts left.

    An attempt killed hard leaves its last live card behind (the card process it had
    started may even finish after the kill), and Metaflow names cards per process, so
    the task would end up with two checkpoint cards (``card get`` then lists them
    instead of saving one). This attempt's card tells the whole story anyway. Called
    when the retry starts and again when it ends; this attempt's own card is kept.
    """
    own = _own_card_uuid(card_id)
    from ..store_binding import backend_for_storage

    try:
        cards = card_datastore(flow_datastore, pathspec)
        found = stored_card_files(cards, CARD_TYPE, card_id)
        stale = [path for path in found if own is None or own not in path.rsplit("/", 1)[-1]]
        if stale:
            backend_for_storage(storage_of(cards)).delete(stale)
    except Exception as ex:  # a leftover card is untidy, not a reason to fail the task
        warn(
            "@checkpoint: could not remove the checkpoint card of an earlier attempt: %s: %s"
            % (type(ex).__name__, ex)
        )
