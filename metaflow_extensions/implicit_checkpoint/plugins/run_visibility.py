"""Which runs' checkpoints a task may use across runs (eager resume, ``list(full_namespace=True)``):
those of runs the Metaflow client shows in the current namespace."""

from typing import Callable


def runs_in_current_namespace(flow_name: str) -> Callable[[str], bool]:
    """``accept(run_id)``: True when the client can see run ``flow_name/run_id``."""

    def accept(run_id: str) -> bool:
        from metaflow import Run
        from metaflow.exception import MetaflowNamespaceMismatch, MetaflowNotFound

        try:
            Run("%s/%s" % (flow_name, run_id))
            return True
        except (MetaflowNamespaceMismatch, MetaflowNotFound):
            return False

    return accept
