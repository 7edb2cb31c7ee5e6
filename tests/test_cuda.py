"""The GPU path on a real CUDA device (skipped without one; `scripts/gpu_check.sh` runs
these on the device machine with ``pytest -m cuda``).

- A background save of CUDA tensors saves the bytes live at save(), even with the work
  that produced them still queued and the next optimizer step enqueued right after;
  its staging buffer is pinned. A sync save streams more than its pinned slots hold.
- A load restores CUDA tensors in place (the same Parameter objects, on their device),
  adding no device memory for them; a checkpoint saved on CUDA loads into a model on the
  CPU, onto cuda:0 from cuda:1, and with map_location without a live object.
- bf16, fp16 and fp8 tensors on CUDA, a CUDA GradScaler, every device's generator and a
  torch.compile'd module resume.
"""

import pytest
import torch

from engine_helpers import State, local_store, make_session
from metaflow_extensions.implicit_checkpoint.engine.staging import StagingArea
from metaflow_extensions.implicit_checkpoint.toplevel.checkpoint_client import Checkpoint

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MIB = 1024 * 1024


def build_model(device="cuda"):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512)
    ).to(device)


def train_step(model, optimizer, scaler=None):
    inputs = torch.randn(64, 512, device="cuda")
    optimizer.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(inputs).float().pow(2).mean()
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()


