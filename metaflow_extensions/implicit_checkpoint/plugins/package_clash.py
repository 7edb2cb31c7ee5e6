"""Another installed package that registers a step decorator named ``checkpoint``.

Outerbounds' metaflow-checkpoint (the extension ``metaflow_extensions.obcheckpoint``,
preinstalled in Outerbounds platform images) registers ``@checkpoint``, sets
``current.checkpoint`` and exports ``from metaflow import Checkpoint``, as this package
does. Metaflow keeps one step decorator per name, the one of the extension it loads
last, and the top-level names likewise: with both installed a flow gets one package's
decorator and possibly the other's client, depending on load order. So it is said at
import (once per process tree), and a @checkpoint step of this package fails before
any task runs, naming both packages and what to do.
"""

import os
from typing import List, Optional

from .metaflow_internals import step_decorators_named

OURS = "metaflow_extensions.implicit_checkpoint."
THIS_PACKAGE = "metaflow-implicit-checkpoint"
#: Known extensions and the distribution that installs them.
KNOWN = {"obcheckpoint": "metaflow-checkpoint"}
#: Set once the warning is printed, so that the tasks a run starts do not repeat it.
REPORTED_ENV = "METAFLOW_CHECKPOINT_CLASH_REPORTED"


def _package_of(class_path: str) -> str:
    """The distribution that installs the extension of ``class_path`` (best effort)."""
    parts = class_path.split(".")
    extension = parts[1] if len(parts) > 2 and parts[0] == "metaflow_extensions" else None
    if extension in KNOWN:
        return KNOWN[extension]
    if extension:
        try:
            from importlib.metadata import distributions

            prefix = "metaflow_extensions/%s/" % extension
            for dist in distributions():
                if any(str(f).startswith(prefix) for f in (dist.files or ())):
                    return dist.metadata["Name"]
        except Exception:
            pass
        return "metaflow_extensions.%s" % extension
    return class_path


def other_checkpoint_decorators() -> List[str]:
    """Class paths of ``checkpoint`` step decorators registered by other packages."""
    return [path for path in step_decorators_named("checkpoint") if not path.startswith(OURS)]


def clash_message() -> Optional[str]:
    """What to tell the user when another package registers @checkpoint (None if none)."""
    others = other_checkpoint_decorators()
    if not others:
        return None
    registered = step_decorators_named("checkpoint")
    in_effect = registered[-1] if registered else ""
    winner = THIS_PACKAGE if in_effect.startswith(OURS) else _package_of(in_effect)
    packages = sorted({_package_of(path) for path in others})
    return (
        "two packages that define @checkpoint are installed in this environment: %s and "
        "%s (Outerbounds' metaflow-checkpoint ships with its platform images). Both "
        "register the step decorator @checkpoint, current.checkpoint and `from metaflow "
        "import Checkpoint`, and Metaflow keeps only the one it loads last (here, "
        "@checkpoint is %s's), so a flow would mix the two. Keep one per environment: "
        "`pip uninstall %s` (or `pip uninstall %s`), or give each its own virtual "
        "environment."
        % (THIS_PACKAGE, " and ".join(packages), winner, " ".join(packages), THIS_PACKAGE)
    )


def warn_once_per_process_tree() -> None:
    """Print the clash (if any) once: the processes a run starts inherit the marker."""
    if os.environ.get(REPORTED_ENV):
        return
    message = clash_message()
    if message:
        os.environ[REPORTED_ENV] = "1"
        from ..engine.notices import warn

        warn("metaflow-implicit-checkpoint: " + message[0].upper() + message[1:])
