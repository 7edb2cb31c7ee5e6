"""The ordering of copies between device and host memory, on CPU stand-ins of streams
(engine/device_streams.py's StandInOrdering: each stream a worker thread that runs its
work later, in order). What CUDA runs on a GPU, the same engine code runs here:

- a background save's device-to-host copy runs after the work enqueued before save()
  (an event on the current stream) and before the work enqueued after it, and save()
  waits for that copy only, not for other streams' work;
- a load into device memory goes through two bounded host slots, each refilled only
  once the copies out of it ran, whatever the model's size.
"""

import threading
import time

import numpy as np
import pytest
import torch

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.device_load import DeviceRead, read_into_device
from metaflow_extensions.implicit_checkpoint.engine.device_streams import (
    StandInOrdering,
    StandInStream,
    ordered_copies,
    wait_all,
)
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointCorrupted
from metaflow_extensions.implicit_checkpoint.engine.keys import CheckpointKey
from metaflow_extensions.implicit_checkpoint.engine.snapshot import commit_save, load_snapshot, prepare_save
from metaflow_extensions.implicit_checkpoint.engine.staging import StagingArea, copy_device_storages, stream_to_host

MIB = 1024 * 1024


def slow_work():
    time.sleep(0.005)


def flat(tensor):
    return tensor.view(-1).view(torch.uint8)


