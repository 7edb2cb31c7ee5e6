"""A task folder's restore against hostile checkpoints: a manifest re-framed by someone
with write access to the store (valid digest, altered files section) cannot make a
restore set privileged modes, create huge files, fail half way, or link outside the
folder. Every refusal is a CheckpointException, raised before anything on disk changes."""

import copy
import errno
import logging
import os
import random
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine import directory
from metaflow_extensions.implicit_checkpoint.engine.directory import RESTORING_MARK, FolderRestore
from metaflow_extensions.implicit_checkpoint.engine.errors import (
    CheckpointCorrupted,
    CheckpointException,
    CheckpointStorageError,
)
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.manifest import Manifest, pack_manifest, unpack_manifest
from metaflow_extensions.implicit_checkpoint.engine.reading import open_checkpoint
from metaflow_extensions.implicit_checkpoint.engine.snapshot import load_snapshot
from metaflow_extensions.implicit_checkpoint.engine.store import CheckpointStore

sys.path.insert(0, str(Path(__file__).parent / "flows"))
from folder_listing import listing  # noqa: E402

EIGHT = "eight/x.bin"  # a file alone in its folder: its blob is its 8 bytes
INVALID = "description of its files is invalid"


def write(folder: Path, rel: str, data) -> None:
    path = Path(folder, rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


@dataclass
class Saved:
    """A committed checkpoint with a folder, and what that folder held."""

    store_root: Path
    key: CheckpointKey
    source: Path
    listing: dict
    wire: dict  # the genuine manifest, as stored

    @property
    def manifest_file(self) -> Path:
        return self.store_root / CheckpointStore.manifest_path(self.key)

    def craft(self, mutate: Callable[[dict], None]) -> None:
        """Re-frame the stored manifest as an attacker would: unpack it, change its wire
        dict, pack it again with a valid digest."""
        manifest = unpack_manifest(self.manifest_file.read_bytes(), str(self.key))
        wire = manifest.to_wire()
        mutate(wire)
        data = pack_manifest(Manifest.from_wire(wire, str(self.key)))
        self.manifest_file.unlink()
        self.manifest_file.write_bytes(data)

    def restore(self, target: Path) -> None:
        """What a step's load() and the client's do with the folder: the engine path."""
        store = local_store(self.store_root)
        load_snapshot(store, open_checkpoint(store, self.key).part, folder=str(target))

    def restore_alone(self, target: Path, mutate: Callable[[dict], None]) -> FolderRestore:
        """FolderRestore by itself over a changed copy of the genuine manifest: its own
        checks, whatever the manifest's reader refuses before it."""
        wire = copy.deepcopy(self.wire)
        mutate(wire)
        storage = wire["storage"]
        return FolderRestore(
            str(target), wire["files"], wire["directories"], storage["files"], str(self.key), storage["blobs"]
        )


@pytest.fixture
def saved(tmp_path) -> Saved:
    source = tmp_path / "source"
    write(source, EIGHT, b"12345678")
    write(source, "data/model.bin", os.urandom(3000))
    write(source, "data/config.json", '{"lr": 0.1}')
    write(source, "sub/deep/notes.txt", "deep")
    write(source, "tool.sh", "#!/bin/sh\n")
    write(source, "ro.txt", "read only")
    (source / "empty").mkdir()
    os.chmod(source / "tool.sh", 0o755)
    os.chmod(source / "ro.txt", 0o444)
    os.chmod(source / "sub" / "deep", 0o700)
    os.symlink("data/config.json", source / "link")
    os.symlink("../data/model.bin", source / "sub" / "up")
    os.utime(source / "data" / "model.bin", ns=(1_000_000_123, 1_000_000_123))
    os.utime(source / "empty", ns=(2_000_000_456, 2_000_000_456))
    state = State()
    state.epoch = 3
    artifact = make_session(local_store(tmp_path / "store"), state, directory=str(source)).save()
    key = CheckpointKey.parse(artifact.key)
    manifest = local_store(tmp_path / "store").read_manifest(key)
    result = Saved(tmp_path / "store", key, source, listing(source), manifest.to_wire())
    storage = manifest.storage
    ((digest, offset, length),) = storage.files[EIGHT]
    assert (offset, length, storage.blobs[digest]) == (0, 8, 8)
    return result


@pytest.fixture
def target(tmp_path) -> Path:
    """A folder with content of its own, which a refused restore must leave as it is."""
    folder = tmp_path / "target"
    write(folder, "keep.txt", "what the step has now")
    write(folder, "data/old.bin", os.urandom(100))
    write(folder, "locked/file.txt", "locked")
    os.chmod(folder / "locked" / "file.txt", 0o400)
    os.symlink("keep.txt", folder / "alias")
    return folder


def assert_refused(saved: Saved, target: Path, mutate: Callable[[dict], None], match: str) -> None:
    """The change ``mutate`` makes to the manifest is refused by FolderRestore itself (its
    message matching ``match``) and, crafted into the store, by a load through the engine
    (whichever check finds it first): CheckpointCorrupted naming the checkpoint; nothing
    on disk changed."""
    before = listing(target)
    with pytest.raises(CheckpointCorrupted, match=match) as raised:
        saved.restore_alone(target, mutate)
    assert INVALID in str(raised.value) and raised.value.key == str(saved.key)
    assert listing(target) == before
    saved.craft(mutate)
    assert_load_fails(saved, target, CheckpointCorrupted, "altered or damaged; load an earlier checkpoint")


def assert_load_fails(saved: Saved, target: Path, error: type, match: str) -> BaseException:
    """A load through the engine raises ``error`` matching ``match``, and leaves the
    target as it was and no staging folder behind."""
    before = listing(target)
    with pytest.raises(error, match=match) as raised:
        saved.restore(target)
    assert listing(target) == before
    assert not [p for p in target.parent.iterdir() if RESTORING_MARK in p.name]
    if isinstance(raised.value, CheckpointCorrupted):
        assert raised.value.key == str(saved.key) and str(saved.key) in str(raised.value)
    return raised.value


def files(wire: dict) -> dict:
    return wire["files"]


def extents(wire: dict) -> dict:
    return wire["storage"]["files"]


def add_file(wire: dict, rel: str) -> None:
    files(wire)[rel] = {"size": 0, "mode": 0o644, "mtime_ns": 0}
    extents(wire)[rel] = []


def add_link(wire: dict, rel: str, target: str) -> None:
    files(wire)[rel] = {"symlink": target, "size": 0, "mtime_ns": 0}


def add_folder(wire: dict, rel: str) -> None:
    wire["directories"][rel] = {"mode": 0o755, "mtime_ns": 0}


def rename(wire: dict, old: str, new) -> None:
    files(wire)[new] = files(wire).pop(old)


# -- genuine checkpoints -------------------------------------------------------------------


def test_a_genuine_folder_restores_exactly_over_other_content(saved, target):
    saved.craft(lambda wire: None)  # re-framing alone changes nothing
    saved.restore(target)
    assert listing(target) == saved.listing
    assert listing(target)["sub/deep"]["mode"] == 0o700
    assert listing(target)["empty"]["mtime_ns"] == 2_000_000_456
    assert os.readlink(target / "sub" / "up") == "../data/model.bin"
    fresh = target.parent / "fresh"
    saved.restore(fresh)
    assert listing(fresh) == saved.listing


def test_setuid_setgid_and_sticky_bits_are_not_saved(tmp_path):
    source = tmp_path / "source"
    write(source, "run.sh", "#!/bin/sh\n")
    (source / "shared").mkdir()
    os.chmod(source / "run.sh", 0o4755)
    os.chmod(source / "shared", 0o3775)
    artifact = make_session(local_store(tmp_path / "store"), State(), directory=str(source)).save()
    shown = make_session(local_store(tmp_path / "store"), State(), attempt=1).inspect(artifact)
    assert shown["files"]["run.sh"]["mode"] == 0o755
    assert shown["directories"]["shared"]["mode"] == 0o775


# -- modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o6777, 0o4755, 0o2755, 0o1777], ids=oct)
def test_a_file_is_never_restored_setuid_setgid_or_sticky(saved, target, mode, caplog):
    saved.craft(lambda wire: files(wire)["tool.sh"].update(mode=mode))
    with caplog.at_level(logging.WARNING):
        saved.restore(target)
    restored = stat.S_IMODE(os.lstat(target / "tool.sh").st_mode)
    assert restored & 0o7000 == 0
    assert restored == mode & 0o777  # masked, not refused: the permission bits are kept
    assert "tool.sh" in caplog.text and "permission bits only" in caplog.text
    assert listing(target)["data/model.bin"] == saved.listing["data/model.bin"]


def test_a_folder_is_never_restored_setgid_or_sticky(saved, target):
    saved.craft(lambda wire: wire["directories"]["data"].update(mode=0o7777))
    saved.restore(target)
    assert stat.S_IMODE(os.lstat(target / "data").st_mode) == 0o777


@pytest.mark.parametrize("mode", [0o100644, 0o170777, -1, "644", 6.5, True, None])
def test_a_mode_that_is_not_permission_bits_is_refused(saved, target, mode):
    def mutate(wire):
        files(wire)["tool.sh"]["mode"] = mode

    assert_refused(saved, target, mutate, r"'tool\.sh' has the mode .*not permission bits")


def test_a_folder_mode_that_is_not_permission_bits_is_refused(saved, target):
    def mutate(wire):
        wire["directories"]["sub/deep"]["mode"] = 0o40700

    assert_refused(saved, target, mutate, r"folder 'sub/deep' has the mode 0o40700")


# -- sizes and extents ---------------------------------------------------------------------


#: A few KB: more than any file of the test folders holds.
SMALL = 64 * 1024


def largest_file_under(root: Path) -> int:
    """The largest apparent size (sparse files count) or allocation of a file under ``root``."""
    largest = 0
    for folder, _, names in os.walk(root):
        for name in names:
            info = os.lstat(os.path.join(folder, name))
            largest = max(largest, info.st_size, info.st_blocks * 512)
    return largest


def bytes_allocated_under(root: Path) -> int:
    return sum(
        os.lstat(os.path.join(folder, name)).st_blocks * 512
        for folder, _, names in os.walk(root)
        for name in names
    )


def test_a_size_beyond_the_extents_is_refused_and_makes_no_large_file(saved, target, tmp_path):
    allocated = bytes_allocated_under(tmp_path)
    def mutate(wire):
        files(wire)[EIGHT]["size"] = 10**12

    assert_refused(saved, target, mutate, r"'eight/x\.bin' has the size 1000000000000, but its extents hold 8 bytes")
    assert largest_file_under(tmp_path) < SMALL  # nothing large or sparse, staging included
    assert bytes_allocated_under(tmp_path) - allocated < SMALL


def test_a_size_matching_a_stretched_extent_and_blob_is_refused(saved, target, tmp_path):
    def stretch(wire):
        ((digest, _, _),) = extents(wire)[EIGHT]
        files(wire)[EIGHT]["size"] = 10**12
        extents(wire)[EIGHT] = [[digest, 0, 10**12]]
        wire["storage"]["blobs"][digest] = 10**12

    assert_refused(saved, target, stretch, r"'eight/x\.bin' is read from blob .* with the size 1000000000000")
    assert largest_file_under(tmp_path) < SMALL


def test_a_blob_listed_larger_than_it_is_fails_its_check_and_leaves_nothing(saved, target, tmp_path):
    claimed = 32 * 1024 * 1024  # within what a save makes, so only the read can tell

    def stretch(wire):
        ((digest, _, _),) = extents(wire)[EIGHT]
        files(wire)[EIGHT]["size"] = claimed
        extents(wire)[EIGHT] = [[digest, 0, claimed]]
        wire["storage"]["blobs"][digest] = claimed

    saved.craft(stretch)
    assert_load_fails(saved, target, CheckpointCorrupted, r"file 'eight/x\.bin' failed its integrity check")
    assert largest_file_under(tmp_path) < SMALL


def _digest(wire: dict) -> str:
    return extents(wire)[EIGHT][0][0]


@pytest.mark.parametrize(
    "extent, match",
    [
        (lambda d: [d, -1, 8], "not \\[blob digest, offset, length\\]"),
        (lambda d: [d, 0, -8], "not \\[blob digest, offset, length\\]"),
        (lambda d: [d, "0", 8], "not \\[blob digest, offset, length\\]"),
        (lambda d: [d, 0, 8.0], "not \\[blob digest, offset, length\\]"),
        (lambda d: [d, 0], "not \\[blob digest, offset, length\\]"),
        (lambda d: [d, 0, 8, 0], "not \\[blob digest, offset, length\\]"),
        (lambda d: [8, 0, d], "not \\[blob digest, offset, length\\]"),
        (lambda d: {"digest": d}, "not \\[blob digest, offset, length\\]"),
        (lambda d: ["../../../../etc/passwd", 0, 8], "not \\[blob digest, offset, length\\]"),
        (lambda d: ["", 0, 8], "not \\[blob digest, offset, length\\]"),
        (lambda d: [d, 4, 8], "bytes 4 to 12 of blob .*, which has 8 bytes"),
        (lambda d: [d, 0, 9], "bytes 0 to 9 of blob .*, which has 8 bytes"),
        (lambda d: ["f" * 64, 0, 8], "read from blob f{64}, which the checkpoint lists with the size None"),
    ],
)
def test_a_malformed_extent_is_refused(saved, target, extent, match):
    def mutate(wire):
        bad = extent(_digest(wire))
        extents(wire)[EIGHT] = [bad]
        if isinstance(bad, list) and len(bad) == 3 and _is_count(bad[2]):
            files(wire)[EIGHT]["size"] = bad[2]  # consistent, so only the extent is wrong

    assert_refused(saved, target, mutate, r"'eight/x\.bin' .*" + match)


def _is_count(value) -> bool:
    return isinstance(value, int) and value >= 0


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda w: extents(w).pop(EIGHT), "has no list of extents"),
        (lambda w: extents(w).__setitem__(EIGHT, "blob"), "has no list of extents"),
        (lambda w: w["storage"].update(files=None), "the files' extents is a NoneType, not a map"),
        (lambda w: w["storage"]["blobs"].__setitem__(_digest(w), "8"), "lists with the size '8'"),
        (lambda w: w["storage"].update(blobs=[]), "the blob list is a list"),
    ],
)
def test_missing_or_malformed_extent_sections_are_refused(saved, target, mutate, match):
    assert_refused(saved, target, mutate, match)


