"""Strided 1-D conv encoder and the mirrored decoder for waveforms.

Shapes: Encoder1d (B, 1, T) -> (B, D, T / hop); Decoder1d (B, D, T / hop) -> (B, 1, T).
The full-rate layers are narrow and the width doubles after every stride, so most of the
compute sits at the low frame rates (arXiv:2107.03312, arXiv:2210.13438 use the same shape).
"""

from __future__ import annotations

import torch
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


# -- Fourier-head decoder (arXiv:2306.00814 Vocos; WavTokenizer) ----------------------------------

class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k=7) -> LayerNorm -> 1x1 up (x mult) -> GELU -> 1x1 down, scaled and
    added to the input (arXiv:2201.03545, as used at the frame rate by Vocos); (B, C, F)."""

    def __init__(self, dim: int, mult: int = 3, layer_scale: float = 1e-2):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim * mult)
        self.down = nn.Linear(dim * mult, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).transpose(1, 2)  # (B, F, C): the linears act on channels
        y = self.down(F.gelu(self.up(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class ISTFT(nn.Module):
    """STFT analysis and its inverse with "same" padding: T samples <-> T / hop frames.

    torch.stft(center=True) gives T / hop + 1 frames; a decoder at the code frame rate has T / hop.
    Padding (n_fft - hop) / 2 on both sides instead gives exactly T / hop frames, and the inverse
    (windowed overlap-add, divided by the summed squared window) returns exactly T samples;
    ``inverse(analysis(x)) == x`` (tested). Vocos uses the same scheme.
    """

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        # A Hann window needs frames that overlap by at least half to be invertible everywhere.
        if (n_fft - hop) % 2 or n_fft < 2 * hop:
            raise ValueError(f"n_fft must be at least 2 x hop and n_fft - hop even, got n_fft={n_fft}, hop={hop}")
        self.n_fft, self.hop, self.pad = n_fft, hop, (n_fft - hop) // 2
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def analysis(self, x: Tensor) -> Tensor:
        """(B, T) with T a multiple of hop -> complex (B, n_fft // 2 + 1, T / hop)."""
        frames = F.pad(x, (self.pad, self.pad)).unfold(-1, self.n_fft, self.hop)  # (B, F, n_fft)
        return torch.fft.rfft(frames * self.window, dim=-1).transpose(1, 2)

    def forward(self, spec: Tensor) -> Tensor:
        """complex (B, n_fft // 2 + 1, frames) -> (B, frames * hop)."""
        frames = torch.fft.irfft(spec.transpose(1, 2), n=self.n_fft, dim=-1) * self.window  # (B, F, n_fft)
        n = frames.shape[1]
        length = (n - 1) * self.hop + self.n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        y = F.fold(frames.transpose(1, 2), **fold)[:, 0, 0]  # overlap-add
        envelope = F.fold(self.window.square().expand(1, n, -1).transpose(1, 2), **fold)[0, 0, 0]
        y, envelope = y[:, self.pad: length - self.pad], envelope[self.pad: length - self.pad]
        return y / envelope.clamp_min(1e-11)


def sharpen_spectrum(mag: Tensor, formant: float, harmonic: float) -> Tensor:
    """A postfilter for a predicted magnitude spectrum (B, bins, F): deepen its valleys.

    A decoder trained on reconstruction losses regresses towards the mean and fills the
    valleys between formants (and between harmonics) with noise; a listener and a recogniser
    hear the formants' contrast. As Codec2's LPC postfilter does, the log spectral envelope
    (a moving average over about a twelfth of the band: wider than the harmonic spacing of any
    voice, narrower than the formant spacing) is raised to the power ``1 + formant`` with its
    straight-line tilt left alone, so peaks rise and valleys sink without making the sound
    brighter or duller; ``harmonic`` does the same to the fine structure (the log magnitude
    less its envelope). Each frame keeps its energy. 0 and 0 return ``mag`` itself.
    """
    if not formant and not harmonic:
        return mag
    bins = mag.shape[1]
    k = bins // 24 * 2 + 1  # odd, about bins / 12: 11 of 129 bins (344 Hz at 8 kHz, n_fft 256)
    log_mag = mag.clamp_min(1e-7).log().transpose(1, 2)  # (B, F, bins)
    envelope = F.avg_pool1d(F.pad(log_mag, (k // 2, k // 2), mode="replicate"), k, stride=1)
    # The envelope's deviation from its mean and its tilt (least-squares line over frequency).
    x = torch.linspace(-1.0, 1.0, bins, device=mag.device, dtype=log_mag.dtype)
    deviation = envelope - envelope.mean(-1, keepdim=True)
    deviation = deviation - (deviation * x).sum(-1, keepdim=True) / x.square().sum() * x
    sharpened = (log_mag + formant * deviation + harmonic * (log_mag - envelope)).exp().transpose(1, 2)
    energy_ratio = mag.square().sum(1, keepdim=True) / sharpened.square().sum(1, keepdim=True).clamp_min(1e-20)
    return sharpened * energy_ratio.sqrt()


class FourierDecoder(nn.Module):
    """Codes at the frame rate -> STFT magnitude and phase -> inverse STFT -> waveform.

    All layers run at the frame rate (no full-rate convolutions): a ConvNeXt stack predicts,
    per frame, log magnitude and phase of the n_fft // 2 + 1 bins (arXiv:2306.00814 §3).
    (B, latent_dim, F) -> (B, 1, F * hop).
    """

    def __init__(self, latent_dim: int, hop: int, dim: int = 256, layers: int = 8, n_fft: int = 0,
                 postfilter: float = 0.0, postfilter_harmonic: float = 0.0, postfilter_max_levels: int = 0):
        super().__init__()
        n_fft = n_fft or 4 * hop
        # sharpen_spectrum's amounts, applied in eval mode only (training fits the plain spectrum)
        # and, with postfilter_max_levels > 0, only to codes of at most that many levels: finer
        # codes keep the contrast themselves, and sharpening them costs STOI.
        self.postfilter, self.postfilter_harmonic = postfilter, postfilter_harmonic
        self.postfilter_max_levels = postfilter_max_levels
        self.bins = n_fft // 2 + 1
        self.embed = nn.Conv1d(latent_dim, dim, 7, padding=3)
        self.norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim) for _ in range(layers))
        self.final_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2 * self.bins)
        self.istft = ISTFT(n_fft, hop)

    def spectrum(self, z: Tensor, levels: int | None = None) -> tuple[Tensor, Tensor]:
        """(magnitude, phase), each (B, bins, F): what the inverse STFT turns into the waveform
        (in eval mode the magnitude after the postfilter; ``levels``: how many code levels made
        ``z``, None = unknown, treated as coarse)."""
        x = self.norm(self.embed(z).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.final_norm(x.transpose(1, 2))).transpose(1, 2)  # (B, 2 * bins, F)
        log_mag, phase = out.float().split(self.bins, dim=1)
        # exp keeps magnitudes positive; the clamp keeps an early step from overflowing.
        mag = log_mag.clamp(max=6.0).exp()
        if not self.training and (not self.postfilter_max_levels or (levels or 0) <= self.postfilter_max_levels):
            mag = sharpen_spectrum(mag, self.postfilter, self.postfilter_harmonic)
        return mag, phase

    def forward(self, z: Tensor, levels: int | None = None) -> Tensor:
        return self.istft(torch.polar(*self.spectrum(z, levels))).unsqueeze(1)
