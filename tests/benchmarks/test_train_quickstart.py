"""Tests for the quickstart preprocessing."""

from __future__ import annotations

import numpy as np
import torch

from adaround_lightning.benchmarks.train_quickstart import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    quickstart_transform_tensor,
)


def test_quickstart_transform_matches_float64_reference() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)

    out = quickstart_transform_tensor(torch.from_numpy(images))
    assert out.shape == (6, 3, 32, 32)
    assert out.dtype == torch.float32

    # Independent float64 recomputation: scale, zero-pad before normalizing, normalize.
    scaled = images.astype(np.float64) / 255.0
    padded = np.zeros((6, 32, 32), dtype=np.float64)
    padded[:, 2:30, 2:30] = scaled
    expected = (padded - FASHION_MNIST_MEAN) / FASHION_MNIST_STD

    got = out.double().numpy()
    for channel in range(3):
        np.testing.assert_allclose(got[:, channel], expected, rtol=0, atol=1e-5)
    # Channels are identical copies of the grey image.
    np.testing.assert_array_equal(got[:, 0], got[:, 1])
    np.testing.assert_array_equal(got[:, 0], got[:, 2])
    # The 2-pixel border equals (0 - mean) / std.
    border = -FASHION_MNIST_MEAN / FASHION_MNIST_STD
    mask = np.ones((32, 32), dtype=bool)
    mask[2:30, 2:30] = False
    np.testing.assert_allclose(got[:, :, mask], border, rtol=0, atol=1e-6)


def test_quickstart_transform_extremes() -> None:
    images = torch.stack([torch.zeros(28, 28), torch.full((28, 28), 255.0)]).to(torch.uint8)
    out = quickstart_transform_tensor(images)
    torch.testing.assert_close(
        out[0, :, 2:30, 2:30],
        torch.full((3, 28, 28), -FASHION_MNIST_MEAN / FASHION_MNIST_STD),
    )
    torch.testing.assert_close(
        out[1, :, 2:30, 2:30],
        torch.full((3, 28, 28), (1.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD),
    )
