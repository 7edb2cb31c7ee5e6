"""The extension's settings, checked and typed.

Metaflow's ``from_conf`` reads them (config/mfextinit_implicit_checkpoint.py: environment
variables ``METAFLOW_CHECKPOINT_*`` or Metaflow's config file) on first import; this module
turns them into values for the engine's constructors, with an error naming the setting
when one is malformed. The engine itself reads no setting.
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

from ..engine.errors import CheckpointConfigError
from ..engine.option_names import OptionNames
from ..engine.session import SessionOptions

T = TypeVar("T")

#: The engine's messages name the settings that set its options.
SETTING_NAMES = OptionNames(
    staging_bytes="METAFLOW_CHECKPOINT_STAGING_BYTES",
    sigterm_wait="METAFLOW_CHECKPOINT_SIGTERM_WAIT",
    preemption_grace="METAFLOW_CHECKPOINT_PREEMPTION_GRACE",
    mtbf="METAFLOW_CHECKPOINT_MTBF",
    gang_timeout="METAFLOW_CHECKPOINT_GANG_TIMEOUT",
)


@dataclass(frozen=True)
class Settings:
    fsync: bool  # METAFLOW_CHECKPOINT_FSYNC: fsync checkpoint files on the local datastore
    session: SessionOptions  # TRACK_CHANGES, STAGING_BYTES, SIGTERM_WAIT, PREEMPTION_GRACE, MTBF
    gang_timeout: float  # METAFLOW_CHECKPOINT_GANG_TIMEOUT (seconds)
    directory_root: Optional[str]  # METAFLOW_CHECKPOINT_DIRECTORY_ROOT: where task folders live


def settings() -> Settings:
    """The settings of this process (read by Metaflow at import time)."""
    # The values from_conf read when the module was imported (Metaflow also merges them
    # into metaflow.metaflow_config, but not when this package was imported first).
    from ..config import mfextinit_implicit_checkpoint as config

    def read(name: str, parse: Callable[[str], T], accepted: str) -> T:
        raw = getattr(config, name)
        try:
            return parse(str(raw).strip())
        except ValueError:
            raise CheckpointConfigError(
                "METAFLOW_%s=%r is not valid: it takes %s." % (name, raw, accepted)
            )

    return Settings(
        fsync=read("CHECKPOINT_FSYNC", _flag, "1 or 0"),
        session=SessionOptions(
            track_changes=read("CHECKPOINT_TRACK_CHANGES", _flag, "1 or 0"),
            staging_bytes=read("CHECKPOINT_STAGING_BYTES", _number(int, 0), "a number of bytes"),
            sigterm_wait=read("CHECKPOINT_SIGTERM_WAIT", _number(float, 0), "a number of seconds"),
            preemption_grace=read(
                "CHECKPOINT_PREEMPTION_GRACE", _number(float, 0), "a number of seconds"
            ),
            mtbf=read(
                "CHECKPOINT_MTBF", _number(float, 0, strict=True), "a number of seconds above 0"
            ),
            names=SETTING_NAMES,
        ),
        gang_timeout=read(
            "CHECKPOINT_GANG_TIMEOUT", _number(float, 0, strict=True), "a number of seconds above 0"
        ),
        directory_root=getattr(config, "CHECKPOINT_DIRECTORY_ROOT", "") or None,
    )


def _flag(text: str) -> bool:
    if text.lower() in ("1", "true"):
        return True
    if text.lower() in ("0", "false"):
        return False
    raise ValueError(text)


def _number(kind: Callable[[str], T], low, strict: bool = False) -> Callable[[str], T]:
    """A parser of numbers of ``kind`` at least ``low`` (above it when ``strict``)."""

    def parse(text: str) -> T:
        value = kind(text)
        if not math.isfinite(value) or not (value > low if strict else value >= low):
            raise ValueError(text)
        return value

    return parse
