"""Reconstruction losses for waveforms ``(B, 1, T)``: L1, multi-resolution STFT and multi-scale
mel (as in DAC, arXiv:2306.06546 §3.4), mel-cepstral and relative phase, named and weighted
by a dict.

Every loss runs in float32 with autocast off: log magnitudes of half-precision spectra lose
the quiet bins that the log is there to weigh. Windows and mel filterbanks are non-persistent
buffers, so they follow ``.to(device)`` but never enter a checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

TERMS = ("l1", "stft", "mel", "mfcc", "phase")
LOG_FLOOR = 1e-5  # magnitudes are clamped here before the log: silence costs a bounded amount


def _sum_across_ranks(t: Tensor, across_ranks: bool) -> Tensor:
    """``t`` summed over the ranks of a torchrun job, differentiably. Each rank's gradient then
    holds world-size times its share of the global term's gradient, and DistributedDataParallel
    divides by the world size: the gradient of the term on the global batch, exactly."""
    import torch.distributed as dist

    if not (across_ranks and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def _sqrt0(t: Tensor) -> Tensor:
    """sqrt with gradient 0 (not inf) at 0, like a norm's: a silent batch stays finite."""
    positive = t > 0
    return torch.where(positive, t.clamp_min(1e-30).sqrt(), torch.zeros_like(t))


def _frames(x: Tensor) -> Tensor:
    """(B, 1, T) or (..., T) -> (N, T) float32."""
    return x.reshape(-1, x.shape[-1]).float()


