"""Checkpoint keys: the one name of a checkpoint, and the rules for its parts.

A key reads ``Flow/run/step/task/attempt/name/version``: the task's pathspec, the
attempt that saved it, the checkpoint name and its version. It is what users pass
around (``artifact.key``) and what the store turns into storage paths, so every part
is validated here and none can contain a path separator or climb out of its folder.
"""

import re
from dataclasses import dataclass

from .errors import CheckpointException

NAME_RULE = "1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
# Matched with fullmatch: "$" alone would accept a trailing newline ("a\n").
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Run and task ids: numbers locally, things like "argo-train-x7k2" on schedulers.
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def is_valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(_NAME_RE.fullmatch(name))


def is_valid_flow(name: object) -> bool:
    """A flow name as Metaflow allows it (a Python identifier): never a path."""
    return isinstance(name, str) and bool(_IDENTIFIER_RE.fullmatch(name))


def validate_name(name: object, step: str = None) -> str:
    """Return ``name`` if it is a valid checkpoint name, else raise a clear error."""
    if not is_valid_name(name):
        where = " in step *%s*" % step if step else ""
        raise CheckpointException(
            "Checkpoint name %r%s is not allowed: a name is %s (so it can never "
            "leave its own folder). Use e.g. name=\"best\" or name=\"epoch-end\"."
            % (name, where, NAME_RULE)
        )
    return name


@dataclass(frozen=True, order=True)
class CheckpointKey:
    """The parsed form of a checkpoint key."""

    flow: str
    run_id: str
    step: str
    task_id: str
    attempt: int
    name: str
    version: int

    def __post_init__(self):
        problems = []
        for part, pattern in (
            ("flow", _IDENTIFIER_RE),
            ("step", _IDENTIFIER_RE),
            ("run_id", _ID_RE),
            ("task_id", _ID_RE),
        ):
            value = getattr(self, part)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                problems.append("%s=%r" % (part, value))
        if not isinstance(self.attempt, int) or self.attempt < 0:
            problems.append("attempt=%r" % (self.attempt,))
        if not isinstance(self.version, int) or self.version < 0:
            problems.append("version=%r" % (self.version,))
        if not is_valid_name(self.name):
            problems.append("name=%r" % (self.name,))
        if problems:
            raise CheckpointException(
                "Invalid checkpoint key part(s): %s." % ", ".join(problems)
            )

    @property
    def pathspec(self) -> str:
        return "/".join((self.flow, self.run_id, self.step, self.task_id))

    def __str__(self) -> str:
        return "%s/%d/%s/%d" % (self.pathspec, self.attempt, self.name, self.version)

    @classmethod
    def parse(cls, text: object) -> "CheckpointKey":
        """Parse ``Flow/run/step/task/attempt/name/version``; raise a clear error if malformed."""
        parts = text.split("/") if isinstance(text, str) else []
        if len(parts) != 7 or not parts[4].isdigit() or not parts[6].isdigit():
            raise CheckpointException(
                "%r is not a checkpoint key. A key looks like "
                "'TrainFlow/12/train/3/0/checkpoint/5' "
                "(flow/run/step/task/attempt/name/version); take it from "
                "CheckpointArtifact.key or `checkpoint list`." % (text,)
            )
        return cls(
            parts[0], parts[1], parts[2], parts[3], int(parts[4]), parts[5], int(parts[6])
        )


def split_pathspec(pathspec: str) -> tuple:
    """Split and validate a task pathspec ``Flow/run/step/task``."""
    parts = pathspec.split("/") if isinstance(pathspec, str) else []
    ok = len(parts) == 4 and all(
        isinstance(part, str) and pattern.fullmatch(part)
        for part, pattern in zip(parts, (_IDENTIFIER_RE, _ID_RE, _IDENTIFIER_RE, _ID_RE))
    )
    if not ok:
        raise CheckpointException(
            "%r is not a task pathspec; expected 'Flow/run_id/step/task_id', "
            "e.g. 'TrainFlow/12/train/3'." % (pathspec,)
        )
    return tuple(parts)
