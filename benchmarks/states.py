"""The states the benchmarks save: torch state dicts shaped like real models."""

import torch

#: Share of the bytes held by the few large tensors; the rest is hundreds of small ones.
LARGE_SHARE = 0.9
LARGE_TENSORS = 8
SMALL_TENSORS = 300


def state_dict(total_bytes: int, seed: int = 0) -> dict:
    """float32 tensors: 8 large ones holding 90 % of ``total_bytes``, 300 small ones the rest."""
    generator = torch.Generator().manual_seed(seed)
    large = int(total_bytes * LARGE_SHARE / 4 / LARGE_TENSORS)
    small = int(total_bytes * (1 - LARGE_SHARE) / 4 / SMALL_TENSORS)
    state = {}
    for i in range(LARGE_TENSORS):
        state["layers.%d.weight" % i] = torch.randn(large, generator=generator)
    for i in range(SMALL_TENSORS):
        state["norms.%d.bias" % i] = torch.randn(small, generator=generator)
    return state


def nbytes(state: dict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def change_share(state: dict, share: float, seed: int = 1) -> list:
    """Overwrite ``share`` of the tensors (by count, large and small alike) in place;
    return the names of those changed."""
    generator = torch.Generator().manual_seed(seed)
    names = list(state)
    step = max(1, round(1 / share))
    for name in names[::step]:
        state[name].copy_(torch.randn(state[name].shape, generator=generator))
    return names[::step]
