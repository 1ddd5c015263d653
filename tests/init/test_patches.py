"""Windows the layer sees, of the normalised input; sampling bounded by ``samples``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from viscope.init.patches import all_windows, layer_input, padded, sample_patches, windows_at
from viscope.models import Normalized


def hand_windows(x: np.ndarray, k: int, s: int, p: int, d: int) -> np.ndarray:
    """Windows of a zero-padded input by explicit loops, ordered image, row, column."""
    b, c, h, w = x.shape
    xp = np.zeros((b, c, h + 2 * p, w + 2 * p))
    xp[:, :, p:p + h, p:p + w] = x
    out = []
    for i in range(b):
        for y in range(0, h + 2 * p - d * (k - 1), s):
            for z in range(0, w + 2 * p - d * (k - 1), s):
                win = np.zeros((c, k, k))
                for dy in range(k):
                    for dx in range(k):
                        win[:, dy, dx] = xp[i, :, y + dy * d, z + dx * d]
                out.append(win.reshape(-1))
    return np.array(out)


def test_windows_equal_a_hand_loop_and_the_convolution() -> None:
    x = torch.rand(2, 3, 9, 8)
    for k, s, p, d in [(3, 2, 1, 1), (4, 4, 0, 1), (3, 1, 2, 2)]:
        conv = nn.Conv2d(3, 5, k, stride=s, padding=p, dilation=d, bias=False)
        got = all_windows(x, conv)
        np.testing.assert_allclose(got.numpy(), hand_windows(x.numpy(), k, s, p, d), atol=1e-6)
        out = conv(x)  # the windows are what the conv multiplies
        flat = (got @ conv.weight.detach().flatten(1).T).reshape(2, -1, 5)
        np.testing.assert_allclose(flat.transpose(1, 2).numpy(),
                                   out.detach().flatten(2).numpy(), atol=1e-5)
        index = torch.tensor([0, 3, len(got) - 1, 7])
        np.testing.assert_allclose(windows_at(padded(x, conv), conv, index).numpy(),
                                   got[index].numpy())


def test_patches_are_of_the_normalised_input() -> None:
    conv = nn.Conv2d(3, 4, 2, stride=2)
    model = Normalized(nn.Sequential(conv, nn.ReLU()), mean=(0.5,), std=(0.25,))
    x = torch.rand(2, 3, 4, 4)
    seen = layer_input(model, conv, x)
    np.testing.assert_allclose(seen.numpy(), ((x - 0.5) / 0.25).numpy(), atol=1e-6)
    assert not conv._forward_pre_hooks  # the hook is gone after the call


class Images(Dataset):
    """``count`` random images made on the fly; counts the reads."""

    def __init__(self, count: int, size: int = 8) -> None:
        self.count, self.size, self.reads = count, size, 0

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        self.reads += 1
        g = torch.Generator().manual_seed(i)
        return torch.rand(3, self.size, self.size, generator=g), 0


def test_sample_holds_at_most_samples_and_is_reproducible() -> None:
    conv = nn.Conv2d(3, 4, 2, stride=2)
    model = Normalized(conv, mean=(0.5,), std=(0.25,))
    data = Images(500)
    patches, counts = sample_patches(model, conv, data, samples=50, seed=1, batch_size=32,
                                     images=300)
    assert patches.shape == (50, 12) and counts["windows"] == 300 * 16
    assert data.reads == 300
    # the peak counted is the buffer plus one batch's keys and windows, not the dataset's
    assert counts["peak_bytes"] <= 50 * 12 * 4 + 2 * (50 + 32 * 16) * 8 + 32 * 16 * 12 * 4
    # every sampled row is a real window of some image, normalised
    allw = torch.cat([all_windows((data[i][0][None] - 0.5) / 0.25, conv) for i in range(500)])
    dist = torch.cdist(patches, allw, compute_mode="donot_use_mm_for_euclid_dist").min(1).values
    assert float(dist.max()) < 1e-5
    again, _ = sample_patches(model, conv, data, samples=50, seed=1, batch_size=32, images=300)
    assert torch.equal(patches, again)
    # default: min(len, samples) images, so reads are bounded by samples too
    data.reads = 0
    sample_patches(model, conv, data, samples=40, seed=0, batch_size=16)
    assert data.reads == 40


def test_sample_is_uniform_over_windows() -> None:
    """Each of 64 windows (16 images × 4) is kept with probability samples / windows."""
    conv = nn.Conv2d(1, 1, 2, stride=2)
    model = Normalized(conv)

    class Index(Dataset):  # window value = its global number
        def __len__(self) -> int:
            return 16

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            img = torch.zeros(1, 4, 4)
            for cell in range(4):
                y, x = divmod(cell, 2)
                img[0, 2 * y:2 * y + 2, 2 * x:2 * x + 2] = 4 * i + cell
            return img, 0

    hits = torch.zeros(64)
    for seed in range(300):
        patches, _ = sample_patches(model, conv, Index(), samples=16, seed=seed, batch_size=5,
                                    images=16)
        hits[patches[:, 0].long()] += 1
    freq = hits / 300
    assert abs(float(freq.mean()) - 0.25) < 1e-6 and float((freq - 0.25).abs().max()) < 0.1
