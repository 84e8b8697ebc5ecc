"""Strided 2-D conv encoder and the mirrored decoder for images, and a pass-through quantizer.

Shapes: Encoder2d (B, C, H, W) -> (B, D, H / 2^n, W / 2^n), n = ``downsamples`` (28x28 -> 7x7,
32x32 -> 8x8 with n = 2); Decoder2d back to (B, C, H, W). With ``global_code`` the grid is
flattened into one D-vector per image, (B, D, 1, 1), and the decoder expands it again.

The decoder ends in a sigmoid, so images come out in [0, 1] like the data; train it with MSE
(a Bernoulli/BCE likelihood suits binary MNIST but not grayscale KMNIST or RGB). Widths double
after every stride, as in the audio encoder, so most channels sit on the small grid
(arXiv:1711.00937 §4.1 uses two stride-2 4x4 convs and residual 3x3 blocks the same way).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqaudio.errors import VqaudioError
from vqaudio.quantizer import Quantized


def _widths(channels: int, downsamples: int) -> list[int]:
    return [channels * 2**i for i in range(downsamples + 1)]


def _grid_size(image_size: int, downsamples: int) -> int:
    if image_size % 2**downsamples:
        raise ValueError(f"image_size {image_size} must be a multiple of 2^downsamples = {2**downsamples}")
    return image_size // 2**downsamples


class ResidualBlock2d(nn.Module):
    """ELU -> 3x3 conv -> ELU -> 1x1 conv, added to the input; size-preserving."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.ELU(), nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class Encoder2d(nn.Module):
    """(B, in_channels, S, S) -> (B, latent_dim, S / 2^downsamples, ...), or (B, latent_dim, 1, 1)
    with ``global_code`` (which fixes the input to ``image_size`` x ``image_size``)."""

    def __init__(self, in_channels: int, channels: int, downsamples: int, latent_dim: int,
                 res_blocks: int, global_code: bool = False, image_size: int = 28):
        super().__init__()
        widths = _widths(channels, downsamples)
        self.grid = _grid_size(image_size, downsamples)
        self.global_code, self.image_size = global_code, image_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for i in range(downsamples):
            # Kernel 4, stride 2, padding 1 halves the size exactly (28 -> 14 -> 7).
            layers += [nn.ELU(), nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1)]
            layers += [ResidualBlock2d(widths[i + 1]) for _ in range(res_blocks)]
        layers.append(nn.ELU())
        self.net = nn.Sequential(*layers)
        if global_code:  # one code per image: the whole grid -> one D-vector
            self.out: nn.Module = nn.Sequential(nn.Flatten(), nn.Linear(widths[-1] * self.grid**2, latent_dim))
        else:
            self.out = nn.Conv2d(widths[-1], latent_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.global_code and x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"this encoder takes {self.image_size}x{self.image_size} images, got {x.shape[-1]}x{x.shape[-2]}")
        z = self.out(self.net(x))
        return z[:, :, None, None] if self.global_code else z  # (B, D, h, w)


class Decoder2d(nn.Module):
    """The mirror of :class:`Encoder2d`: (B, latent_dim, h, w) -> (B, out_channels, 2^n h, 2^n w)
    in [0, 1]; with ``global_code``, (B, latent_dim, 1, 1) -> (B, out_channels, image_size, ...)."""

    def __init__(self, out_channels: int, channels: int, downsamples: int, latent_dim: int,
                 res_blocks: int, global_code: bool = False, image_size: int = 28, input_norm: bool = False):
        super().__init__()
        widths = _widths(channels, downsamples)
        self.grid = _grid_size(image_size, downsamples)
        self.global_code, self.input_norm = global_code, input_norm
        if global_code:  # one D-vector -> the whole grid
            self.inp: nn.Module = nn.Linear(latent_dim, widths[-1] * self.grid**2)
        else:
            self.inp = nn.Conv2d(latent_dim, widths[-1], 3, padding=1)
        layers: list[nn.Module] = []
        for i in reversed(range(downsamples)):
            layers += [ResidualBlock2d(widths[i + 1]) for _ in range(res_blocks)]
            # Kernel 4, stride 2, padding 1 doubles the size exactly (7 -> 14 -> 28).
            layers += [nn.ELU(), nn.ConvTranspose2d(widths[i + 1], widths[i], 4, stride=2, padding=1)]
        layers += [nn.ELU(), nn.Conv2d(widths[0], out_channels, 3, padding=1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        if self.input_norm:
            # Each latent at unit RMS: the commitment loss shrinks the encoder's output (150x in
            # mean square on KMNIST), and a decoder reading it raw must grow its first weights
            # to match, which Adam does slowly; normalised, it learns as fast as an autoencoder's.
            z = z / z.pow(2).mean(tuple(range(1, z.dim())), keepdim=True).add(1e-8).sqrt()
        if self.global_code:
            x = self.inp(z.flatten(1)).view(len(z), -1, self.grid, self.grid)  # (B, C, g, g)
        else:
            x = self.inp(z)
        return self.net(x)


class NoQuantizer(nn.Module):
    """Passes z (..., D) through unchanged: the same encoder and decoder become a plain
    autoencoder, the continuous baseline a VQ-VAE of the same shape is compared with."""

    def forward(self, z: Tensor) -> Quantized:
        zero = z.new_zeros(())
        codes = torch.zeros(z.shape[:-1], dtype=torch.long, device=z.device)  # (...) no codes
        return Quantized(z, codes, zero, zero.clone(), torch.zeros((), dtype=torch.long, device=z.device))

    def lookup(self, codes: Tensor) -> Tensor:
        raise VqaudioError("a plain autoencoder has no codes to decode; train a VQ-VAE (quantizer on) to use codes")
