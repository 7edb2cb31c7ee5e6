"""The typed manifest: wire round trip, a reader per format version, unknown keys kept."""

import msgpack
import pytest

from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointCorrupted
from metaflow_extensions.implicit_checkpoint.engine.manifest import (
    Manifest,
    StorageLayout,
    pack_manifest,
    unpack_manifest,
)


DIGEST = "ab" * 32


def a_manifest(**changes) -> Manifest:
    values = dict(
        key="F/1/train/2/0/checkpoint/1", name="checkpoint", flow="F", run_id="1",
        step="train", task_id="2", pathspec="F/1/train/2", attempt=0, version=1,
        created_on="2026-12-01T00:00:00.000000+00:00", metadata={"epoch": 3},
        fields={"w": {"type": "torch.Tensor", "size": 16}}, size=16,
        storage=StorageLayout(blobs={DIGEST: 16}, tensors=[["torch", 16, "cpu", [[DIGEST, 0, 16]]]],
                              graph=b"graph", fields={"w": {"tensors": [0]}}),
    )
    values.update(changes)
    return Manifest(**values)


def test_round_trip_through_the_framed_wire_format():
    manifest = a_manifest(foreach_indices=[2], latest=False, files={"a.txt": {"size": 1}},
                          directories={"sub": {"mode": 0o755, "mtime_ns": 1}})
    back = unpack_manifest(pack_manifest(manifest), manifest.key)
    assert back == manifest
    assert back.has_folder and back.latest is False and back.foreach_indices == [2]


def test_public_view_leaves_out_the_storage_layout_and_unset_optional_keys():
    public = a_manifest().public()
    assert "storage" not in public
    assert not {"files", "directories", "gang"} & set(public)
    assert public["metadata"] == {"epoch": 3} and public["parent"] is None


def test_keys_a_reader_does_not_know_are_kept_as_written():
    wire = a_manifest().to_wire()
    wire["written_by_a_newer_release"] = {"x": 1}
    manifest = Manifest.from_wire(wire)
    assert manifest.extra == {"written_by_a_newer_release": {"x": 1}}
    assert manifest.to_wire()["written_by_a_newer_release"] == {"x": 1}
    assert manifest.public()["written_by_a_newer_release"] == {"x": 1}


def test_the_reader_is_picked_by_format_version():
    wire = a_manifest().to_wire()
    wire["format_version"] = 1
    assert Manifest.from_wire(wire).format_version == 1
    del wire["latest"], wire["storage_format"]  # format 1 had neither
    old = Manifest.from_wire(wire)
    assert old.latest is True and old.storage_format == "files"
    wire["format_version"] = 7
    with pytest.raises(CheckpointCorrupted, match="format version 7"):
        Manifest.from_wire(wire, "F/1/train/2/0/checkpoint/1")


def test_a_gang_global_manifest_stores_only_blobs_and_their_fields():
    layout = StorageLayout(blobs={"ab": 16}, blob_fields={"ab": ["w (node 0)", "w (node 1)"]})
    assert layout.to_wire() == {"blobs": {"ab": 16}, "blob_fields": {"ab": ["w (node 0)", "w (node 1)"]}}
    assert StorageLayout.from_wire(msgpack.unpackb(msgpack.packb(layout.to_wire()))) == layout
