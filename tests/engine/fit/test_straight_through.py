"""``adaround.straight_through``: the hard rounding forward with ``h(V)``'s gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, EngineConfig, QuantConfig, adaround
from adaround_lightning.engine.fit.reconstruction import LayerReconstruction
from adaround_lightning.quant.factory import quantizer_for_weight
from adaround_lightning.quant.loss import AdaptiveRoundingLoss

CPU = {"accelerator": "cpu"}


def test_the_step_loss_is_the_hard_rounding_error_and_carries_no_regularizer() -> None:
    # The loss a straight-through step reports equals ||f(s q x) - y||^2 of the integers the
    # fit would end with at that moment, recomputed in float64; no regularizer term.
    generator = torch.Generator().manual_seed(3)
    layer = nn.Linear(8, 5)
    x, y = torch.randn(32, 8, generator=generator), torch.randn(32, 5, generator=generator)
    quantizer = quantizer_for_weight(layer.weight.detach(), 3, True, "minmax", 4, False)
    with torch.no_grad():
        quantizer.V.copy_(torch.randn(5, 8, generator=generator))
    loss = AdaptiveRoundingLoss(max_iter=10, reconstruction="mean")
    module = LayerReconstruction(layer, quantizer, loss, None, 1e-2, straight_through=True)
    step_loss = module._loss(x, y, 9)  # late in the fit: an annealed fit would regularize here
    weight = quantizer.hard_weight().double()
    expected = ((x.double() @ weight.T + layer.bias.detach().double() - y.double()) ** 2).mean()
    torch.testing.assert_close(step_loss.double(), expected)
    assert float(module.history[9, 1]) == 0.0


def test_the_learning_rate_decays_linearly_to_zero() -> None:
    layer = nn.Linear(4, 3)
    quantizer = quantizer_for_weight(layer.weight.detach(), 4, True, "minmax")
    loss = AdaptiveRoundingLoss(max_iter=20)
    module = LayerReconstruction(layer, quantizer, loss, None, 0.01, straight_through=True)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    expected = [0.01 * (1 - step / 20) for step in range(20)]
    torch.testing.assert_close(torch.tensor(rates), torch.tensor(expected))


@pytest.mark.parametrize("steps_per_batch", [1, 4])  # automatic and manual optimization
def test_a_straight_through_fit_beats_round_to_nearest_on_its_data(
    tiny_cnn, images, steps_per_batch
) -> None:
    result = adaround(
        tiny_cnn,
        images,
        QuantConfig(weight_bits=3, per_channel=True),
        AdaroundConfig(iters=40, batch_size=16, seed=0, straight_through=True, lr=0.01),
        CPU,
        engine=EngineConfig(steps_per_batch=steps_per_batch),
    )
    with torch.no_grad():
        reference = tiny_cnn(images).double()
        ours = (result.model(images).double() - reference).pow(2).mean()
        nearest = (result.nearest_model()(images).double() - reference).pow(2).mean()
    assert ours < nearest
    for quantizer in result.quantizers.values():  # the integers are the grid's
        q = quantizer.integer_weight()
        assert int(q.min()) >= quantizer.quant_min and int(q.max()) <= quantizer.quant_max
