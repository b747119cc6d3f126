"""The compressed-tensors checkpoint: bit-exact packing, and transformers loads what we write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.export.compressed_tensors import (
    pack_int32,
    save_compressed_tensors,
    unpack_int32,
)
from tests.helpers.language_models import tiny_llama

pytest.importorskip("transformers")
helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_packing_matches_compressed_tensors_own(bits: int) -> None:
    generator = torch.Generator().manual_seed(bits)
    values = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (7, 45), generator=generator)
    values = values.to(torch.int8)
    packed = pack_int32(values, bits)
    assert torch.equal(packed, helpers.pack_to_int32(values, bits))  # the library's writer
    assert torch.equal(helpers.unpack_from_int32(packed, bits, values.shape), values)
    assert torch.equal(unpack_int32(packed, bits, 45), values)


@pytest.fixture(scope="module")
def calibrated() -> dict[bool, object]:
    model, ids = (
        tiny_llama(),
        torch.randint(0, 256, (16, 12), generator=torch.Generator().manual_seed(0)),
    )
    results = {}
    for symmetric in (True, False):
        quant = QuantConfig(weight_bits=4, group_size=32, weight_symmetric=symmetric)
        config = AdaroundConfig(iters=10, batch_size=8, num_samples=16)
        results[symmetric] = adaround(
            model, ids, quant, config, {"accelerator": "cpu"}, progress=False
        )
    return results


@pytest.mark.parametrize("symmetric", [True, False])
def test_transformers_loads_the_checkpoint_with_the_simulated_logits(
    calibrated: dict, symmetric: bool, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    result = calibrated[symmetric]
    save_compressed_tensors(result.float_model, result.quantizers, tmp_path, zero_points="padded")
    config = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["ignore"] == ["lm_head"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = result.model(ids).logits, loaded(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    # The weights transformers holds are the calibrated network's, integer for integer.
    layer = "model.layers.1.mlp.down_proj"
    assert torch.equal(loaded.get_submodule(layer).weight, result.model.get_submodule(layer).weight)


def test_packed_zero_points_decode_with_the_librarys_unpacker(
    calibrated: dict, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    result = calibrated[False]
    save_compressed_tensors(result.float_model, result.quantizers, tmp_path)  # vLLM's layout
    tensors = load_file(str(tmp_path / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj"
    quantizer = result.quantizers[name]
    shape = (quantizer.V.shape[0], quantizer.V.shape[1] // 32)
    zero = helpers.unpack_from_int32(tensors[f"{name}.weight_zero_point"], 4, shape, packed_dim=0)
    assert tensors[f"{name}.weight_zero_point"].shape == (64 * 4 // 32, shape[1])
    assert torch.equal(zero.int(), quantizer.zero_points.int())
    q = helpers.unpack_from_int32(tensors[f"{name}.weight_packed"], 4, quantizer.V.shape)
    assert torch.equal(q, quantizer.integer_weight())


def test_a_gpt2_conv1d_checkpoint_is_refused_with_the_fix(tmp_path: Path) -> None:
    from adaround_lightning.core.errors import UserError
    from tests.helpers.language_models import tiny_gpt2

    ids = torch.randint(0, 256, (16, 12), generator=torch.Generator().manual_seed(1))
    config = AdaroundConfig(iters=2, batch_size=8, num_samples=16)
    result = adaround(tiny_gpt2(), ids, QuantConfig(), config, {"accelerator": "cpu"})
    with pytest.raises(UserError, match=r"set export\.compressed_tensors=false"):
        save_compressed_tensors(result.float_model, result.quantizers, tmp_path)