def test_a_background_save_saves_the_bytes_live_at_save_even_with_work_still_queued(tmp_path):
    state = State()
    state.weights = torch.zeros(64 * MIB // 4, device="cuda")
    store = local_store(tmp_path)
    session = make_session(store, state)
    expected = []
    for round_ in range(3):
        # Queued kernels the host does not wait for: the save must copy their result.
        for _ in range(20):
            state.weights.add_(1.0)
        state.weights.mul_(round_ + 1)
        session.save(metadata={"round": round_}, blocking=False)
        expected.append(state.weights.clone())  # enqueued after save(): the same bytes
        state.weights.add_(1000.0)  # the next step, right after save() returned
    session.finish()
    artifacts = session.list()
    assert len(artifacts) == 3
    for artifact in artifacts:
        loaded = Checkpoint(root=str(tmp_path)).load(artifact.key)["weights"]
        assert loaded.is_cuda and torch.equal(loaded, expected[artifact.metadata["round"]]), artifact.key


def test_the_staging_buffer_is_pinned_and_holds_the_device_bytes():
    staging = StagingArea()
    weights = torch.arange(MIB, dtype=torch.float32, device="cuda")
    (view,) = staging.stage([weights.view(torch.uint8)], [4 * MIB])
    assert staging._host_tensor.is_pinned()
    assert torch.equal(torch.frombuffer(view, dtype=torch.float32), weights.cpu())


def test_a_background_save_of_a_training_loop_saves_the_state_of_its_step(tmp_path):
    state = State()
    state.model = build_model()
    state.optimizer = torch.optim.AdamW(state.model.parameters(), lr=1e-3)
    train_step(state.model, state.optimizer)
    store = local_store(tmp_path)
    session = make_session(store, state)
    session.save(blocking=False)
    at_save = {k: v.clone() for k, v in state.model.state_dict().items()}
    train_step(state.model, state.optimizer)  # changes every weight before the commit
    session.finish()
    (artifact,) = session.list()
    values = Checkpoint(root=str(tmp_path)).load(artifact.key, fields=["model"])
    for name, tensor in values["model"].state_dict().items():
        assert torch.equal(tensor, at_save[name]), name


def test_a_sync_save_of_more_than_the_pinned_slots_hold_streams_every_chunk(tmp_path):
    state = State()
    # 9 chunks of 64 MiB and a rest: more than the two 256 MiB slots hold at once.
    state.weights = torch.randn(600 * MIB // 4, device="cuda")
    state.bias = torch.randn(1000, device="cuda")
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    loaded = Checkpoint(root=str(tmp_path)).load(artifact.key)
    assert loaded["weights"].is_cuda and torch.equal(loaded["weights"], state.weights)
    assert torch.equal(loaded["bias"], state.bias)


def test_a_load_restores_cuda_parameters_in_place_without_more_device_memory(tmp_path):
    state = State()
    state.model = build_model()
    train_step(state.model, torch.optim.SGD(state.model.parameters(), lr=0.1))
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    saved = {k: v.clone() for k, v in state.model.state_dict().items()}

    resumed = State()
    torch.manual_seed(1)
    resumed.model = torch.nn.Sequential(
        torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512)
    ).to("cuda")
    parameters = list(resumed.model.parameters())
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    make_session(store, resumed, attempt=1).load(artifact)
    torch.cuda.synchronize()
    added = torch.cuda.max_memory_allocated() - before
    assert list(resumed.model.parameters()) == parameters  # the same objects
    for name, tensor in resumed.model.state_dict().items():
        assert tensor.is_cuda and torch.equal(tensor, saved[name]), name
    model_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    # The bytes go from the bounce buffer into the parameters: no device copy of the
    # model (4 MiB: a block of the caching allocator, e.g. for the CUDA RNG state).
    assert added < min(model_bytes, 4 * MIB), (added, model_bytes)


def test_a_checkpoint_saved_on_cuda_loads_into_a_cpu_model_and_with_map_location(tmp_path):
    state = State()
    state.model = build_model()
    state.features = torch.randn(100, 32, device="cuda")
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    expected = {k: v.cpu() for k, v in state.model.state_dict().items()}

    on_cpu = State()
    on_cpu.model = build_model("cpu")
    make_session(store, on_cpu, attempt=1).load(artifact)
    for name, tensor in on_cpu.model.state_dict().items():
        assert tensor.device.type == "cpu" and torch.equal(tensor, expected[name]), name
    assert on_cpu.features.is_cuda  # no live object: the device it was saved on

    client = Checkpoint(root=str(tmp_path))
    assert client.load(artifact.key, fields=["features"], map_location="cpu")["features"].device.type == "cpu"
    values = client.load(artifact.key, fields=["features"], map_location="cuda:0")
    assert values["features"].device == torch.device("cuda:0")
    assert torch.equal(values["features"].cpu(), state.features.cpu())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_checkpoint_saved_on_cuda_1_loads_into_a_model_on_cuda_0(tmp_path):
    state = State()
    state.model = build_model("cuda:1")
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    live = State()
    live.model = build_model("cuda:0")
    make_session(store, live, attempt=1).load(artifact)
    for name, tensor in live.model.state_dict().items():
        assert tensor.device == torch.device("cuda:0")
        assert torch.equal(tensor.cpu(), state.model.state_dict()[name].cpu()), name
    moved = Checkpoint(root=str(tmp_path)).load(artifact.key, map_location={"cuda:1": "cuda:0"})
    assert all(t.device == torch.device("cuda:0") for t in moved["model"].state_dict().values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_low_precision_cuda_tensors_round_trip_bit_exactly(tmp_path, dtype):
    state = State()
    state.weights = (torch.randn(1024, 256, device="cuda") * 3).to(dtype)
    state.model = build_model().to(torch.bfloat16)
    store = local_store(tmp_path)
    session = make_session(store, state)
    artifact = session.save(blocking=False)
    session.finish()
    resumed = State()
    resumed.weights = torch.zeros(1024, 256, device="cuda").to(dtype)
    resumed.model = build_model().to(torch.bfloat16)
    make_session(store, resumed, attempt=1).load(artifact)
    assert resumed.weights.dtype == dtype and resumed.weights.is_cuda
    assert torch.equal(resumed.weights.view(torch.uint8), state.weights.view(torch.uint8))
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, state.model.state_dict()[name]), name


def test_a_cuda_grad_scaler_and_every_devices_generator_resume(tmp_path):
    torch.cuda.manual_seed_all(7)
    state = State()
    state.model = build_model()
    state.optimizer = torch.optim.SGD(state.model.parameters(), lr=0.01)
    state.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, growth_interval=1)
    for _ in range(3):
        train_step(state.model, state.optimizer, state.scaler)
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    scaler_state = state.scaler.state_dict()
    draws = [torch.randn(4, device="cuda:%d" % d) for d in range(torch.cuda.device_count())]

    resumed = State()
    resumed.model = build_model()
    resumed.optimizer = torch.optim.SGD(resumed.model.parameters(), lr=0.01)
    resumed.scaler = torch.amp.GradScaler("cuda")
    make_session(store, resumed, attempt=1).load(artifact)
    assert resumed.scaler.state_dict() == scaler_state
    again = [torch.randn(4, device="cuda:%d" % d) for d in range(torch.cuda.device_count())]
    for before, after in zip(draws, again):
        assert torch.equal(before, after)  # each device's generator resumed where it was


def test_a_compiled_module_on_cuda_resumes_in_place(tmp_path):
    state = State()
    state.model = torch.compile(build_model())
    state.optimizer = torch.optim.AdamW(state.model.parameters(), lr=1e-3)
    train_step(state.model, state.optimizer)
    store = local_store(tmp_path)
    artifact = make_session(store, state).save()
    saved = {k: v.clone() for k, v in state.model.state_dict().items()}

    resumed = State()
    torch.manual_seed(5)
    resumed.model = torch.compile(torch.nn.Sequential(
        torch.nn.Linear(512, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 512)
    ).to("cuda"))
    resumed.optimizer = torch.optim.AdamW(resumed.model.parameters(), lr=1e-3)
    make_session(store, resumed, attempt=1).load(artifact)
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    train_step(resumed.model, resumed.optimizer)  # the compiled module still trains
