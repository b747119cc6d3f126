"""The calibration cache: what is cached, and how batches are drawn."""

from __future__ import annotations

import torch
from torch import nn

from adaround_lightning.engine.cache.activation_cache import CalibrationCache, RandomBatches
from adaround_lightning.graph.capture import capture_input


def test_layer_inputs_come_from_the_quantized_network() -> None:
    torch.manual_seed(0)
    fp = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    q = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    q.load_state_dict(fp.state_dict())
    with torch.no_grad():
        q[0].weight.add_(1.0)  # "already rounded" earlier layer
    data = torch.randn(20, 3)
    cache = CalibrationCache(data, batch_size=4, num_steps=3, seed=0, forward_batch_size=7)
    cache.cache_block(fp, q, fp[2], q[2])
    cache.cache_layer(fp[2], q[2], fp[2], q[2], activation=nn.ReLU(), layer_index=0)
    with torch.no_grad():
        assert torch.allclose(cache.inputs[:], torch.relu(q[0](data)))
        assert torch.allclose(cache.targets[:], torch.relu(fp(data)))
    batches = list(cache.train_dataloader())
    assert len(batches) == 3
    assert all(x.shape == (4, 5) and y.shape == (4, 2) for x, y in batches)


def test_batches_pair_inputs_with_their_targets_and_are_seeded() -> None:
    inputs = torch.arange(50.0).unsqueeze(1)
    targets = inputs * 2
    first = [x.clone() for x, _ in RandomBatches(inputs, targets, 8, num_steps=5, seed=3)]
    second = [x.clone() for x, _ in RandomBatches(inputs, targets, 8, num_steps=5, seed=3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    for x, y in RandomBatches(inputs, targets, 8, num_steps=5, seed=4):
        assert torch.equal(y, 2 * x)


def test_capture_stops_early() -> None:
    calls = []
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    net[1].register_forward_hook(lambda *a: calls.append(1))
    capture_input(net, net[1], torch.randn(10, 2), chunk=3)
    assert calls == []


def test_a_budget_stacks_fewer_steps_per_item_and_the_same_batches() -> None:
    from adaround_lightning.engine.cache.storage import CacheAllocator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).eval()
    data = torch.randn(40, 64)

    def batches(budget_bytes: int | None) -> tuple[int, list[torch.Tensor]]:
        allocator = CacheAllocator(torch.device("cpu"), "auto", budget_bytes)
        cache = CalibrationCache(
            data, batch_size=4, num_steps=7, seed=1, steps_per_batch=4, allocator=allocator
        )
        cache.cache_block(net, net, net[2], net[2])
        cache.cache_layer(net[2], net[2], net[2], net[2], activation=None, layer_index=0)
        items = list(cache.train_dataloader())
        assert all(x.dim() == 3 for x, _ in items)  # stacked (K, batch, ...) for manual steps
        return cache.steps_in_one_batch(), [x[k] for x, _ in items for k in range(x.shape[0])]

    unbounded_k, unbounded = batches(None)
    # A step's inputs and targets: 4 rows of 2 x 64 float32 = 2 KiB; a quarter of a 12 KiB
    # budget fits one step per item (the buffers themselves spill to disk).
    bounded_k, bounded = batches(12 * 1024)
    assert unbounded_k == 4 and bounded_k == 1
    assert len(bounded) == len(unbounded) == 7
    assert all(torch.equal(a, b) for a, b in zip(bounded, unbounded, strict=True))