# -- conflicting entries -------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda w: add_file(w, "data"), r"'data' is both a file and a folder"),
        (lambda w: add_link(w, "data", "ro.txt"), r"'data' is both a symbolic link and a folder"),
        (lambda w: add_folder(w, "link"), r"'link' is both a symbolic link and a folder"),
        (lambda w: add_file(w, "ro.txt/inner"), r"'ro\.txt/inner' is not a clean path"),
        (lambda w: (add_folder(w, "ro.txt"), add_file(w, "ro.txt/inner")), r"'ro\.txt' is both a file and a folder"),
        (lambda w: add_link(w, "link/inside", "x"), r"'link/inside' is not a clean path"),
    ],
)
def test_conflicting_entries_are_refused_before_anything_changes(saved, target, mutate, match):
    assert_refused(saved, target, mutate, match)


# -- symbolic links ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, link, match",
    [
        ("link", "../../etc/passwd", "climbs above the folder"),
        ("link", "/etc/passwd", "is absolute"),
        ("sub/up", "../../x", "climbs above the folder"),
        ("sub/up", "../sub/../../x", "climbs above the folder"),
        ("link", "", "not a path"),
        ("link", "a\x00b", "not a path"),
        ("link", 7, "not a path"),
        ("link", "x" * 5000, "not a path"),
    ],
)
def test_a_link_leading_out_of_the_folder_is_refused(saved, target, rel, link, match):
    def mutate(wire):
        files(wire)[rel]["symlink"] = link

    assert_refused(saved, target, mutate, r"symbolic link %r .*%s" % (rel, match))