class _Magnitude(nn.Module):
    """|STFT| of (N, T) waveforms -> (N, n_fft // 2 + 1, frames), Hann window, hop given
    (``complex``: the STFT itself, for the phase term)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        if n_fft < 2 or hop < 1:
            raise ValueError(f"n_fft must be >= 2 and hop >= 1, got n_fft={n_fft}, hop={hop}")
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def complex(self, x: Tensor) -> Tensor:
        # Zero (not reflect) padding at the edges: works for clips shorter than n_fft / 2.
        return torch.stft(x, self.n_fft, self.hop, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.complex(x).abs()  # autograd takes d|z|/dz = 0 at z = 0: silence gives no NaN


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """(n_fft // 2 + 1, n_mels) triangular HTK-mel filters over 0 .. sample_rate / 2, peak 1.

    Raises ValueError when a filter covers no FFT bin (too many mels for this n_fft and rate).
    """
    with warnings.catch_warnings():  # torchaudio only warns about empty filters; we raise below
        warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero")
        fb = torchaudio.functional.melscale_fbanks(
            n_fft // 2 + 1, f_min=0.0, f_max=sample_rate / 2, n_mels=n_mels,
            sample_rate=sample_rate, norm=None, mel_scale="htk")
    empty = int((fb.max(dim=0).values == 0).sum())
    if empty:
        raise ValueError(f"{n_mels} mels with n_fft={n_fft} at {sample_rate} Hz leave {empty} "
                         "filters without an FFT bin: use fewer mels or a larger n_fft")
    return fb


class _Spectral(nn.Module):
    """Holds one ``_Magnitude`` per resolution; forward = ``from_magnitudes`` on both inputs.
    ReconstructionLoss hands the same magnitudes to every term at a resolution they share,
    so each waveform is transformed once per resolution and step."""

    specs: nn.ModuleList

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return [(s.n_fft, s.hop) for s in self.specs]

    def magnitudes(self, x: Tensor) -> list[Tensor]:
        """(B, 1, T) -> one (N, F, frames) float32 magnitude per resolution."""
        x = _frames(x)
        return [spec(x) for spec in self.specs]

    def from_magnitudes(self, s_hat: list[Tensor], s: list[Tensor], across_ranks: bool = False) -> Tensor:
        raise NotImplementedError

    def forward(self, x_hat: Tensor, x: Tensor, across_ranks: bool = False) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.from_magnitudes(self.magnitudes(x_hat), self.magnitudes(x), across_ranks)


class MultiResolutionSTFTLoss(_Spectral):
    """Mean over FFT sizes of spectral convergence + L1 of log magnitudes.

    arXiv:1910.11480 (Parallel WaveGAN) §2.3. Hop = ``n_fft * hop_fraction``, Hann window.
    forward(x_hat, x): two (B, 1, T) waveforms -> () scalar, 0 for identical inputs.
    """

    def __init__(self, fft_sizes: Sequence[int] = (128, 256, 512), hop_fraction: float = 0.25):
        super().__init__()
        if not fft_sizes:
            raise ValueError("fft_sizes must name at least one FFT size")
        self.specs = nn.ModuleList(_Magnitude(n, max(1, int(n * hop_fraction))) for n in fft_sizes)

    def from_magnitudes(self, s_hat: list[Tensor], s: list[Tensor], across_ranks: bool = False) -> Tensor:
        total = 0.0
        for a_hat, a in zip(s_hat, s):  # (N, F, frames) each
            # ||S - Ŝ||_F / ||S||_F over the whole batch; the floor keeps silence finite. With
            # ``across_ranks`` (training under torchrun) the batch is the global batch.
            err, ref = _sum_across_ranks(torch.stack([(a - a_hat).square().sum(), a.square().sum()]), across_ranks)
            sc = _sqrt0(err) / _sqrt0(ref).clamp_min(1e-7)
            log_mag = F.l1_loss(a_hat.clamp_min(LOG_FLOOR).log(), a.clamp_min(LOG_FLOOR).log())
            total = total + sc + log_mag
        return total / len(s)


class MultiScaleMelLoss(_Spectral):
    """Mean over scales of the L1 distance between log mel magnitude spectrograms.

    Scale i uses ``fft_sizes[i]`` (hop n_fft / 4) and ``n_mels[i]`` HTK-mel filters over
    0 .. sample_rate / 2; every filter must cover an FFT bin (checked here).
    forward(x_hat, x): two (B, 1, T) waveforms -> () scalar, 0 for identical inputs.
    """

    def __init__(self, sample_rate: int, fft_sizes: Sequence[int] = (128, 256, 512),
                 n_mels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if len(fft_sizes) != len(n_mels) or not fft_sizes:
            raise ValueError(f"fft_sizes {tuple(fft_sizes)} and n_mels {tuple(n_mels)} must be "
                             "non-empty and of the same length (one mel count per FFT size)")
        self.specs = nn.ModuleList(_Magnitude(n, max(1, n // 4)) for n in fft_sizes)
        for i, (n_fft, m) in enumerate(zip(fft_sizes, n_mels)):
            self.register_buffer(f"fbank{i}", mel_filterbank(n_fft, m, sample_rate),
                                 persistent=False)

    def from_magnitudes(self, s_hat: list[Tensor], s: list[Tensor], across_ranks: bool = False) -> Tensor:
        total = 0.0  # a mean over elements: the mean over ranks (DDP's) is the global batch's
        for i, (a_hat, a) in enumerate(zip(s_hat, s)):
            fb = getattr(self, f"fbank{i}")  # (F, n_mels)
            # (N, F, frames) -> (N, frames, n_mels): one matmul applies every filter.
            m_hat = (a_hat.transpose(1, 2) @ fb).clamp_min(LOG_FLOOR).log()
            m = (a.transpose(1, 2) @ fb).clamp_min(LOG_FLOOR).log()
            total = total + F.l1_loss(m_hat, m)
        return total / len(s)


class CepstralLoss(_Spectral):
    """L1 distance between mel-frequency cepstra (MFCCs): what a speech recogniser's front end
    keeps of the spectrum (the smooth envelope that tells the phones apart), not its harmonics.

    One resolution, ``n_fft`` with hop n_fft / 4; ``n_mels`` HTK-mel filters over 0 ..
    sample_rate / 2, log, orthonormal DCT-II, the first ``n_ceps`` coefficients (c0, the
    log energy, included). 13 cepstra of 40 bands in 32-ms windows at 8 kHz (n_fft 256) are
    the classic front end (Davis & Mermelstein 1980; PocketSphinx's en-us model uses them).
    forward(x_hat, x): two (B, 1, T) waveforms -> () scalar, 0 for identical inputs.
    """

    def __init__(self, sample_rate: int, n_fft: int = 256, n_mels: int = 40, n_ceps: int = 13):
        super().__init__()
        if not 1 <= n_ceps <= n_mels:
            raise ValueError(f"n_ceps must be between 1 and n_mels ({n_mels}), got {n_ceps}")
        self.specs = nn.ModuleList([_Magnitude(n_fft, max(1, n_fft // 4))])
        self.register_buffer("fbank", mel_filterbank(n_fft, n_mels, sample_rate), persistent=False)
        self.register_buffer("dct", torchaudio.functional.create_dct(n_ceps, n_mels, "ortho"),
                             persistent=False)  # (n_mels, n_ceps)

    def from_magnitudes(self, s_hat: list[Tensor], s: list[Tensor], across_ranks: bool = False) -> Tensor:
        (a_hat,), (a,) = s_hat, s  # (N, F, frames)
        c_hat = (a_hat.transpose(1, 2) @ self.fbank).clamp_min(LOG_FLOOR).log() @ self.dct
        c = (a.transpose(1, 2) @ self.fbank).clamp_min(LOG_FLOOR).log() @ self.dct
        return F.l1_loss(c_hat, c)  # a mean over elements, like the mel term


class RelativePhaseLoss(nn.Module):
    """How far the phase *differences* of the decoded STFT are from the original's: between
    neighbouring frames (each bin's instantaneous frequency) and neighbouring bins (group
    delay), as in APNet's anti-wrapping losses (arXiv:2305.09388 §2.3), here as 1 - cos of the
    difference, which needs no unwrapping and is smooth. A harmonic's phase advancing steadily
    from frame to frame is what makes it a clean partial rather than noise; the magnitude losses
    see none of it and a waveform L1 only its loudest part. Each difference is weighted by the
    original's amplitude there (the square root of the two magnitudes' product), so silence and
    noise, whose phase is arbitrary, weigh little. Mean over ``fft_sizes`` (hop n_fft / 4).
    forward(x_hat, x): two (B, 1, T) waveforms -> () scalar in [0, 2], 0 for identical inputs.
    """

    def __init__(self, fft_sizes: Sequence[int] = (128, 256, 512)):
        super().__init__()
        if not fft_sizes:
            raise ValueError("fft_sizes must name at least one FFT size")
        self.specs = nn.ModuleList(_Magnitude(n, max(1, n // 4)) for n in fft_sizes)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return [(s.n_fft, s.hop) for s in self.specs]

    @staticmethod
    def _term(y: Tensor, x: Tensor, dim: int, across_ranks: bool) -> Tensor:
        """Weighted mean of 1 - cos(phase step of y - phase step of x) along ``dim`` (over the
        global batch with ``across_ranks``)."""
        def step(z):
            a, b = z.narrow(dim, 1, z.shape[dim] - 1), z.narrow(dim, 0, z.shape[dim] - 1)
            return a * b.conj()
        sy, sx = step(y), step(x)
        ax = sx.abs()
        # Unit phasors u = s / |s|; |u_y - u_x|^2 / 2 = 1 - cos of the phase difference. The
        # floor under |s| keeps the gradient of a nearly silent bin bounded (and 0 stays 0 for
        # identical inputs).
        floor = 1e-3 * ax.mean().detach().clamp_min(1e-12)
        uy, ux = sy / sy.abs().clamp_min(floor), sx / ax.clamp_min(floor)
        err = 0.5 * (uy - ux).abs().square()
        w = ax.sqrt()
        num, den = _sum_across_ranks(torch.stack([(w * err).sum(), w.sum()]), across_ranks)
        return num / den.clamp_min(1e-12)

    def from_spectra(self, s_hat: list[Tensor], s: list[Tensor], across_ranks: bool = False) -> Tensor:
        """The term from complex STFTs (N, bins, frames), one pair per resolution."""
        total = 0.0
        for sy, sx in zip(s_hat, s):
            total = total + 0.5 * (self._term(sy, sx, 2, across_ranks) + self._term(sy, sx, 1, across_ranks))
        return total / len(s)

    def forward(self, x_hat: Tensor, x: Tensor, across_ranks: bool = False) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            y, x = _frames(x_hat), _frames(x)
            return self.from_spectra([s.complex(y) for s in self.specs], [s.complex(x) for s in self.specs],
                                     across_ranks)


class ReconstructionLoss(nn.Module):
    """Weighted sum of named reconstruction terms: ``l1`` (waveform), ``stft``, ``mel``, ``mfcc``,
    ``phase``.

    ``weights`` maps term names to weights; names left out weigh 0, and terms of weight 0 are
    neither built nor computed. forward(x_hat, x) on (B, 1, T) waveforms returns
    ``(total, terms)``: total = Σ weight · term, terms = {name: unweighted () scalar} for the
    non-zero terms only.
    """

    def __init__(self, sample_rate: int, weights: Mapping[str, float],
                 fft_sizes: Sequence[int] = (128, 256, 512), n_mels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss weight(s) {', '.join(unknown)}; "
                             f"valid names: {', '.join(TERMS)}")
        negative = [k for k, w in weights.items() if w < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {', '.join(negative)} < 0")
        self.weights = {k: float(w) for k in TERMS if (w := weights.get(k, 0.0)) != 0}
        if not self.weights:
            raise ValueError(f"every loss weight is 0: give at least one of {', '.join(TERMS)}")
        self.stft = MultiResolutionSTFTLoss(fft_sizes) if "stft" in self.weights else None
        self.mel = (MultiScaleMelLoss(sample_rate, fft_sizes, n_mels)
                    if "mel" in self.weights else None)
        self.mfcc = CepstralLoss(sample_rate) if "mfcc" in self.weights else None
        self.phase = RelativePhaseLoss(fft_sizes) if "phase" in self.weights else None

    def forward(self, x_hat: Tensor, x: Tensor, across_ranks: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        """``across_ranks``: called by every rank on its share of a global batch (training under
        torchrun), so batch-level terms are computed over the global batch."""
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} differ in shape")
        with torch.autocast(x.device.type, enabled=False):
            terms: dict[str, Tensor] = {}
            if "l1" in self.weights:
                terms["l1"] = F.l1_loss(x_hat.float(), x.float())
            # Every spectral term reads the STFTs at its resolutions (the phase term the complex
            # ones, the others their magnitudes); a resolution two terms share (by default stft,
            # mel and phase all three, mfcc the 256-point one) is transformed once per waveform.
            frames = (_frames(x_hat), _frames(x))
            spectra: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
            magnitudes: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
            for name in ("stft", "mel", "mfcc", "phase"):
                term = getattr(self, name)
                if term is None:
                    continue
                for spec in term.specs:
                    if (spec.n_fft, spec.hop) not in spectra:
                        spectra[spec.n_fft, spec.hop] = (spec.complex(frames[0]), spec.complex(frames[1]))
                if name == "phase":
                    s_hat, s = zip(*(spectra[r] for r in term.resolutions))
                    terms[name] = term.from_spectra(list(s_hat), list(s), across_ranks)
                    continue
                for r in term.resolutions:
                    if r not in magnitudes:
                        magnitudes[r] = (spectra[r][0].abs(), spectra[r][1].abs())
                s_hat, s = zip(*(magnitudes[r] for r in term.resolutions))
                terms[name] = term.from_magnitudes(list(s_hat), list(s), across_ranks)
            total = sum(self.weights[k] * v for k, v in terms.items())
        return total, terms


# -- adversarial training (arXiv:2210.13438 EnCodec §3.4) ------------------------------------------

def discriminator_hinge_loss(real: list, fake: list) -> Tensor:
    """Mean over scales of relu(1 - D(x)) + relu(1 + D(x_hat)); inputs are discriminator outputs
    [(logits, features), ...] for the real and the (detached) reconstructed waveforms."""
    total = 0.0
    for (r, _), (f, _) in zip(real, fake):
        total = total + F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return total / len(real)


def generator_adversarial_loss(fake: list) -> Tensor:
    """Mean over scales of relu(1 - D(x_hat)): the generator's hinge loss."""
    return sum(F.relu(1 - f).mean() for f, _ in fake) / len(fake)


def feature_matching_loss(real: list, fake: list, across_ranks: bool = False) -> Tensor:
    """Mean over scales and layers of |f(x) - f(x_hat)|_1 / mean |f(x)|: each layer's distance
    relative to its own scale, so no layer dominates (EnCodec's L_feat). With ``across_ranks``
    (training under torchrun) the scales mean |f(x)| are those of the global batch, so the
    loss, like the others, is the global batch's."""
    pairs = [(a.detach(), b) for (_, fr), (_, ff) in zip(real, fake) for a, b in zip(fr, ff)]
    scales = torch.stack([a.abs().mean() for a, _ in pairs])
    if across_ranks:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(scales)  # detached: a plain all-reduce, then the mean over ranks
            scales = scales / dist.get_world_size()
    total = sum(F.l1_loss(b, a) / s.clamp_min(1e-8) for (a, b), s in zip(pairs, scales))
    return total / len(pairs)
