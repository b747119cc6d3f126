"""The causal-LM benchmark trainer on a few synthetic source files: files transformers loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adaround_lightning.benchmarks.train_causal_lm import TokenWindows, main, split_sources


def _sources(root: Path) -> Path:
    root.mkdir()
    for i in range(6):
        body = "".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(40))
        (root / f"mod{i}.py").write_text(body)
    return root


def test_every_tenth_file_is_held_out_and_no_file_is_in_both(tmp_path: Path) -> None:
    root = _sources(tmp_path / "src")
    train, heldout = split_sources(root, every=3)
    names = sorted(root.glob("*.py"))
    held = {p.name for i, p in enumerate(names) if i % 3 == 0}
    for path in names:
        text = path.read_text()
        assert (text in heldout) == (path.name in held)
        assert (text in train) == (path.name not in held)


def test_windows_are_seeded_slices_of_the_stream() -> None:
    tokens = torch.arange(100)
    first = list(TokenWindows(tokens, 8, 4, 3, seed=1))
    again = TokenWindows(tokens, 8, 4, 3, seed=1)
    assert all(a.equal(b) for a, b in zip(first, again, strict=True))
    for batch in first:
        assert batch.shape == (4, 8)
        assert bool((batch[:, 1:] - batch[:, :-1] == 1).all())  # consecutive tokens


def test_the_checkpoint_loads_in_transformers_alone(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path / "lm"
    tiny = ["--hidden", "32", "--layers", "2", "--heads", "2", "--kv-heads", "1"]
    tiny += ["--intermediate", "64", "--vocab-size", "300", "--seq-len", "32", "--steps", "4"]
    meta = main(["--text-root", str(_sources(tmp_path / "src")), "--out", str(out), *tiny])
    assert json.loads((out / "meta.json").read_text()) == meta
    assert meta["heldout_perplexity"] > 1.0 and meta["parameters"] > 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = LlamaForCausalLM.from_pretrained(out).eval()
    ids = tokenizer("def f(x):\n    return x\n", return_tensors="pt")["input_ids"]
    assert tokenizer.decode(ids[0]) == "def f(x):\n    return x\n"
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(logits).all()
