"""Discriminators for adversarial codec training.

A multi-scale STFT discriminator (arXiv:2210.13438 EnCodec §3.4): one small 2-D conv net per
STFT resolution, each looking at the real and imaginary parts of the complex spectrogram, so
it judges phase as well as magnitude. EnCodec's listening test ranked it above MSD and MPD
alone (MUSHRA 77.5 vs 62.9 / 60.7).

forward(x) on a (B, 1, T) waveform returns, per scale, (logits, features): logits
(B, 1, frames', bins') and the list of intermediate activations used for feature matching.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class STFTDiscriminator(nn.Module):
    """One resolution: complex STFT (n_fft, hop n_fft / 4) -> 2-D convs over (time, frequency),
    strided along frequency only, dilated along time (EnCodec's layout)."""

    def __init__(self, n_fft: int, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)):
        super().__init__()
        self.n_fft, self.hop = n_fft, n_fft // 4
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [weight_norm(nn.Conv2d(2, channels, (3, 9), padding=(1, 4)))]
        for d in dilations:
            layers.append(weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2),
                                                dilation=(d, 1), padding=(d, 4))))
        layers.append(weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))))
        self.convs = nn.ModuleList(layers)
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        with torch.autocast(x.device.type, enabled=False):
            spec = torch.stft(x.reshape(-1, x.shape[-1]).float(), self.n_fft, self.hop,
                              window=self.window, center=True, pad_mode="constant", return_complex=True)
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (B, 2, frames, bins)
        features = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            features.append(h)
        return self.post(h), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """One :class:`STFTDiscriminator` per FFT size (defaults for 8 kHz: 128, 256, 512 samples,
    i.e. 16-64 ms windows, the range EnCodec's 128-2048 covers at 24 kHz scaled to our rate)."""

    def __init__(self, fft_sizes: Sequence[int] = (128, 256, 512), channels: int = 32):
        super().__init__()
        self.discriminators = nn.ModuleList(STFTDiscriminator(n, channels) for n in fft_sizes)

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(x) for d in self.discriminators]
