"""In a task of a @checkpoint step, the engine's warnings (engine/notices.py) go to the
logger Metaflow hands the decorator, so they read like Metaflow's own lines of the task log."""

import logging
from typing import Callable

from ..engine.notices import LOGGER


class _ToMetaflowLogger(logging.Handler):
    def __init__(self, echo: Callable[..., None]):
        super().__init__(logging.WARNING)
        self._echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._echo(record.getMessage(), bad=True, timestamp=False)
        except TypeError:  # a logger without those options
            self._echo(record.getMessage())


class NoticesToMetaflow:
    """Routes the engine's warnings to ``echo`` between ``start()`` and ``stop()``."""

    def __init__(self, echo: Callable[..., None]):
        self._handler = _ToMetaflowLogger(echo)
        self._propagate = LOGGER.propagate

    def start(self) -> None:
        LOGGER.addHandler(self._handler)
        LOGGER.propagate = False  # shown once, not again by handlers of the root logger

    def stop(self) -> None:
        LOGGER.removeHandler(self._handler)
        LOGGER.propagate = self._propagate