def test_a_link_climbing_back_out_of_another_link_is_refused(saved, target):
    # 'here' leads to the folder itself, so 'here/..' would be its parent.
    def mutate(wire):
        add_link(wire, "here", ".")
        files(wire)["link"]["symlink"] = "here/../target/keep.txt"

    assert_refused(saved, target, mutate, r"'link' .*climbs back out of the symbolic link 'here'")


def test_a_link_with_content_is_refused(saved, target):
    def mutate(wire):
        files(wire)["link"]["size"] = 10

    assert_refused(saved, target, mutate, r"symbolic link 'link' has content")


def test_a_link_leading_out_of_the_folder_is_not_saved(tmp_path):
    source = tmp_path / "source"
    write(source, "inside.txt", "x")
    os.symlink("/etc/passwd", source / "outside")
    with pytest.raises(CheckpointException, match=r"symbolic link outside .*is absolute.*inside the folder"):
        make_session(local_store(tmp_path / "store"), State(), directory=str(source)).save()


# -- every other field ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda w: files(w)["ro.txt"].update(mtime_ns="now"), r"file 'ro\.txt' has the modification time 'now'"),
        (lambda w: files(w)["ro.txt"].update(mtime_ns=2**64 - 1), r"file 'ro\.txt' has the modification time"),
        (lambda w: files(w)["ro.txt"].pop("mtime_ns"), r"file 'ro\.txt' has the modification time None"),
        (lambda w: files(w)["link"].update(mtime_ns=1.5), r"file 'link' has the modification time 1\.5"),
        (lambda w: w["directories"]["empty"].update(mtime_ns=None), r"folder 'empty' has the modification time None"),
        (lambda w: files(w)["ro.txt"].pop("size"), r"'ro\.txt' has the size None"),
        (lambda w: files(w).__setitem__("ro.txt", [9, 0o644, 0]), r"file 'ro\.txt' is described by a list"),
        (lambda w: w["directories"].__setitem__("empty", "rwx"), r"folder 'empty' is described by a str"),
        (lambda w: w.update(files=["ro.txt"]), r"files is a list, not a map"),
        (lambda w: w.update(directories=["data"]), r"directories is a list, not a map"),
        (lambda w: rename(w, "ro.txt", 7), r"7 is not a clean path"),
        (lambda w: rename(w, "ro.txt", "../escape"), r"'\.\./escape' is not a clean path"),
        (lambda w: rename(w, "ro.txt", "n" * 256), r"is not a clean path"),
        (lambda w: add_folder(w, "/abs"), r"'/abs' is not a clean path"),
    ],
)
def test_every_field_of_the_files_section_is_checked(saved, target, mutate, match):
    assert_refused(saved, target, mutate, match)


