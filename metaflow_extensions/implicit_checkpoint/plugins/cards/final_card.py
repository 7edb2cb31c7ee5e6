"""The final checkpoint card, rendered in the task's own process.

When a task succeeds, Metaflow renders each card's final version in two subprocesses
(``flow.py card create``: one for the HTML, one for the viewers' last data update) and
waits for both; each starts Python and imports Metaflow and the flow again, which cost
every @checkpoint task ~0.7 s. The checkpoint card needs nothing only a subprocess has:
it reads the checkpoint store and the task's metadata. So @checkpoint hands its card's
decorator a card creator (``InProcessFinalCard``) that renders those two final versions
here and writes them where ``card create`` would, under the same names (``card get``,
``card server`` and the UI find them as before), registering the card's metadata as
``card create`` does. Live refreshes and every other card of the step still go to
Metaflow's own creator; if the in-process render fails, Metaflow renders the card.

Like the rest of this folder's top level, this module is not a card package: Metaflow's
card discovery does not import it.
"""

import time
from typing import Any, Optional

from ..metaflow_internals import (
    card_datastore,
    card_info_to_register,
    register_task_metadata,
    stop_card_render,
)
from ..task_status import client_reading
from .attach import CARD_TYPE
from ...engine.notices import warn

#: What Metaflow's card templates carry in place of the reload token; ``card create``
#: replaces it with "final" in a final render, so viewers reload once for it.
RELOAD_TOKEN_PLACEHOLDER = "[METAFLOW_RELOAD_TOKEN]"
FINAL_TOKEN = "final"


class InProcessFinalCard:
    """Stands in for Metaflow's ``CardCreator`` on the checkpoint card's decorator.

    Parameters
    ----------
    card_decorator : CardDecorator
        The step's checkpoint card decorator; its class holds Metaflow's creator.
    flow_datastore : FlowDataStore
        The run's datastore (cards live beside it, under the card root).
    store : CheckpointStore
        The task's checkpoint store.
    pathspec : str
        The task, ``Flow/run/step/task``.
    attempt : int
        The attempt running now (the one whose success renders the final card).
    metadata_provider : MetadataProvider
        The task's metadata provider: the card's statuses are read from it.
    """

    def __init__(self, card_decorator, flow_datastore, store, pathspec: str, attempt: int, metadata_provider):
        self._decorator_class = type(card_decorator)
        self._flow_datastore = flow_datastore
        self._store = store
        self._pathspec = pathspec
        self._attempt = attempt
        self._metadata_provider = metadata_provider
        self._body: Optional[str] = None

    @property
    def _metaflow_creator(self):
        return self._decorator_class.card_creator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._metaflow_creator, name)

    def create(self, mode: str = "render", final: bool = False, **options) -> None:
        if final and mode in ("render", "refresh"):
            try:
                self._write_final(mode, options["card_uuid"], options.get("user_set_card_id"))
                return
            except Exception as ex:  # a card problem must not fail the task
                warn(
                    "@checkpoint: the final checkpoint card could not be rendered in the task "
                    "(%s: %s); Metaflow renders it in a subprocess instead."
                    % (type(ex).__name__, ex)
                )
        return self._metaflow_creator.create(mode=mode, final=final, **options)

    def _write_final(self, mode: str, card_uuid: str, card_id: Optional[str]) -> None:
        from .checkpoint.page import page_html, render_body

        # A live render still in flight could overwrite the final card after it is written.
        stop_card_render(card_uuid)
        if self._body is None:
            from .checkpoint.card import task_report

            with client_reading(self._metadata_provider):
                report = task_report(self._store, self._pathspec, self._attempt, live=False)
            self._body = render_body(report)
        cards = card_datastore(self._flow_datastore, self._pathspec)
        if mode == "refresh":
            update = {"reload_token": FINAL_TOKEN, "data": {"body": self._body}, "created_on": time.time()}
            cards.save_data(card_uuid, CARD_TYPE, update, card_id=card_id)
            return
        page = page_html(self._pathspec, self._body)
        cards.save_card(card_uuid, CARD_TYPE, page.replace(RELOAD_TOKEN_PLACEHOLDER, FINAL_TOKEN), card_id=card_id)
        self._register_card_info(card_uuid)

    def _register_card_info(self, card_uuid: str) -> None:
        """The card's ``card-info`` metadata, once per card, as ``card create`` writes it."""
        info = card_info_to_register(self._metaflow_creator, card_uuid)
        if info is None:
            return
        import json

        _, run_id, step, task_id = self._pathspec.split("/")
        register_task_metadata(
            self._metadata_provider, (run_id, step, task_id), self._attempt, card_uuid,
            json.dumps(info), kind="card-info",
        )


def install(decorators, card_id: str, **creator_args) -> bool:
    """Give the step's checkpoint card decorator (``card_id``) an in-process final render.

    Returns False when the step has no such decorator.
    """
    for deco in decorators:
        if (
            deco.name == "card"
            and deco.attributes.get("type") == CARD_TYPE
            and deco.attributes.get("id") == card_id
        ):
            deco.card_creator = InProcessFinalCard(deco, **creator_args)
            return True
    return False
