"""One contract for every prior: the logits at flattened position i depend only on the codes
at positions before i (row-major order over the code tensor's shape)."""

import pytest
import torch
from torch.testing import assert_close

from vqaudio.priors.pixelcnn import GatedPixelCNN
from vqaudio.priors.wavenet import WaveNetPrior


def wavenet():
    prior = WaveNetPrior(16, levels=3, channels=8, cycles=2, layers_per_cycle=3, num_labels=3)
    return prior, prior.heads, (14, 3)  # codes (B, T, L)


def wavenet_frame_stack():  # 2 code frames a step, 13 frames: the last step padded
    prior = WaveNetPrior(16, levels=2, channels=8, cycles=2, layers_per_cycle=3, num_labels=3, frame_stack=2)
    return prior, prior.heads, (13, 2)


def pixelcnn():
    prior = GatedPixelCNN(16, channels=8, layers=8, num_labels=3)
    return prior, [prior.head], (7, 7)  # codes (B, H, W), raster order


PRIORS = {"wavenet": wavenet, "wavenet_frame_stack": wavenet_frame_stack, "pixelcnn": pixelcnn}


def randomise(heads) -> None:
    """A zero-initialised output head makes every logit equal and hides any leak."""
    for head in heads:
        last = head[-1] if isinstance(head, torch.nn.Sequential) else head
        torch.nn.init.normal_(last.weight, std=0.5)
        torch.nn.init.normal_(last.bias, std=0.5)


@pytest.mark.parametrize("name", list(PRIORS))
def test_logits_depend_only_on_earlier_positions(name):
    torch.manual_seed(0)
    prior, heads, shape = PRIORS[name]()
    randomise(heads)
    prior.eval()
    batch, k = 2, prior.num_codes
    n = int(torch.tensor(shape).prod())
    codes = torch.randint(k, (batch, *shape))
    labels = torch.tensor([0, 2])
    base = prior(codes, labels).reshape(batch, n, k)
    for i in sorted({0, 1, 2, shape[-1], n // 2, n - 2, n - 1}):
        changed = codes.clone().view(batch, n)
        changed[:, i:] = (changed[:, i:] + torch.randint(1, k, changed[:, i:].shape)) % k
        out = prior(changed.view_as(codes), labels).reshape(batch, n, k)
        assert_close(out[:, : i + 1], base[:, : i + 1], msg=f"position <= {i} saw a later code")
        if i < n - 1:  # the test can fail: later positions do see the change
            assert not torch.allclose(out[:, i + 1:], base[:, i + 1:])
    other = prior(codes, torch.tensor([1, 1])).reshape(batch, n, k)
    assert not torch.allclose(other, base)  # the label reaches the logits
