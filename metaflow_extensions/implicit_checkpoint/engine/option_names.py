"""How the user sets each engine option, for the messages that tell them which to change.

The engine knows its options by their own names (``SessionOptions.staging_bytes``) and
reads no setting; the Metaflow glue, which fills the options from the extension's
settings, names its settings instead (``METAFLOW_CHECKPOINT_STAGING_BYTES``:
plugins/settings.py).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class OptionNames:
    """What a message calls each option a user can change."""

    staging_bytes: str = "SessionOptions.staging_bytes"
    sigterm_wait: str = "SessionOptions.sigterm_wait"
    preemption_grace: str = "SessionOptions.preemption_grace"
    mtbf: str = "SessionOptions.mtbf"
    gang_timeout: str = "Gang.timeout"
