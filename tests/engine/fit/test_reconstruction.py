"""The per-layer LightningModule inside a real Trainer."""

from __future__ import annotations

import copy

import lightning as L
import torch
from torch import nn

from adaround_lightning.engine.cache.activation_cache import RandomBatches
from adaround_lightning.engine.fit.reconstruction import LayerReconstruction
from adaround_lightning.quant.loss import AdaptiveRoundingLoss
from adaround_lightning.quant.quantizer import AdaroundFakeQuantizer


class RecordingModule(LayerReconstruction):
    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        self.seen_steps.append(self.trainer.global_step)
        return super().training_step(batch, batch_idx)


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_curr_iter_follows_global_step_and_layer_gets_hard_weights() -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(4, 6, 3, padding=1)
    float_weight = layer.weight.detach().clone()
    fq = AdaroundFakeQuantizer(qscheme=torch.per_channel_symmetric, quant_min=-8, quant_max=7)
    fq(layer.weight)
    steps = 40
    loss = AdaptiveRoundingLoss(max_iter=steps, warm_start=0.25)
    module = RecordingModule(layer, fq, loss, nn.ReLU(inplace=True), lr=1e-2)
    module.seen_steps = []
    x = torch.randn(16, 4, 5, 5)
    with torch.no_grad():
        y = torch.relu(layer(x))
    _trainer(steps).fit(module, train_dataloaders=RandomBatches(x, y, 8, steps, seed=0))
    assert module.seen_steps == list(range(steps))
    history = module.history
    warm_end = 10
    assert torch.all(history[:warm_end, 1] == 0)
    assert torch.all(history[warm_end:, 1] > 0)
    assert torch.all(history[:, 0] >= 0) and history[:, 0].sum() > 0
    # Only V was trained; the layer now holds s * q with q the hard-rounded integers.
    scale = float_weight.abs().flatten(1).amax(1).reshape(-1, 1, 1, 1) / 7
    q = torch.clamp(torch.floor(float_weight / fq.scale) + (fq.V >= 0).float(), -8, 7)
    assert torch.equal(layer.weight.detach(), q * fq.scale)
    assert torch.allclose(fq.scale, scale)
    assert ((q - float_weight / scale).abs() < 1 + 1e-5).all()
    assert not layer.weight.requires_grad


def test_fresh_trainers_each_run_their_steps() -> None:
    layer = nn.Linear(5, 3)
    x = torch.randn(32, 5)
    y = layer(x).detach()
    for _ in range(2):
        fq = AdaroundFakeQuantizer(quant_min=-8, quant_max=7)
        fq(layer.weight)
        module = RecordingModule(layer, fq, AdaptiveRoundingLoss(max_iter=7), None)
        module.seen_steps = []
        _trainer(7).fit(module, train_dataloaders=RandomBatches(x, y, 4, 7, seed=0))
        assert module.seen_steps == list(range(7))


def test_several_steps_per_training_step_give_the_same_result() -> None:
    torch.manual_seed(1)
    layer = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(24, 3, 6, 6)
    with torch.no_grad():
        y = torch.relu(layer(x))
    steps = 10  # not a multiple of 3: the last training step runs one optimizer step
    results = {}
    for k in (1, 3):
        fq = AdaroundFakeQuantizer(qscheme=torch.per_channel_symmetric, quant_min=-4, quant_max=3)
        fq(layer.weight)
        module = RecordingModule(
            copy.deepcopy(layer),
            fq,
            AdaptiveRoundingLoss(max_iter=steps, warm_start=0.3),
            nn.ReLU(),
            lr=5e-2,
            steps_per_batch=k,
        )
        module.seen_steps = []
        _trainer(steps).fit(module, train_dataloaders=RandomBatches(x, y, 8, steps, 0, k))
        assert module.trainer.global_step == steps
        assert torch.all(module.history[:, 0] > 0)  # every step ran, indexed by global_step
        results[k] = (fq.V.detach().clone(), fq.integer_weight(), module.history.clone())
    assert torch.allclose(results[1][0], results[3][0], atol=1e-6)
    assert torch.equal(results[1][1], results[3][1])
    assert torch.allclose(results[1][2], results[3][2], rtol=1e-5, atol=1e-7)
