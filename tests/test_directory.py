"""The task folder in the engine: scanning, saving, deduplication and restoring, without a flow."""

import os
import sys
from pathlib import Path

import pytest

from engine_helpers import State, local_store
from metaflow_extensions.implicit_checkpoint.engine.directory import FolderRestore
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointCorrupted, CheckpointException
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.layout import CHUNK_BYTES
from metaflow_extensions.implicit_checkpoint.engine.session import (
    AttributeSource,
    CheckpointSession,
    TaskIdentity,
)

sys.path.insert(0, str(Path(__file__).parent / "flows"))
from folder_listing import listing  # noqa: E402


def folder_session(store, folder, attempt=0, state=None):
    state = state if state is not None else State()
    session = CheckpointSession(
        store,
        TaskIdentity("UnitFlow", "1", "train", "1", attempt),
        AttributeSource(lambda: dict(vars(state))),
        target=state,
        directory=str(folder),
    )
    session.start()
    return session


def write(folder, rel, data):
    path = Path(folder, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def test_restore_makes_a_changed_folder_exactly_the_saved_one(tmp_path):
    folder = tmp_path / "folder"
    write(folder, "a/x.txt", "x")
    write(folder, "a/b/y.txt", "y" * 3000)
    write(folder, "kind", "a file that becomes a folder")
    (folder / "empty").mkdir()
    (folder / "ro").mkdir()
    write(folder, "ro/locked.txt", "locked")
    os.chmod(folder / "ro" / "locked.txt", 0o444)
    os.chmod(folder / "ro", 0o555)
    os.symlink("a/x.txt", folder / "link")
    session = folder_session(local_store(tmp_path / "store"), folder)
    saved = listing(folder)
    artifact = session.save()

    os.chmod(folder / "ro", 0o755)
    (folder / "kind").unlink()
    write(folder, "kind/inside", "now a folder")
    write(folder, "a/x.txt", "changed")
    (folder / "link").unlink()
    (folder / "link").mkdir()
    write(folder, "new/extra.bin", b"\0" * 10)
    (folder / "empty").rmdir()
    session.load(artifact)
    assert listing(folder) == saved
    assert session.inspect(artifact)["files"]["a/b/y.txt"]["size"] == 3000
    os.chmod(folder / "ro", 0o755)  # so pytest can remove it


def test_a_damaged_file_blob_fails_the_load_and_leaves_the_folder_alone(tmp_path):
    folder = tmp_path / "folder"
    write(folder, "model.bin", os.urandom(2 * 1024 * 1024))
    store = local_store(tmp_path / "store")
    session = folder_session(store, folder)
    artifact = session.save()
    storage = store.read_manifest(CheckpointKey.parse(artifact.key)).storage
    (digest, _, _), = storage.files["model.bin"]
    with open(tmp_path / "store" / store.blob_path("UnitFlow", digest), "r+b") as f:
        f.write(b"X")
    write(folder, "model.bin", "what the step has now")
    before = listing(folder)
    with pytest.raises(CheckpointCorrupted, match="model.bin"):
        folder_session(local_store(tmp_path / "store"), folder, attempt=1).load()
    assert listing(folder) == before
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]  # no staging left
    # A missing blob is found without reading data, and named after the file it holds.
    os.remove(tmp_path / "store" / store.blob_path("UnitFlow", digest))
    (listed,) = folder_session(local_store(tmp_path / "store"), folder, attempt=1).list()
    assert "<file model.bin>" in listed.damage


def test_unchanged_files_are_not_written_again_and_a_new_folder_does_not_repack_the_others(tmp_path):
    folder = tmp_path / "folder"
    for step in (5, 10):
        write(folder, "checkpoint-%d/model.bin" % step, os.urandom(300_000))
        write(folder, "checkpoint-%d/state.json" % step, '{"step": %d}' % step)
    session = folder_session(local_store(tmp_path / "store"), folder)
    session.save()
    write(folder, "checkpoint-15/model.bin", os.urandom(300_000))
    write(folder, "checkpoint-15/state.json", '{"step": 15}')
    added = session.save().implicit_manifest
    # checkpoint-15 sorts between checkpoint-10 and checkpoint-5, yet only its own bytes
    # are written: small files are packed per folder.
    assert 300_000 < added["bytes_written"] < 300_000 + 4096
    assert session.save().implicit_manifest["bytes_written"] == 0


def test_a_large_file_is_chunked_and_only_the_changed_chunk_is_written(tmp_path):
    folder = tmp_path / "folder"
    write(folder, "big.bin", b"\1" * (CHUNK_BYTES + 1000))
    store = local_store(tmp_path / "store")
    session = folder_session(store, folder)
    first = session.save()
    assert len(store.read_manifest(CheckpointKey.parse(first.key)).storage.files["big.bin"]) == 2
    with open(folder / "big.bin", "r+b") as f:
        f.seek(CHUNK_BYTES + 10)
        f.write(b"\2")
    assert session.save().implicit_manifest["bytes_written"] == 1000
    restored = tmp_path / "restored"
    folder_session(local_store(tmp_path / "store"), restored, attempt=1).load()
    assert (restored / "big.bin").read_bytes() == (folder / "big.bin").read_bytes()


def test_a_named_pipe_in_the_folder_fails_the_save_naming_it(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    os.mkfifo(folder / "pipe")
    with pytest.raises(CheckpointException, match="pipe.*named pipe.*move it out"):
        folder_session(local_store(tmp_path / "store"), folder).save()


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "a/../../x", "link/inside"])
def test_a_manifest_cannot_place_files_outside_the_folder(tmp_path, bad):
    files = {bad: {"size": 0, "mode": 0o644, "mtime_ns": 0}, "link": {"symlink": "/tmp", "size": 0, "mtime_ns": 0}}
    with pytest.raises(CheckpointCorrupted, match="not a clean path"):
        FolderRestore(str(tmp_path / "folder"), files, {}, {}, "UnitFlow/1/train/1/0/checkpoint/1")
