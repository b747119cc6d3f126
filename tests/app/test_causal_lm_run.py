"""``recipe=causal_lm`` from the command line: perplexity, and a checkpoint transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import run_cli

pytest.importorskip("compressed_tensors")


def _tiny_run_args(folder: Path) -> list[str]:
    """``recipe=causal_lm`` on the tiny Llama of ``llama_folder``, a few seconds of fitting."""
    return [
        "recipe=causal_lm",
        f"model.name={folder}",
        f"data.text={folder / 'text.txt'}",
        "data.seq_len=16",
        "data.calibration.size=16",
        "data.eval_size=8",
        "adaround.num_samples=16",
        "adaround.iters=10",
        "quant.group_size=32",
        "trainer.accelerator=cpu",
    ]


@pytest.mark.parametrize("embeddings", [False, True])
def test_causal_lm_recipe_reports_perplexity_and_exports_a_loadable_checkpoint(
    tmp_path: Path, embeddings: bool
) -> None:
    from tests.helpers.language_models import llama_folder

    folder = llama_folder(tmp_path / "model")
    run_dir = tmp_path / "run"
    args = [*_tiny_run_args(folder), f"output_dir={run_dir}"]
    if embeddings:
        args.append("quant.quantize_embeddings=true")
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    rows = {key: results[key]["perplexity"] for key in ("fp32", "nearest", "adaround")}
    exported = results["compressed_tensors"]["perplexity"]
    assert all(value > 1 for value in rows.values())
    assert abs(exported / rows["adaround"] - 1) < 1e-3  # transformers reads what we simulate
    assert results["quant"]["group_size"] == 32 and results["outputs"]["compressed_tensors"]
    assert (run_dir / "compressed_tensors" / "tokenizer.json").is_file()
    assert "perplexity" in (run_dir / "report.html").read_text()
    assert "lm_head" in proc.stdout + proc.stderr  # left in float, and said so
    if embeddings:  # rounded, said so, and its integers in the run's integer file
        from safetensors import safe_open

        assert "input embedding (" in proc.stdout + proc.stderr
        with safe_open(str(run_dir / "quantized_weights.safetensors"), "pt") as handle:
            stored = list(handle.keys())
        assert any(key.startswith("model.embed_tokens.") for key in stored)


def test_causal_lm_recipe_under_ddp_matches_one_process(tmp_path: Path) -> None:
    from tests.helpers.language_models import llama_folder

    folder = llama_folder(tmp_path / "model")
    common = [*_tiny_run_args(folder), "export.compressed_tensors=false"]
    perplexity = {}
    for name, extra in (("single", []), ("ddp", ["trainer.devices=2", "trainer.strategy=ddp"])):
        run_dir = tmp_path / name
        proc = run_cli([*common, *extra, f"output_dir={run_dir}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads((run_dir / "results.json").read_text())
        perplexity[name] = results["adaround"]["perplexity"]
    # Each process fits on its half of the windows with the gradients all-reduced: the same
    # objective, so the same network up to the order of float sums and Adam's path.
    assert abs(perplexity["ddp"] / perplexity["single"] - 1) < 0.02
