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



def __install_guidance():
    """At import: ``current.checkpoint`` outside a @checkpoint step says what to add (an
    AttributeError that is also a CheckpointException) instead of Metaflow's "Internal
    error" (a task of a @checkpoint step replaces it with its session); and another
    installed package that defines @checkpoint is reported. Dunder names: Metaflow
    copies every other name of this module into ``metaflow``."""
    from ..plugins.guidance import not_in_checkpoint_step
    from ..plugins.metaflow_internals import placeholder_on_current
    from ..plugins.package_clash import warn_once_per_process_tree

    placeholder_on_current("checkpoint", not_in_checkpoint_step)
    warn_once_per_process_tree()


__install_guidance()
