"""docs/reference.md names every public name, and only names that exist: each of its
tables is checked against the code, both ways (and each documented signature against the
callable's parameters), so the reference cannot go stale."""

import dataclasses
import inspect
import re
import types

import metaflow  # noqa: F401  (Metaflow first: it sets up the extension's modules)
import pytest
from conftest import REPO
from engine_helpers import State, local_store, make_session

from metaflow_extensions.implicit_checkpoint import checkpoint_callbacks
from metaflow_extensions.implicit_checkpoint.config import mfextinit_implicit_checkpoint as config
from metaflow_extensions.implicit_checkpoint.engine import errors
from metaflow_extensions.implicit_checkpoint.engine.artifact import CheckpointArtifact
from metaflow_extensions.implicit_checkpoint.plugins import guidance, retry_policy
from metaflow_extensions.implicit_checkpoint.plugins.checkpoint_cli import checkpoint as cli_group
from metaflow_extensions.implicit_checkpoint.plugins.checkpoint_decorator import CheckpointDecorator
from metaflow_extensions.implicit_checkpoint.toplevel import toplevel
from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint

REFERENCE = (REPO / "docs" / "reference.md").read_text()


def table(heading: str) -> dict:
    """``{first cell: [cells]}`` of the table under ``## heading``; the first cell's
    backticked text, e.g. ``save(name="checkpoint", ...)``."""
    start = REFERENCE.index("\n## %s\n" % heading)
    end = REFERENCE.find("\n## ", start + 1)
    rows = {}
    for line in REFERENCE[start : end if end > 0 else None].splitlines():
        match = re.match(r"\| `([^`]+)` \|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    assert rows, "no table under ## %s" % heading
    return rows


def names(rows: dict) -> set:
    return {cell.split("(")[0] for cell in rows}


def public(obj) -> set:
    return {name for name in dir(obj) if not name.startswith("_")}


def documented_parameters(cell: str) -> list:
    """``save(name="checkpoint", metadata=None)`` -> ["name", "metadata"]."""
    inside = cell[cell.index("(") + 1 : cell.rindex(")")]
    return [part.split("=")[0].strip() for part in inside.split(",") if part.strip()]


def check_signatures(rows: dict, owner) -> None:
    for cell in rows:
        if "(" not in cell:
            continue
        member = getattr(owner, cell.split("(")[0])
        member = getattr(member, "_method", member)  # the client's class-or-instance methods
        actual = [p for p in inspect.signature(member).parameters if p not in ("self", "cls")]
        assert documented_parameters(cell) == actual, "%s: the code takes %s" % (cell, actual)


def test_imports():
    exported = {
        name for name, value in vars(toplevel).items()
        if not name.startswith("__") and not isinstance(value, types.ModuleType)
    }
    expected = exported | {"checkpoint", "current"} | set(checkpoint_callbacks.__all__)
    assert names(table("Imports")) == expected


def test_decorator_arguments():
    rows = table("@checkpoint arguments")
    assert names(rows) == set(CheckpointDecorator.defaults)
    for name, (default, _) in rows.items():
        value = CheckpointDecorator.defaults[name]
        shown = '"%s"' % value if isinstance(value, str) else repr(value)
        assert default == "`%s`" % shown, name


def test_current_checkpoint(tmp_path):
    session = make_session(local_store(tmp_path), State())
    rows = table("current.checkpoint")
    members = public(retry_policy.StepCheckpointSession) | {
        name for name in vars(session) if not name.startswith("_")
    }
    assert names(rows) == members
    check_signatures(rows, retry_policy.StepCheckpointSession)


def test_checkpoint_artifact():
    fields = {f.name for f in dataclasses.fields(CheckpointArtifact) if not f.name.startswith("_")}
    rows = table("CheckpointArtifact")
    assert names(rows) == public(CheckpointArtifact) | fields
    check_signatures(rows, CheckpointArtifact)


def test_client():
    rows = table("Checkpoint (client)")
    assert names(rows) == public(Checkpoint)
    check_signatures(rows, Checkpoint)


def test_command_line():
    rows = table("Command line")
    commands = {"checkpoint %s" % name: cmd for name, cmd in cli_group.commands.items()}
    assert {cell.split(" KEY")[0] for cell in rows} == set(commands)
    for cell, (options, _) in rows.items():
        command = commands[cell.split(" KEY")[0]]
        flags = {opt for param in command.params for opt in param.opts if opt.startswith("--")}
        assert set(re.findall(r"`(--[a-z-]+)`", options)) == flags, cell
        arguments = [param.name.upper() for param in command.params if not param.opts[0].startswith("-")]
        assert cell.split()[2:] == arguments, cell


def test_settings():
    rows = table("Settings")
    settings = {"METAFLOW_%s" % name for name in vars(config) if name.startswith("CHECKPOINT_")}
    assert set(rows) == settings


def test_errors():
    defined = {
        value.__name__
        for module in (errors, retry_policy, guidance)
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, errors.CheckpointException)
        and value.__module__ == module.__name__ and not value.__name__.startswith("_")
    }
    rows = table("Errors")
    assert set(rows) == defined
    for name, (retried, _) in rows.items():
        cls = getattr(errors, name, None) or getattr(retry_policy, name, None) or getattr(guidance, name)
        never = retried == "no"
        assert never or retried.startswith("yes"), name
        try:
            instance = cls("x")
        except TypeError:
            pytest.fail("%s cannot be built from a message" % name)
        assert (retry_policy.why_not_retryable(instance) is not None) == never, name


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_between_the_docs_resolve():
    docs = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            assert linked.exists(), "%s links to %s" % (doc.name, target)
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
                assert anchor in {_slug(h) for h in headings}, "%s links to %s" % (doc.name, target)