def test_a_staged_copy_runs_after_the_work_enqueued_before_it_and_before_the_work_after():
    device = StandInOrdering(delay=slow_work)
    weights = device.place(torch.zeros(MIB // 4))
    staging = StagingArea(ordering=device)
    for value in (1.0, 2.0, 3.0):
        # The step's last update, still queued on the device when save() is called.
        device.current.launch(lambda v=value: weights.fill_(v))
        (view,) = staging.stage([flat(weights)], [weights.numel() * 4])
        # The next optimizer step, enqueued right after save() returned.
        device.current.launch(lambda: weights.add_(100.0))
        wait_all([device.current.record_event()])
        staged = np.frombuffer(view, dtype=np.float32)
        assert (staged == value).all(), "the copy read bytes of another step than save()'s"
        assert (weights == value + 100.0).all()
    assert device.side.copies == 3  # on the side stream, not on the user's
    assert device.host_buffers == [MIB]  # one host buffer, reused from save to save


def test_without_the_event_the_copy_reads_the_bytes_before_the_work_that_produces_them():
    """The stand-in catches a copy that is not ordered after the user's work: the same
    staging without the current stream's event copies the old bytes."""

    class NoWait(StandInStream):
        def wait_event(self, event):
            pass  # forgets to order the copies after the current stream

    device = StandInOrdering()
    device.side = NoWait("no-wait")
    weights = device.place(torch.zeros(1024))
    gate = threading.Event()
    device.current.launch(gate.wait)  # the producing kernel has not run yet
    device.current.launch(lambda: weights.fill_(1.0))
    (view,) = StagingArea(ordering=device).stage([flat(weights)], [4096])
    gate.set()
    wait_all([device.current.record_event()])
    assert (np.frombuffer(view, dtype=np.float32) == 0.0).all()
    assert (weights == 1.0).all()


def test_staging_waits_for_its_copy_and_not_for_other_streams():
    device = StandInOrdering()
    data_loader = StandInStream("data-loader")
    released = threading.Event()
    finished = threading.Event()
    data_loader.launch(released.wait)  # another stream's long work, not done yet
    data_loader.launch(finished.set)
    weights = device.place(torch.arange(2048, dtype=torch.float32))
    (view,) = StagingArea(ordering=device).stage([flat(weights)], [8192])
    assert not finished.is_set()  # save() returned while the other stream still runs
    assert (np.frombuffer(view, dtype=np.float32) == np.arange(2048)).all()
    released.set()
    finished.wait()


def test_a_background_save_of_device_tensors_commits_what_save_saw(tmp_path):
    device = StandInOrdering(delay=slow_work)
    store = local_store(tmp_path)
    weights = device.place(torch.zeros(3, MIB // 8))
    bias = torch.ones(7)  # host memory: copied by the host path beside the device copies
    device.current.launch(lambda: weights.fill_(5.0))
    key = CheckpointKey("UnitFlow", "1", "train", "1", 0, "checkpoint", 1)
    prepared = prepare_save(key, {"weights": weights, "bias": bias}, {}, staging=StagingArea(ordering=device))
    assert prepared.staged
    device.current.launch(lambda: weights.zero_())  # the next step, before the commit
    with store.save_lease(key):
        manifest = commit_save(store, prepared).manifest
    values, _ = load_snapshot(store, manifest)
    assert (values["weights"] == 5.0).all() and values["weights"].shape == (3, MIB // 8)
    assert torch.equal(values["bias"], bias)


def test_a_synchronous_save_copies_device_storages_after_the_work_before_it():
    device = StandInOrdering(delay=slow_work)
    a = device.place(torch.zeros(1000, dtype=torch.float64))
    b = device.place(torch.zeros(10, dtype=torch.int16))
    device.current.launch(lambda: a.fill_(2.5))
    device.current.launch(lambda: b.fill_(-3))
    host_a, host_b = copy_device_storages([flat(a), flat(b)], ordering=device)
    assert (host_a.view(torch.float64) == 2.5).all()
    assert (host_b.view(torch.int16) == -3).all()
    assert device.host_buffers == [8000, 20]


def test_a_synchronous_save_streams_large_device_storages_through_a_slot(tmp_path):
    device = StandInOrdering(delay=slow_work)
    store = local_store(tmp_path)
    weights = device.place(torch.zeros(3 * MIB // 4))
    norm = device.place(torch.zeros(100))  # small: copied up front
    device.current.launch(lambda: weights.fill_(4.0))
    device.current.launch(lambda: norm.fill_(-1.0))
    key = CheckpointKey("UnitFlow", "1", "train", "1", 0, "checkpoint", 1)
    prepared = prepare_save(key, {"weights": weights, "norm": norm}, {}, ordering=device)
    assert list(prepared.streamed.values())[0].numel() == 3 * MIB  # weights' storage
    with store.save_lease(key):
        manifest = commit_save(store, prepared).manifest
    values, _ = load_snapshot(store, manifest)
    assert (values["weights"] == 4.0).all() and (values["norm"] == -1.0).all()
    # Host memory: the small storage, then one slot for the large one's chunk.
    assert device.host_buffers == [400, 3 * MIB]


def test_a_synchronous_save_of_only_large_device_storages_streams_them_all(tmp_path):
    device = StandInOrdering()
    store = local_store(tmp_path)
    layers = [device.place(torch.full((MIB,), float(i))) for i in range(3)]
    key = CheckpointKey("UnitFlow", "1", "train", "1", 0, "checkpoint", 1)
    prepared = prepare_save(key, {"layers": layers}, {}, ordering=device)
    assert len(prepared.streamed) == 3
    with store.save_lease(key):
        manifest = commit_save(store, prepared).manifest
    values, _ = load_snapshot(store, manifest)
    for i, layer in enumerate(values["layers"]):
        assert (layer == float(i)).all()
    assert device.host_buffers == [12 * MIB]  # one slot: the three fit in it


def test_streamed_copies_fill_two_slots_by_turns_and_never_overwrite_a_slot_in_use():
    device = StandInOrdering(delay=slow_work)
    sources = [device.place(torch.full((MIB,), i, dtype=torch.uint8)) for i in range(5)]
    seen = []
    for group, views in stream_to_host(sources, 2 * MIB, device):
        # While the caller hashes and writes this group, the next one is copied into the
        # other slot: a copy into this one would show here.
        time.sleep(0.05)
        for index, view in zip(group, views):
            seen.append(index)
            assert bytes(view[:1]) == bytes([index]) and bytes(view[-1:]) == bytes([index])
    assert seen == [0, 1, 2, 3, 4]
    assert device.host_buffers == [2 * MIB, 2 * MIB]


def saved_storages(tmp_path, count, nbytes):
    """A committed checkpoint of ``count`` tensors of ``nbytes`` (one blob each), and
    the read requests of their storages."""
    state = State()
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        setattr(state, "t%d" % i, torch.randint(0, 255, (nbytes,), dtype=torch.uint8, generator=generator))
    store = local_store(tmp_path)
    session = make_session(store, state)
    artifact = session.save()
    manifest = store.read_manifest(CheckpointKey.parse(artifact.key))
    return store, manifest, state


def test_a_load_into_device_memory_goes_through_two_bounded_host_slots(tmp_path):
    store, manifest, state = saved_storages(tmp_path, count=6, nbytes=MIB)
    layout = manifest.storage
    assert len(layout.blobs) >= 6
    device = StandInOrdering(delay=slow_work)  # slow copies: a slot refilled early corrupts
    requests, destinations = [], {}
    for name, info in layout.fields.items():
        (index,) = info["tensors"]
        destination = device.place(torch.zeros(MIB, dtype=torch.uint8))
        destinations[name] = destination
        requests.append(DeviceRead(layout.tensors[index][-1], destination, "field %r" % name))
    read_into_device(
        lambda reads: store.read_blobs(manifest.flow, reads, manifest.key),
        layout.blobs,
        requests,
        device,
        bounce_bytes=2 * MIB,
    )
    for name, destination in destinations.items():
        assert torch.equal(destination, getattr(state, name)), name
    # Peak host memory: two slots of one blob each, not the 6 MiB of the model.
    assert device.host_buffers == [MIB, MIB]
    assert device.side.copies == 6


def test_a_load_into_device_memory_copies_nothing_of_a_blob_that_fails_verification(tmp_path):
    store, manifest, state = saved_storages(tmp_path, count=3, nbytes=MIB)
    layout = manifest.storage
    names = sorted(layout.fields)
    damaged = layout.tensors[layout.fields[names[1]]["tensors"][0]][-1][0][0]
    (path,) = tmp_path.rglob(damaged)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    device = StandInOrdering()
    destinations = [device.place(torch.zeros(MIB, dtype=torch.uint8)) for _ in names]
    requests = [
        DeviceRead(layout.tensors[layout.fields[n]["tensors"][0]][-1], d, "field %r" % n)
        for n, d in zip(names, destinations)
    ]
    with pytest.raises(CheckpointCorrupted, match="integrity check"):
        read_into_device(
            lambda reads: store.read_blobs(manifest.flow, reads, manifest.key),
            layout.blobs, requests, device, bounce_bytes=2 * MIB,
        )
    assert torch.equal(destinations[0], getattr(state, names[0]))  # read before the damage
    assert not destinations[1].any()  # the damaged blob never reached the device


def test_ordered_copies_wait_for_the_current_stream_before_overwriting_device_memory():
    """A host-to-device copy into memory the user's queued work still reads runs after it."""
    device = StandInOrdering()
    weights = device.place(torch.full((256,), 7.0))
    seen = []
    started = threading.Event()
    device.current.launch(started.wait)
    device.current.launch(lambda: seen.append(weights.clone()))  # a queued forward pass
    host = torch.full((256,), 9.0)
    copied = ordered_copies(device, [(flat(weights), flat(host))])
    started.set()  # the forward pass runs only now: an unordered copy would have run first
    wait_all(copied)
    assert (seen[0] == 7.0).all() and (weights == 9.0).all()
