"""What the engine tells the user without failing the call (a damaged checkpoint passed
over, a save that could not go to the background, housekeeping that failed after a commit).

Messages go to the ``metaflow_extensions.implicit_checkpoint`` Python logger. Unconfigured,
Python prints warnings to stderr (the task log, in a flow); in a task, the decorator routes
them to the logger Metaflow hands it (plugins/log_routing.py).
"""

import logging

LOGGER = logging.getLogger("metaflow_extensions.implicit_checkpoint")


def warn(message: str) -> None:
    """Tell the user ``message`` (a complete sentence, starting with what it is about)."""
    LOGGER.warning(message)
