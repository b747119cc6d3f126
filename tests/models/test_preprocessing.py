"""Preprocessing from pretrained weights: read from each zoo's own metadata, no download."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from adaround_lightning.models.model_builder import ModelConfig
from adaround_lightning.models.preprocessing import weights_preprocessing


def test_torchvision_weights_carry_their_resize_and_crop() -> None:
    v2 = weights_preprocessing(ModelConfig("resnet50", weights="IMAGENET1K_V2"), nn.Identity())
    v1 = weights_preprocessing(ModelConfig("resnet50", weights="IMAGENET1K_V1"), nn.Identity())
    assert (v2["resize"], v2["crop"]) == (232, 224) and (v1["resize"], v1["crop"]) == (256, 224)


def test_untrained_or_own_checkpoints_keep_the_data_settings() -> None:
    assert weights_preprocessing(ModelConfig("resnet50"), nn.Identity()) is None


def test_a_timm_model_gives_its_data_config() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False)
    config = ModelConfig("resnet18", source="timm", weights="DEFAULT")
    crop_pct = model.pretrained_cfg["crop_pct"]
    got = weights_preprocessing(config, model)
    assert got["crop"] == 224 and got["resize"] == int(224 / crop_pct)
    assert got["mean"] == list(model.pretrained_cfg["mean"])


def test_a_hugging_face_folder_gives_its_image_processor(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    processor = transformers.ViTImageProcessor(
        size={"height": 64, "width": 64}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    processor.save_pretrained(tmp_path)
    got = weights_preprocessing(ModelConfig(str(tmp_path), source="hf"), nn.Identity())
    assert got == {"resize": 64, "crop": 64, "mean": [0.5] * 3, "std": [0.25] * 3}
