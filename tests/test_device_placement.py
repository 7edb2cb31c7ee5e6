"""Where a load puts tensors, and the dtypes of mixed-precision training, on CPU.

- A model built on the ``meta`` device and materialized on the CPU
  (``to_empty(device="cpu")``) loads a checkpoint in place; one left on ``meta`` is an
  error naming it and the fix.
- A checkpoint whose storages were saved on a GPU (``cuda:1``) loads on this CPU-only
  machine, by default and with ``map_location``; a bad ``map_location`` names itself.
- bf16, fp16 and both fp8 formats round-trip bit-exactly, inside a model and as fields;
  a CPU GradScaler's state and torch's CPU generator come back.
- CUDA generator states for another number of devices than this machine has are warned
  about (none restored on a CPU); states that are no tensors are an error.
"""

import pytest
import torch

from engine_helpers import State, local_store, make_session
from hostile import Crafted, LocalBucket
from metaflow_extensions.implicit_checkpoint.engine.errors import CheckpointException
from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint

LOW_PRECISION = [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]


def build_model():
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def trained_checkpoint(tmp_path):
    state = State()
    torch.manual_seed(3)
    state.model = build_model()
    state.optimizer = torch.optim.AdamW(state.model.parameters(), lr=1e-2)
    loss = state.model(torch.randn(8, 16)).pow(2).mean()
    loss.backward()
    state.optimizer.step()
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    return store, artifact, state


def test_a_model_built_on_meta_and_materialized_on_cpu_loads_in_place(tmp_path):
    store, artifact, saved = trained_checkpoint(tmp_path)
    with torch.device("meta"):
        model = build_model()
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")  # memory, uninitialized
    weight = model[0].weight
    state = State()
    state.model = model
    state.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    make_session(store, state, attempt=1).load(artifact)
    assert state.model is model and model[0].weight is weight  # in place
    for name, tensor in saved.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    exp_avg = state.optimizer.state[model[0].weight]["exp_avg"]
    assert torch.equal(exp_avg, saved.optimizer.state[saved.model[0].weight]["exp_avg"])


def test_a_model_left_on_meta_is_an_error_that_says_to_materialize_it(tmp_path):
    store, artifact, _ = trained_checkpoint(tmp_path)
    with torch.device("meta"):
        model = build_model()
    state = State()
    state.model = model
    with pytest.raises(CheckpointException) as raised:
        make_session(store, state, attempt=1).load(artifact)
    message = str(raised.value)
    assert "self.model is on the meta device" in message
    assert 'to_empty(device="cpu")' in message
    assert all(p.is_meta for p in model.parameters())  # nothing was changed


def relabel_devices(root, key, device):
    """Make every torch storage of a checkpoint say it lives on ``device``, as the
    manifest of a save on a GPU does (the bytes are the same either way)."""
    crafted = Crafted.open(LocalBucket(root), key)
    for storage in crafted.storage["tensors"]:
        if storage[0] == "torch":
            storage[2] = device
    crafted.commit()