# -- the file system -----------------------------------------------------------------------


def test_a_folder_the_disk_cannot_hold_is_refused_before_writing(saved, target, monkeypatch):
    monkeypatch.setattr(directory, "_free_space", lambda path: (1000, None))
    assert_load_fails(saved, target, CheckpointStorageError, r"need \d+ bytes and 1000 are free")
    monkeypatch.setattr(directory, "_free_space", lambda path: (None, 3))
    assert_load_fails(saved, target, CheckpointStorageError, r"inodes are free")


def test_an_os_failure_while_staging_is_a_storage_error_and_changes_nothing(saved, target, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "staged-link")

    monkeypatch.setattr(directory.os, "symlink", full)
    before = listing(target)
    with pytest.raises(CheckpointStorageError, match="No space left on device.*was not changed") as raised:
        saved.restore(target)
    assert (raised.value.operation, raised.value.path) == ("write", "staged-link")
    assert listing(target) == before


# -- any mutation --------------------------------------------------------------------------

_ODD_VALUES = [
    None, -1, 0, 1, 2**63, 2**64 - 1, 0o7777, 10**12, 1.5, True, "", "x", "../x", "/x", [], {}, [1, 2, 3], b"\x00"
]


def _mutate(rng: random.Random, wire: dict) -> None:
    """A random change to the files, directories or extents sections."""
    file_blobs = {e[0] for extents in wire["storage"]["files"].values() for e in extents}
    sections = [wire["files"], wire["directories"], wire["storage"]["files"], wire["storage"]["blobs"]]
    section = rng.choice(sections)
    # Only the folder's blobs: the fields' are another part of load()'s checks.
    names = [n for n in section if section is not wire["storage"]["blobs"] or n in file_blobs]
    rel = rng.choice(sorted(names, key=str))
    spec = section[rel]
    choice = rng.random()
    if choice < 0.15:
        section[rng.choice(["x/../y", "data/new", "link/z", "data", "ro.txt"])] = spec
    elif choice < 0.25:
        del section[rel]
    elif isinstance(spec, dict) and spec:
        spec[rng.choice(sorted(spec) + ["symlink"])] = rng.choice(_ODD_VALUES)
    elif isinstance(spec, list) and spec:
        extent = list(rng.choice(spec))
        extent[rng.randrange(3)] = rng.choice(_ODD_VALUES + [extent[0]])
        spec[rng.randrange(len(spec))] = extent
    else:
        section[rel] = rng.choice(_ODD_VALUES)


def test_any_mutation_of_the_files_section_loads_or_raises_a_checkpoint_exception(saved, tmp_path):
    original = saved.manifest_file.read_bytes()
    rng = random.Random(21)
    for attempt in range(150):
        saved.craft(lambda wire: [_mutate(rng, wire) for _ in range(rng.randint(1, 3))])
        target = tmp_path / ("target-%d" % attempt)
        write(target, "keep.txt", "mine")
        before = listing(target)
        try:
            saved.restore(target)
        except CheckpointException:
            assert listing(target) == before
        assert not [p for p in tmp_path.iterdir() if RESTORING_MARK in p.name]
        saved.manifest_file.unlink()
        saved.manifest_file.write_bytes(original)
