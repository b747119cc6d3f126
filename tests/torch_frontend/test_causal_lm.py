"""Hugging Face causal LMs: token ids in, decoder layers fitted as blocks, lm_head in float."""

from __future__ import annotations

import pytest
import torch

from adaround_lightning import AdaroundConfig, QuantConfig, adaround
from adaround_lightning.graph.trace import replay_block_arguments, trace_network
from adaround_lightning.torch_frontend.networks import float_and_quantized
from tests.helpers.language_models import tiny_gpt2, tiny_llama

pytest.importorskip("transformers")


def _ids(seed: int, count: int = 16, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (count, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_decoder_layers_called_alone_give_their_in_network_output(build) -> None:
    fp_model, _ = float_and_quantized(build(), _ids(0)[:2])
    trace = trace_network(fp_model, _ids(0)[:2])
    names = [block.name for block in trace.blocks if block.is_module]
    assert len(names) == 2 and not trace.not_blocks  # both decoder layers are blocks
    replay_block_arguments(fp_model, trace.replayed)
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [
        fp_model.get_submodule(name).register_forward_hook(
            lambda m, a, out, name=name: seen.__setitem__(name, (a[0], out))
        )
        for name in names
    ]
    ids = _ids(1, count=5)  # another batch size and fresh tokens than the trace saw
    with torch.no_grad():
        fp_model(ids)
        for hook in hooks:
            hook.remove()
        for name in names:
            hidden, expected = seen[name]
            alone = fp_model.get_submodule(name)(hidden)  # what the walk does with its cache
            expected = expected[0] if isinstance(expected, tuple) else expected
            assert torch.allclose(alone, expected, atol=1e-6), name


def test_llama_from_token_ids_quantizes_every_decoder_linear_and_keeps_lm_head_float() -> None:
    model = tiny_llama()
    quant = QuantConfig(weight_bits=4, group_size=32, weight_symmetric=False)
    config = AdaroundConfig(iters=10, batch_size=8, num_samples=16)
    result = adaround(model, _ids(2), quant, config, {"accelerator": "cpu"}, progress=False)
    linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers.")
    }
    assert set(result.quantizers) == linears  # 7 per decoder layer
    assert "lm_head" in result.skipped and "quantize_lm_head" in result.skipped["lm_head"]
    assert model.config.use_cache  # the caller's model is left as it was
    for name, quantizer in result.quantizers.items():
        weight = result.model.get_submodule(name).weight
        q, zero = quantizer.integer_weight().float(), quantizer.zero_point.float()
        assert torch.allclose(weight, (q - zero) * quantizer.scale, atol=1e-7), name
        assert int(q.min()) >= -8 and int(q.max()) <= 7


def test_lm_head_can_be_opted_in_and_a_tied_one_stays_float() -> None:
    config = AdaroundConfig(iters=4, batch_size=8, num_samples=16)
    llama = adaround(
        tiny_llama(),
        _ids(3),
        QuantConfig(quantize_lm_head=True),
        config,
        {"accelerator": "cpu"},
        progress=False,
    )
    assert "lm_head" in llama.quantizers
    gpt2 = adaround(
        tiny_gpt2(),
        _ids(3),
        QuantConfig(quantize_lm_head=True),
        config,
        {"accelerator": "cpu"},
        progress=False,
    )
    assert "tied" in gpt2.skipped["lm_head"]
    assert len(gpt2.quantizers) == 8  # GPT-2's Conv1D projections, as nn.Linear


def test_gpt2_conv1d_becomes_linear_with_the_same_function() -> None:
    model = tiny_gpt2()
    fp_model, _ = float_and_quantized(model, _ids(4)[:2])
    assert isinstance(fp_model.transformer.h[0].attn.c_attn, torch.nn.Linear)
    with torch.no_grad():
        assert torch.allclose(fp_model(_ids(5)).logits, model(_ids(5)).logits, atol=1e-5)
