"""Evaluation metrics: waveform quality (SI-SNR, mel distance, PESQ and STOI when their
packages are installed) and code statistics (perplexity, entropy, bitrate).

Waveform metrics take two 1-D signals of the same length, numpy arrays or tensors, and return
plain floats. ``pesq`` and ``pystoi`` are optional: without them ``pesq_nb`` and ``stoi``
return None. ``quality_report`` never returns NaN or leaves a key out: a metric that cannot
be computed is the string ``"n/a: <why>"`` (``not_available``), which eval prints, writes to
its JSON and shows in its report as is.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from numpy.typing import ArrayLike

SI_SNR_EPS = 1e-8  # absolute energy floor: a silent reference gives a finite, <= 0 dB score
MEL_N_FFT_AT_8K, MEL_N_MELS, MEL_FLOOR = 512, 64, 1e-5
Signal = ArrayLike | torch.Tensor
Score = float | str  # a value, or "n/a: <why it cannot be computed>"
EXTRA = "pip install 'vqaudio[eval]'"


def not_available(why: str) -> str:
    """The score of a metric that cannot be computed: ``"n/a: " + why``."""
    return f"n/a: {why}"


def is_value(score: object) -> bool:
    """True for a number (not an ``not_available`` string, None, or NaN)."""
    return isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)


def _pair(ref: Signal, est: Signal) -> tuple[np.ndarray, np.ndarray]:
    """Two 1-D float64 arrays of the same length (tensors are detached and moved to the CPU)."""
    a, b = (np.asarray(v.detach().cpu().double() if isinstance(v, torch.Tensor) else v,
                       dtype=np.float64) for v in (ref, est))
    if a.ndim != 1 or b.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"ref and est must be 1-D and of the same length, got shapes "
                         f"{a.shape} and {b.shape}")
    return a, b


def si_snr(ref: Signal, est: Signal) -> float:
    """Scale-invariant SNR in dB (arXiv:1811.11307 §2.3, means removed first).

    est is projected on ref: target = <est, ref> ref / ||ref||², noise = est - target, and the
    score is 10 log10(||target||² / ||noise||²). Energies get a floor of ``SI_SNR_EPS``, so a
    perfect copy scores high but finite and a silent reference scores <= 0 dB, never NaN.
    """
    ref, est = _pair(ref, est)
    ref, est = ref - ref.mean(), est - est.mean()
    alpha = np.dot(est, ref) / (np.dot(ref, ref) + SI_SNR_EPS)
    target = alpha * ref
    noise = est - target
    return float(10 * np.log10((np.dot(target, target) + SI_SNR_EPS)
                               / (np.dot(noise, noise) + SI_SNR_EPS)))


def mel_setting(sample_rate: int) -> tuple[int, int, int]:
    """(n_fft, hop, n_mels) used by ``mel_distance``: n_fft 512 at 8 kHz, scaled with the rate
    to the nearest power of two (1024 at 16 kHz), hop n_fft / 4, 64 HTK mels up to Nyquist."""
    n_fft = 2 ** max(4, round(math.log2(MEL_N_FFT_AT_8K * sample_rate / 8000)))
    return n_fft, n_fft // 4, MEL_N_MELS


@functools.lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int) -> torch.Tensor:
    from vqaudio.losses import mel_filterbank  # the same filters the training loss uses

    n_fft, _, n_mels = mel_setting(sample_rate)
    return mel_filterbank(n_fft, n_mels, sample_rate).double()


def _log_mel(x: np.ndarray, sample_rate: int) -> torch.Tensor:
    """(T,) -> (frames, n_mels) natural-log mel magnitudes, floored at ``MEL_FLOOR``."""
    n_fft, hop, _ = mel_setting(sample_rate)
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spec = torch.stft(torch.from_numpy(x), n_fft, hop, window=window, center=True,
                      pad_mode="constant", return_complex=True)
    return (spec.abs().T @ _mel_filterbank(sample_rate)).clamp_min(MEL_FLOOR).log()


def mel_distance(ref: Signal, est: Signal,
                 sample_rate: int) -> float:
    """Mean |log mel(ref) - log mel(est)| with the fixed ``mel_setting(sample_rate)``
    (at 8 kHz: n_fft 512, hop 128, 64 mels); 0 for identical signals."""
    ref, est = _pair(ref, est)
    return float((_log_mel(ref, sample_rate) - _log_mel(est, sample_rate)).abs().mean())


def _resample(x: np.ndarray, sample_rate: int, target: int) -> np.ndarray:
    if sample_rate == target:
        return x
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(x), sample_rate, target).numpy()


# The pesq package refuses shorter buffers ("Buffer needs to be at least 1/4 of a second long").
PESQ_MIN_SECONDS = 0.25


def pesq_nb(ref: Signal, est: Signal,
            sample_rate: int) -> float | None:
    """Narrow-band PESQ (ITU-T P.862, MOS-LQO, about 1 to 4.5) at 8 kHz, resampling first if
    needed. None when the ``pesq`` package is missing or PESQ cannot score the pair (a silent
    reference or estimate, no speech found in the reference); ``pesq_score`` says why."""
    score = pesq_score(ref, est, sample_rate)
    return score if is_value(score) else None


def pesq_score(ref: Signal, est: Signal, sample_rate: int) -> Score:
    """``pesq_nb``, or ``not_available`` with the reason it cannot score the pair."""
    try:
        from pesq import PesqError, pesq
    except ImportError:
        return not_available(f"PESQ needs the eval extra ({EXTRA})")
    ref, est = _pair(ref, est)
    if not ref.any():  # pesq would divide by the peak; a silent reference has no speech anyway
        return not_available("silent input")
    ref, est = _resample(ref, sample_rate, 8000), _resample(est, sample_rate, 8000)
    try:
        return float(pesq(8000, ref, est, "nb"))
    except (PesqError, ValueError):  # no utterance found; a silent estimate makes it hit a NaN
        why = "silent output" if not est.any() else "PESQ found no speech in the input"
        if len(ref) < PESQ_MIN_SECONDS * 8000:
            why = f"input shorter than {PESQ_MIN_SECONDS:g} s"
        return not_available(why)


# STOI needs 30 frames of 25.6 ms (0.397 s) of speech to give a score.
STOI_MIN_SECONDS = 0.39


def stoi(ref: Signal, est: Signal,
         sample_rate: int) -> float | None:
    """Short-time objective intelligibility (0 to 1; Taal et al., IEEE TASLP 2011); None when
    the ``pystoi`` package is missing or the clip is too short to score (pystoi needs about
    384 ms of non-silent speech and otherwise returns exactly 1e-5 with a warning: not a
    score, so it must not be averaged in); ``stoi_score`` says why. pystoi resamples to
    10 kHz itself."""
    score = stoi_score(ref, est, sample_rate)
    return score if is_value(score) else None


def stoi_score(ref: Signal, est: Signal, sample_rate: int) -> Score:
    """``stoi``, or ``not_available`` with the reason it cannot score the pair."""
    try:
        from pystoi import stoi as _stoi
    except ImportError:
        return not_available(f"STOI needs the eval extra ({EXTRA})")
    import warnings

    ref, est = _pair(ref, est)
    if len(ref) < STOI_MIN_SECONDS * sample_rate:
        # pystoi returns its no-score value here, and crashes under ~26 ms
        return not_available(f"input shorter than {STOI_MIN_SECONDS:g} s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(_stoi(ref, est, sample_rate, extended=False))
    return value if value > 1e-5 else not_available(f"less than {STOI_MIN_SECONDS:g} s of speech in the input")


def _code_probs(codes: Signal, num_codes: int) -> np.ndarray:
    c = np.asarray(codes.detach().cpu() if isinstance(codes, torch.Tensor) else codes).ravel()
    if c.size == 0:
        raise ValueError("codes is empty")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"codes must be integers, got {c.dtype}")
    if c.min() < 0 or c.max() >= num_codes:
        raise ValueError(f"codes must lie in [0, {num_codes}), got {c.min()} .. {c.max()}")
    return np.bincount(c, minlength=num_codes) / c.size


def unigram_entropy_bits(codes: Signal, num_codes: int) -> float:
    """Entropy in bits of the empirical code distribution (any shape, all codes pooled):
    the bits per code an ideal unigram entropy coder would spend; at most log2(num_codes)."""
    p = _code_probs(codes, num_codes)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def perplexity(codes: Signal, num_codes: int) -> float:
    """2 ** entropy: the number of equally used codes with the same entropy (1 for a constant,
    num_codes for uniform use)."""
    return float(2.0 ** unigram_entropy_bits(codes, num_codes))


def bitrate(frames_per_second: float, num_codes: int, levels: int) -> float:
    """Bits per second of uncompressed codes: frames_per_second × levels × log2(num_codes)."""
    return float(frames_per_second * levels * math.log2(num_codes))


def quality_report(ref: Signal, est: Signal,
                   sample_rate: int) -> dict[str, Score]:
    """{"si_snr", "mel_distance", "pesq", "stoi"}: each a float, or ``not_available`` with
    the reason (an input too short or silent, PESQ or STOI without their packages)."""
    a, _ = _pair(ref, est)
    n_fft = mel_setting(sample_rate)[0]
    if a.size < 2 or not (a - a.mean()).any():
        snr = not_available("input shorter than 2 samples" if a.size < 2 else "silent input")
    else:
        snr = si_snr(ref, est)
    mel = (mel_distance(ref, est, sample_rate) if a.size >= n_fft else
           not_available(f"input shorter than {1000 * n_fft / sample_rate:g} ms (one mel frame)"))
    return {"si_snr": snr, "mel_distance": mel, "pesq": pesq_score(ref, est, sample_rate),
            "stoi": stoi_score(ref, est, sample_rate)}
