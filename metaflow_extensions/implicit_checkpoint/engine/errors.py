"""The exceptions users see. Every one derives from CheckpointException."""

try:
    from metaflow.exception import MetaflowException
except ImportError:  # the engine on its own (its unit tests); a flow always has Metaflow

    class MetaflowException(Exception):
        headline = "Flow failed"


class CheckpointException(MetaflowException):
    """Base class of every error raised by @checkpoint and the Checkpoint client."""

    headline = "Checkpoint error"


class CheckpointConfigError(CheckpointException, ValueError):
    """A @checkpoint argument is invalid (raised from step_init, before any task runs).

    Also a ValueError, as metaflow-checkpoint's configuration errors are."""

    headline = "Invalid @checkpoint argument"


class CheckpointNotFound(CheckpointException):
    """No committed checkpoint matches the reference."""

    headline = "Checkpoint not found"


class CheckpointCorrupted(CheckpointException):
    """Stored data failed its integrity check. The message names the field and the key."""

    headline = "Checkpoint corrupted"

    def __init__(self, msg: str, key: str = None, field: str = None):
        super().__init__(msg)
        self.key = key
        self.field = field


class CheckpointSerializationError(CheckpointException):
    """A field or the metadata cannot be serialized. The message names it and its type."""

    headline = "Cannot serialize checkpoint"

    def __init__(self, msg: str, field: str = None):
        super().__init__(msg)
        self.field = field


class CheckpointStorageError(CheckpointException):
    """The store failed: the message names the operation, the key or path, and the OS
    reason (full disk, read-only, permission, network). Nothing partial was committed.

    ``operation`` ("write", "read", "list", ...), ``path`` (the backend's description of
    the path or key) and ``reason`` (the OS's or the service's words) are also attributes,
    None where not known."""

    headline = "Checkpoint storage failed"

    def __init__(self, msg: str, operation: str = None, path: str = None, reason: str = None):
        super().__init__(msg)
        self.operation = operation
        self.path = path
        self.reason = reason


class UnknownFormat(CheckpointCorrupted):
    """A checkpoint written in a format this version cannot read (a newer package wrote
    it, or the bytes are not a checkpoint). The message says which and what to do."""

    headline = "Unknown checkpoint format"


class TaskPreempted(CheckpointException):
    """The task was told to stop (SIGTERM, a spot-termination notice), and the save at its
    next save point committed: ``save()`` raises this to end the attempt as failed, so
    that ``@retry`` resumes from that checkpoint. ``key`` is the committed checkpoint's."""

    headline = "Task preempted: checkpoint committed"

    def __init__(self, msg: str, key: str = None):
        super().__init__(msg)
        self.key = key