def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu_only_machine(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    store, artifact, saved = trained_checkpoint(tmp_path)
    relabel_devices(tmp_path, artifact.key, "cuda:1")
    client = Checkpoint(root=str(tmp_path))
    for map_location in (None, "cpu", torch.device("cpu"), {"cuda:1": "cpu"}):
        values = client.load(artifact.key, fields=["model"], map_location=map_location)
        loaded = values["model"]
        for name, tensor in saved.model.state_dict().items():
            assert loaded.state_dict()[name].device.type == "cpu"
            assert torch.equal(loaded.state_dict()[name], tensor), (map_location, name)
    # Into a live model: the live tensors' device decides.
    state = State()
    state.model = build_model()
    make_session(store, state, attempt=1).load(artifact, map_location=None)
    assert torch.equal(state.model[2].bias, saved.model[2].bias)


@pytest.mark.parametrize(
    "map_location, what",
    [
        ("gpu0", "the value 'gpu0'"),
        ("cpux", "the value 'cpux'"),
        (3, "the value 3"),
        ("meta", "the value 'meta'"),
        ({1: "cpu"}, "a key 1"),
    ],
)
def test_a_map_location_that_names_no_device_is_an_error_naming_it(tmp_path, map_location, what):
    _, artifact, _ = trained_checkpoint(tmp_path)
    with pytest.raises(CheckpointException) as raised:
        Checkpoint(root=str(tmp_path)).load(artifact.key, map_location=map_location)
    message = str(raised.value)
    assert "load(): map_location has %s, which is no device name" % what in message
    assert '"cpu"' in message and "torch.device" in message


def test_map_location_cuda_without_a_gpu_says_so_and_how_to_load_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    _, artifact, _ = trained_checkpoint(tmp_path)
    with pytest.raises(CheckpointException) as raised:
        Checkpoint(root=str(tmp_path)).load(artifact.key, map_location="cuda:0")
    assert "map_location='cuda:0', but this machine has no such device" in str(raised.value)
    assert 'map_location="cpu"' in str(raised.value)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
def test_low_precision_tensors_round_trip_bit_exactly(tmp_path, dtype):
    torch.manual_seed(0)
    state = State()
    state.model = build_model().to(dtype)
    state.activations = (torch.randn(64, 8) * 4).to(dtype)
    state.master = torch.randn(64, 8)  # fp32 master weights beside the low-precision copy
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    expected = {k: v.clone() for k, v in state.model.state_dict().items()}
    activations = state.activations.clone()
    fresh = State()
    fresh.model = build_model().to(dtype)
    make_session(store, fresh, attempt=1).load(artifact)
    for name, tensor in expected.items():
        live = fresh.model.state_dict()[name]
        assert live.dtype == dtype
        assert torch.equal(live.view(torch.uint8), tensor.view(torch.uint8)), name
    assert fresh.activations.dtype == dtype
    assert torch.equal(fresh.activations.view(torch.uint8), activations.view(torch.uint8))


def test_a_grad_scaler_and_the_generator_of_a_mixed_precision_loop_resume(tmp_path):
    torch.manual_seed(1)
    state = State()
    state.model = build_model()
    state.optimizer = torch.optim.SGD(state.model.parameters(), lr=0.1)
    state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    for _ in range(3):
        state.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = state.model(torch.randn(4, 16)).float().pow(2).mean()
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    scaler_state = state.scaler.state_dict()
    next_draw = torch.randn(5)
    resumed = State()
    resumed.model = build_model()
    resumed.optimizer = torch.optim.SGD(resumed.model.parameters(), lr=0.1)
    resumed.scaler = torch.amp.GradScaler("cpu")
    make_session(store, resumed, attempt=1).load(artifact)
    assert resumed.scaler.state_dict() == scaler_state
    assert torch.equal(torch.randn(5), next_draw)  # torch's generator resumed where it was


def test_cuda_generator_states_on_a_machine_with_other_devices_are_warned_about(caplog):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    from metaflow_extensions.implicit_checkpoint.engine import rng

    cpu_state = torch.get_rng_state()
    saved = {rng.TORCH: cpu_state, rng.TORCH_CUDA: [torch.zeros(16, dtype=torch.uint8)] * 2}
    torch.randn(3)
    with caplog.at_level("WARNING"):
        rng.restore_rng_state(saved)
    assert torch.equal(torch.get_rng_state(), cpu_state)  # the CPU generator is restored
    assert "CUDA generator states of 2 device(s), this machine has 0: none is restored" in caplog.text


def test_cuda_generator_states_that_are_no_tensors_are_an_error():
    from metaflow_extensions.implicit_checkpoint.engine import rng

    with pytest.raises(CheckpointException, match="not a list of tensors; it was altered"):
        rng.restore_rng_state({rng.TORCH: torch.get_rng_state(), rng.TORCH_CUDA: "cuda"})
