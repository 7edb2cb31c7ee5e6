__mf_extensions__ = "implicit-checkpoint"
__version__ = "0.1.0"

from ..engine.artifact import CheckpointArtifact  # noqa: E402,F401
from ..engine.errors import (  # noqa: E402,F401
    CheckpointCorrupted,
    CheckpointException,
    CheckpointNotFound,
    CheckpointSerializationError,
)
from .checkpoint_client import Checkpoint  # noqa: E402,F401

# `from metaflow.checkpoint_callbacks import HuggingFaceCheckpointCallback` (or
# LightningModelCheckpoint): imported on first use, so neither framework is needed.
__mf_promote_submodules__ = ["checkpoint_callbacks"]
