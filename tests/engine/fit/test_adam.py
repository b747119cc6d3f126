"""HostAdam: torch's Adam update bit for bit, without asking about accelerators every step."""

from __future__ import annotations

import pytest
import torch

from adaround_lightning.engine.fit.adam import HostAdam, fused_adam_supported, rounding_adam


def _train(kind: type[torch.optim.Adam], fused: bool, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(5, 7, generator=generator)) for _ in range(2)]
    optimizer = kind(
        [{"params": params[:1]}, {"params": params[1:], "lr": 0.003}], lr=0.01, fused=fused
    )
    for _ in range(6):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("fused", [False, True])
def test_host_adam_is_torch_adam_bit_for_bit(fused: bool) -> None:
    seed = int(torch.randint(0, 2**31 - 1, ()))  # fresh inputs on every run
    ours, torchs = _train(HostAdam, fused, seed), _train(torch.optim.Adam, fused, seed)
    for a, b in zip(ours, torchs, strict=True):
        assert torch.equal(a, b)


def test_host_adam_does_not_ask_for_the_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def current_accelerator(check_available: bool = False) -> None:
        asked.append(check_available)

    monkeypatch.setattr(torch.accelerator, "current_accelerator", current_accelerator)
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    torch.optim.Adam([p], lr=0.1).step()
    if not asked:
        pytest.skip("this torch's Adam no longer asks: nothing to skip")
    asked.clear()
    HostAdam([p], lr=0.1).step()
    assert asked == []


def test_rounding_adam_is_host_adam_on_the_cpu_and_fused_where_supported() -> None:
    V = torch.nn.Parameter(torch.zeros(4))
    adam = rounding_adam([{"params": [V]}], 0.01, torch.device("cpu"))
    assert isinstance(adam, HostAdam)
    assert adam.defaults["fused"] == fused_adam_supported(torch.device("cpu"))
    assert adam.defaults["lr"] == 0.01
