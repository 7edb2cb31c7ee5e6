"""The card's HTML: the report put into the templates of the ``templates`` folder beside
this file (shipped as package data).

The page is self-contained: the stylesheet is inlined, the chart is inline SVG, and the
only script is the few lines Metaflow's card viewers call with live updates.
"""

from functools import lru_cache
from pathlib import Path
from typing import Any, Dict

from ....engine.errors import CheckpointException
from ...metaflow_internals import render_template

PAGE = "checkpoint_card.html"
BODY = "checkpoint_body.html"
ROW = "checkpoint_row.html"  # a partial: one checkpoint's row of the history table
STYLES = "checkpoint_card.css"

_TEMPLATES = Path(__file__).resolve().parent / "templates"


def template_dir() -> Path:
    """The folder holding the card's templates and styles."""
    if (_TEMPLATES / PAGE).is_file():
        return _TEMPLATES
    raise CheckpointException(
        "The checkpoint card's templates are missing (looked in %s). Reinstall "
        "metaflow-implicit-checkpoint, or turn the card off with @checkpoint(card=False)."
        % _TEMPLATES
    )


@lru_cache(maxsize=None)
def _read(name: str) -> str:
    return (template_dir() / name).read_text(encoding="utf-8")


def render_body(report: Dict[str, Any]) -> str:
    """The card's content (what a live update replaces)."""
    return render_template(_read(BODY), report, {"checkpoint_row": _read(ROW)})


def render_page(report: Dict[str, Any]) -> str:
    """The whole card: a self-contained HTML document."""
    return page_html(report["pathspec"], render_body(report))


def page_html(pathspec: str, body: str) -> str:
    """The self-contained HTML document around a card ``body`` of the task ``pathspec``."""
    return render_template(_read(PAGE), {"pathspec": pathspec, "css": _read(STYLES), "body": body})
