"""Strided 1-D conv encoder and the mirrored decoder for waveforms.

Shapes: Encoder1d (B, 1, T) -> (B, D, T / hop); Decoder1d (B, D, T / hop) -> (B, 1, T).
The full-rate layers are narrow and the width doubles after every stride, so most of the
compute sits at the low frame rates (arXiv:2107.03312, arXiv:2210.13438 use the same shape).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _widths(channels: int, n_strides: int, max_channels: int) -> list[int]:
    return [min(channels * 2**i, max_channels) for i in range(n_strides + 1)]


class ResidualUnit(nn.Module):
    """ELU -> dilated conv (k=3) -> ELU -> 1x1 conv, added to the input; length-preserving."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(),
            nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation),
            nn.ELU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _residual_stack(channels: int, blocks: int) -> list[nn.Module]:
    return [ResidualUnit(channels, 3**i) for i in range(blocks)]


class Downsample(nn.Module):
    """Conv with kernel 2s and stride s, padded so that T -> T / s exactly."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.pad = (stride // 2, stride - stride // 2)
        self.conv = nn.Conv1d(c_in, c_out, 2 * stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(F.elu(x), self.pad))


class Upsample(nn.Module):
    """Transposed conv with kernel 2s and stride s, cropped so that T -> T * s exactly."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.crop = (stride // 2, stride - stride // 2)
        self.conv = nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(F.elu(x))  # length T * s + s
        return y[..., self.crop[0]: y.shape[-1] - self.crop[1]]


class Encoder1d(nn.Module):
    def __init__(self, channels: int, strides: list[int], latent_dim: int, res_blocks: int,
                 max_channels: int = 256):
        super().__init__()
        widths = _widths(channels, len(strides), max_channels)
        layers: list[nn.Module] = [nn.Conv1d(1, widths[0], 7, padding=3)]
        for i, stride in enumerate(strides):
            # Residual blocks after each downsampling: none run at the full sample rate.
            layers.append(Downsample(widths[i], widths[i + 1], stride))
            layers += _residual_stack(widths[i + 1], res_blocks)
        layers += [nn.ELU(), nn.Conv1d(widths[-1], latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Decoder1d(nn.Module):
    def __init__(self, channels: int, strides: list[int], latent_dim: int, res_blocks: int,
                 max_channels: int = 256):
        super().__init__()
        widths = _widths(channels, len(strides), max_channels)
        layers: list[nn.Module] = [nn.Conv1d(latent_dim, widths[-1], 7, padding=3)]
        for i, stride in reversed(list(enumerate(strides))):
            layers += _residual_stack(widths[i + 1], res_blocks)
            layers.append(Upsample(widths[i + 1], widths[i], stride))
        layers += [nn.ELU(), nn.Conv1d(widths[0], 1, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)
