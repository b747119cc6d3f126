"""Token windows of a text file: calibration drawn from it, evaluation held out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaround_lightning.core.errors import UserError
from adaround_lightning.data.text import (
    TextConfig,
    calibration_windows,
    encode_text,
    evaluation_windows,
    read_tokens,
)


def test_calibration_windows_are_runs_of_the_token_stream() -> None:
    tokens = torch.arange(1000)
    windows = calibration_windows(tokens, 20, 16, seed=3)
    assert windows.shape == (20, 16)
    assert bool((windows[:, 1:] - windows[:, :-1] == 1).all())  # consecutive tokens
    assert torch.equal(windows, calibration_windows(tokens, 20, 16, seed=3))  # seeded


def test_evaluation_windows_tile_the_text_in_order() -> None:
    windows = evaluation_windows(torch.arange(103), 10)
    assert torch.equal(windows.flatten(), torch.arange(100))
    assert len(evaluation_windows(torch.arange(103), 10, max_windows=4)) == 4


def test_without_eval_text_the_tail_is_held_out(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.helpers.language_models import llama_folder

    folder = llama_folder(tmp_path)
    tokens = read_tokens(TextConfig(str(folder / "text.txt"), None, str(folder), 16))
    whole = read_tokens(
        TextConfig(str(folder / "text.txt"), str(folder / "text.txt"), str(folder), 16)
    )
    cut = len(tokens.calibration)
    assert torch.equal(torch.cat([tokens.calibration, tokens.evaluation]), whole.calibration)
    assert 0.85 < cut / len(whole.calibration) < 0.95
    with pytest.raises(UserError, match="not more than one window"):
        read_tokens(TextConfig(str(folder / "text.txt"), None, str(folder), 10**6))


def test_tokenizing_a_chunk_of_lines_at_a_time_gives_the_whole_texts_ids(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from tests.helpers.language_models import llama_folder

    folder = llama_folder(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = (folder / "text.txt").read_text()
    whole = torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
    for chunk_chars in (1, 37, 1000, len(text) + 1):
        assert torch.equal(encode_text(tokenizer, text, chunk_chars), whole)
