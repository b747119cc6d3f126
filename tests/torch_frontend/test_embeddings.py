"""``quant.quantize_embeddings``: a language model's input embedding rounded to nearest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.export.compressed_tensors import save_compressed_tensors
from adaround_lightning.torch_frontend.embeddings import round_input_embedding
from tests.helpers.language_models import tiny_gpt2, tiny_llama

pytest.importorskip("transformers")

EMBEDDING = "model.embed_tokens"


@pytest.fixture(scope="module")
def calibrated() -> object:
    ids = torch.randint(0, 256, (16, 12), generator=torch.Generator().manual_seed(1))
    quant = QuantConfig(
        weight_bits=4, group_size=32, weight_symmetric=False, quantize_embeddings=True
    )
    config = AdaroundConfig(iters=10, batch_size=8, num_samples=16)
    return adaround(tiny_llama(), ids, quant, config, {"accelerator": "cpu"}, progress=False)


def test_the_embedding_is_rounded_to_nearest_on_its_group_grid(calibrated) -> None:
    quantizer = calibrated.quantizers[EMBEDDING]
    float_weight = calibrated.float_model.get_submodule(EMBEDDING).weight.double()
    # Recomputed in float64 from the grid (one scale and zero point per group of 32): the
    # nearest integer of W/s, plus z, clipped to the 4-bit range.
    scale = quantizer.scale.double()
    zero = quantizer.zero_point.double()
    groups = scale.reshape(scale.shape[0], -1, 32)
    assert torch.equal(groups, groups[..., :1].expand_as(groups))  # one scale per group
    nearest = torch.clamp(torch.floor(float_weight / scale + 0.5) + zero, -8, 7)
    q = quantizer.integer_weight().double()
    ties = ((float_weight / scale) % 1 - 0.5).abs() < 1e-5  # float32 round-off at a half
    assert torch.equal(q[~ties], nearest[~ties])
    weight = calibrated.model.get_submodule(EMBEDDING).weight.double()
    torch.testing.assert_close(weight, (q - zero) * scale, rtol=1e-6, atol=1e-7)
    assert not torch.equal(weight, float_weight)  # the caller's float copy is kept apart


def test_the_blocks_are_fitted_on_the_rounded_embedding(calibrated) -> None:
    # Its integers are the round-to-nearest ones, and the walk's layers are all there too.
    assert len(calibrated.quantizers) == 1 + 2 * 7
    assert EMBEDDING not in {report.name for report in calibrated.layers}


def test_a_tied_embedding_stays_float() -> None:
    gpt2 = tiny_gpt2()
    before = gpt2.get_input_embeddings().weight.detach().clone()
    assert round_input_embedding(gpt2, QuantConfig(quantize_embeddings=True)) == {}
    assert torch.equal(gpt2.get_input_embeddings().weight, before)


def test_transformers_loads_the_quantized_embedding(calibrated, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    save_compressed_tensors(
        calibrated.float_model, calibrated.quantizers, tmp_path, zero_points="padded"
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(
        loaded.get_submodule(EMBEDDING).weight, calibrated.model.get_submodule(EMBEDDING).weight
    )
    ids = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(calibrated.model(ids).logits, loaded(ids).logits, atol=1e-5)
