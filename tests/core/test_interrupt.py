"""SIGINT and SIGTERM: the first stops a walk between layers, a second (or one outside) at once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from torch import nn

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.core.interrupt import STOP, Interrupted, stop_on_signals
from adaround_lightning.engine import layer_steps
from adaround_lightning.engine.records.checkpoint import load_progress
from adaround_lightning.torch_frontend import torch_walk
from tests.onnx_frontend.helpers import small_cnn_onnx

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_in_a_walk_is_a_request_the_second_stops(signum: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.signum == signum
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signum)
    assert caught.value.exit_status == 128 + signum
    assert {s: signal.getsignal(s) for s in before} == before


def test_outside_a_walk_a_signal_stops_at_once_and_a_new_run_starts_clean() -> None:
    with pytest.raises(Interrupted, match="SIGTERM"), stop_on_signals(walk=False):
        os.kill(os.getpid(), signal.SIGTERM)
    with stop_on_signals():
        assert not STOP.requested


def _signal_after_first_layer(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    original = layer_steps.log_finished_layer

    def log_then_signal(done: int, total: int, report: object) -> None:
        original(done, total, report)
        if done == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(module, "log_finished_layer", log_then_signal)


def _net() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 8 * 8, 4)).eval()


def test_a_torch_walk_stops_after_the_finished_layers_and_resumes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _signal_after_first_layer(monkeypatch, torch_walk)
    images = torch.randn(32, 3, 8, 8)
    config = AdaroundConfig(iters=20, batch_size=16, granularity="layer")
    with pytest.raises(Interrupted) as caught:
        adaround(_net(), images, QuantConfig(4), config, trainer=CPU, checkpoint=tmp_path)
    assert (caught.value.finished, caught.value.total) == (1, 3)
    assert len(load_progress(tmp_path, "")) == 1
    monkeypatch.undo()
    result = adaround(_net(), images, QuantConfig(4), config, trainer=CPU, checkpoint=tmp_path)
    assert len(result.layers) == 3


def test_an_onnx_walk_stops_the_same_way(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _signal_after_first_layer(monkeypatch, layer_steps)
    model = small_cnn_onnx(tmp_path, image_size=8)
    config = AdaroundConfig(iters=10, batch_size=16)
    with pytest.raises(Interrupted) as caught:
        adaround(str(model), torch.randn(32, 3, 8, 8), QuantConfig(4), config, trainer=CPU)
    assert caught.value.finished == 1 and caught.value.total > 1
