"""The card's HTML: the report put into the templates of the top-level ``cards/`` folder.

The templates ship inside the package (setup.py maps ``cards/`` to the ``templates``
folder next to this file). In a source checkout installed in editable mode that folder
does not exist, and the checkout's own ``cards/`` is used.

The page is self-contained: the stylesheet is inlined, the chart is inline SVG, and the
only script is the few lines Metaflow's card viewers call with live updates.
"""

from functools import lru_cache
from pathlib import Path
from typing import Any, Dict

from metaflow.plugins.cards.card_modules import chevron

from ....engine.errors import CheckpointException

PAGE = "checkpoint_card.html"
BODY = "checkpoint_body.html"
ROW = "checkpoint_row.html"  # a partial: one checkpoint's row of the history table
STYLES = "checkpoint_card.css"

_HERE = Path(__file__).resolve().parent
_PACKAGED = _HERE / "templates"
_CHECKOUT = _HERE.parents[4] / "cards"  # <repo>/cards, beside metaflow_extensions/


def template_dir() -> Path:
    """The folder holding the card's templates and styles."""
    for folder in (_PACKAGED, _CHECKOUT):
        if (folder / PAGE).is_file():
            return folder
    raise CheckpointException(
        "The checkpoint card's templates are missing (looked in %s and %s). Reinstall "
        "metaflow-implicit-checkpoint, or turn the card off with @checkpoint(card=False)."
        % (_PACKAGED, _CHECKOUT)
    )


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return (template_dir() / name).read_text(encoding="utf-8")


def render_body(report: Dict[str, Any]) -> str:
    """The card's content (what a live update replaces)."""
    return chevron.render(_read(BODY), report, partials_dict={"checkpoint_row": _read(ROW)})


def render_page(report: Dict[str, Any]) -> str:
    """The whole card: a self-contained HTML document."""
    return page_html(report["pathspec"], render_body(report))


def page_html(pathspec: str, body: str) -> str:
    """The self-contained HTML document around a card ``body`` of the task ``pathspec``."""
    return chevron.render(_read(PAGE), {"pathspec": pathspec, "css": _read(STYLES), "body": body})
