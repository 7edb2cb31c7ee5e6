"""The exceptions users see. Every one derives from CheckpointException."""

from metaflow.exception import MetaflowException


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
    """The storage backend failed persistently; nothing partial was committed."""

    headline = "Checkpoint storage failed"
