"""Token windows of a text file, for a causal language model (``data.source=text``).

Calibration draws ``data.calibration.size`` windows of ``data.seq_len`` tokens at random
(seeded) from ``data.text``; evaluation cuts ``data.eval_text`` into consecutive windows (the
perplexity text). Without ``data.eval_text``, the last tenth of ``data.text``'s tokens is held
out for evaluation and calibration draws from the rest, so the two never overlap. Every window
has the same length: the walk replays a decoder layer's rotary embeddings and positions,
which depend on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaround_lightning.core.errors import UserError

__all__ = [
    "TextConfig",
    "TokenText",
    "calibration_windows",
    "encode_text",
    "evaluation_windows",
    "read_tokens",
]

log = logging.getLogger(__name__)

#: The share of ``data.text`` held out for evaluation when no ``data.eval_text`` is given.
HELD_OUT = 0.1
#: Characters per tokenizer call: a fast tokenizer keeps every token's string and offsets until
#: the call returns, about 500 bytes a token, so one call on a 4 MB text peaks 0.67 GiB higher.
CHUNK_CHARS = 2**18


@dataclass(frozen=True)
class TextConfig:
    """Where a language model's calibration and evaluation tokens come from.

    Attributes:
        text: The calibration text file.
        eval_text: The held-out text file (None: the last tenth of ``text``).
        tokenizer: A folder or hub id ``AutoTokenizer`` loads (usually the model's folder).
        seq_len: Tokens per window.
    """

    text: str
    eval_text: str | None
    tokenizer: str
    seq_len: int


@dataclass(frozen=True)
class TokenText:
    """The token ids of the calibration and evaluation text, 1-D int64."""

    calibration: torch.Tensor
    evaluation: torch.Tensor


def _tokenizer(name: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover - transformers is a dependency of the hf extra
        raise UserError("data.source=text needs transformers: pip install transformers") from None
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise UserError(
            f"data.tokenizer={name} is not a tokenizer this machine can load ({first}); pass the "
            "model's folder (data.tokenizer=PATH)"
        ) from None


def _read(path: str, setting: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{setting}={path} is not a file: pass an existing text file")
    return file.read_text(encoding="utf-8", errors="replace")


def encode_text(tokenizer: Any, text: str, chunk_chars: int = CHUNK_CHARS) -> torch.Tensor:
    r"""``text``'s token ids, 1-D int64, tokenized a chunk of lines at a time.

    Chunks end at a line break, so a token never spans two of them; the peak memory is the
    tokenizer's for one chunk, not for the whole text.

    Example:
        >>> class Bytes:
        ...     def __call__(self, text):
        ...         return {"input_ids": list(text.encode())}
        >>> encode_text(Bytes(), "ab\ncd\n", chunk_chars=1).tolist()
        [97, 98, 10, 99, 100, 10]
    """
    parts, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)
        end = len(text) if end < 0 else end + 1
        parts.append(torch.tensor(tokenizer(text[start:end])["input_ids"], dtype=torch.long))
        start = end
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def read_tokens(config: TextConfig) -> TokenText:
    """Tokenize the calibration and evaluation text (the held-out tail without ``eval_text``).

    Raises:
        UserError: A missing file or tokenizer, or too little text for one window.
    """
    tokenizer = _tokenizer(config.tokenizer)

    tokens = encode_text(tokenizer, _read(config.text, "data.text"))
    if config.eval_text is not None:
        evaluation = encode_text(tokenizer, _read(config.eval_text, "data.eval_text"))
    else:
        cut = int(len(tokens) * (1 - HELD_OUT))
        tokens, evaluation = tokens[:cut], tokens[cut:]
        log.info("data.eval_text=null: the last %d tokens of data.text held out", len(evaluation))
    for name, ids in (("data.text", tokens), ("evaluation text", evaluation)):
        if len(ids) <= config.seq_len:
            raise UserError(
                f"{name} has {len(ids)} tokens, not more than one window of data.seq_len="
                f"{config.seq_len}: give more text or lower data.seq_len"
            )
    return TokenText(tokens, evaluation)


def calibration_windows(tokens: torch.Tensor, count: int, seq_len: int, seed: int) -> torch.Tensor:
    """``count`` windows ``(count, seq_len)`` at random starts in ``tokens`` (seeded).

    Example:
        >>> calibration_windows(torch.arange(100), 3, 8, seed=0).shape
        torch.Size([3, 8])
    """
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - seq_len + 1, (count,), generator=generator)
    return torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])


def evaluation_windows(
    tokens: torch.Tensor, seq_len: int, max_windows: int | None = None
) -> torch.Tensor:
    """Consecutive windows ``(M, seq_len)`` of ``tokens`` (the tail shorter than one dropped).

    Example:
        >>> evaluation_windows(torch.arange(20), 8).tolist()[1]
        [8, 9, 10, 11, 12, 13, 14, 15]
    """
    windows = tokens[: (len(tokens) // seq_len) * seq_len].reshape(-1, seq_len)
    return windows if max_windows is None else windows[:max_windows]
