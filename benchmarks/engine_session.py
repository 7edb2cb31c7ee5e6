"""A checkpoint session on a local directory, without a flow, for the benchmarks."""

from pathlib import Path

from metaflow_extensions.implicit_checkpoint.engine.backends import LocalDirBackend
from metaflow_extensions.implicit_checkpoint.engine.session import (
    AttributeSource,
    CheckpointSession,
    TaskIdentity,
)
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore


class State:
    """Stands in for a step's ``self``: every attribute counts as assigned."""


def local_session(
    root: Path, state: State, attempt: int = 0, durable: bool = True, directory: str = None, **kwargs
) -> CheckpointSession:
    session = CheckpointSession(
        CheckpointStore(LocalDirBackend(str(root)), durable=durable),
        TaskIdentity("BenchFlow", "1", "train", "1", attempt),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
        directory=directory,
        **kwargs,
    )
    session.start()
    return session
