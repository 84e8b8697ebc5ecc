"""Reconstruction losses and evaluation metrics on small synthetic signals (sines, noise)."""

import math
import sys

import numpy as np
import pytest
import torch

from vqaudio import metrics
from vqaudio.losses import (CepstralLoss, MultiResolutionSTFTLoss, MultiScaleMelLoss, ReconstructionLoss,
                            RelativePhaseLoss)

SR = 8000


def sines(batch: int = 2, seconds: float = 0.25, seed: int = 0) -> torch.Tensor:
    """(batch, 1, T) sums of two sines at random frequencies, amplitude about 0.5."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(SR * seconds)) / SR
    f = 100 + 3000 * torch.rand(batch, 2, 1, generator=g)
    return 0.25 * torch.sin(2 * math.pi * f * t).sum(1, keepdim=True)


def noise_like(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


def speechlike(sr: int, seconds: float = 1.0) -> np.ndarray:
    """A voiced, gliding harmonic tone switched on and off 3 times a second: PESQ finds
    utterances in it."""
    t = np.arange(int(sr * seconds)) / sr
    phase = 2 * np.pi * np.cumsum(120 + 30 * np.sin(2 * np.pi * 2 * t)) / sr
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 20))
    return 0.3 * harmonics * np.clip(np.sin(6 * np.pi * t), 0, None)


# Each returns a () loss for (x_hat, x); ReconstructionLoss is checked through its total.
LOSSES = {
    "stft": lambda: MultiResolutionSTFTLoss(),
    "mel": lambda: MultiScaleMelLoss(SR),
    "mfcc": lambda: CepstralLoss(SR),
    "phase": lambda: RelativePhaseLoss(),
    "total": lambda: (lambda crit: lambda a, b: crit(a, b)[0])(
        ReconstructionLoss(SR, {"l1": 1.0, "stft": 1.0, "mel": 1.0, "mfcc": 1.0, "phase": 1.0})),
}


@pytest.mark.parametrize("name", LOSSES)
def test_loss_zero_for_identical_positive_for_different(name):
    loss = LOSSES[name]()
    x = sines()
    assert loss(x.clone(), x).item() < 1e-6
    assert loss(sines(seed=5), x).item() > 0.1


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_reach_x_hat(name):
    x = sines()
    x_hat = (x + 0.1 * noise_like(x)).requires_grad_()
    LOSSES[name]()(x_hat, x).backward()
    assert torch.isfinite(x_hat.grad).all()
    assert x_hat.grad.abs().sum() > 0


@pytest.mark.parametrize("name", LOSSES)
def test_more_noise_costs_more(name):
    loss, x = LOSSES[name](), sines()
    n = noise_like(x)
    values = [loss(x + s * n, x).item() for s in (0.003, 0.03, 0.3)]
    assert values[0] < values[1] < values[2], values


@pytest.mark.parametrize("name", LOSSES)
def test_silence_gives_finite_loss_and_gradient(name):
    x = torch.zeros(2, 1, 1000)
    x_hat = torch.zeros_like(x, requires_grad=True)
    value = LOSSES[name]()(x_hat, x)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(x_hat.grad).all()


def test_spectral_convergence_by_hand():
    # x_hat = 2x: spectral convergence ||S - 2S|| / ||S|| = 1, and |log 2|S| - log |S|| = log 2
    # in every bin above the 1e-5 floor, which is every bin of loud white noise.
    x = 0.5 * noise_like(torch.zeros(1, 1, 2000))
    value = MultiResolutionSTFTLoss(fft_sizes=(64,))(2 * x, x)
    torch.testing.assert_close(value, torch.tensor(1 + math.log(2)), atol=1e-3, rtol=0)


def test_cepstral_loss_by_hand():
    # x_hat = 2x: every log mel band of loud noise moves by log 2, a constant, which the
    # orthonormal DCT puts into c0 alone: sqrt(40) * log 2; the other 12 cepstra stay.
    x = 0.5 * noise_like(torch.zeros(1, 1, 4000))
    value = CepstralLoss(SR, n_fft=256, n_mels=40, n_ceps=13)(2 * x, x)
    torch.testing.assert_close(value, torch.tensor(math.sqrt(40) * math.log(2) / 13), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="n_ceps must be between 1 and n_mels"):
        CepstralLoss(SR, n_mels=10, n_ceps=13)


def test_phase_loss_hears_incoherent_partials_that_the_magnitude_terms_barely_do():
    # The same harmonics at the same levels, but every 32 ms each partial's phase jumps to a
    # new random value: the magnitude spectrogram hardly changes, the phase steps do.
    t = torch.arange(SR // 2) / SR
    f0, partials = 150.0, range(1, 8)
    x = sum(0.3 / k * torch.sin(2 * math.pi * k * f0 * t) for k in partials)[None, None]
    g = torch.Generator().manual_seed(0)
    block = 256
    jumps = 2 * math.pi * torch.rand(len(t) // block + 1, len(partials), generator=g)
    offset = jumps[torch.arange(len(t)) // block]  # (T, partials)
    x_hat = sum(0.3 / k * torch.sin(2 * math.pi * k * f0 * t + offset[:, i])
                for i, k in enumerate(partials))[None, None]
    phase, stft = RelativePhaseLoss(), MultiResolutionSTFTLoss()
    assert phase(2 * x, x).item() < 0.01  # a level change is no phase error
    assert phase(x_hat, x).item() > 0.1
    # relative to what a level change costs, the phase term sees the jumps far more clearly
    assert phase(x_hat, x).item() / 0.01 > stft(x_hat, x).item() / stft(2 * x, x).item()


def test_losses_compute_in_float32_and_keep_no_state():
    crit = ReconstructionLoss(SR, {"l1": 1.0, "stft": 1.0, "mel": 1.0, "mfcc": 1.0, "phase": 1.0})
    x = sines()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = crit(x.bfloat16(), x)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    # Windows and filterbanks are non-persistent buffers: nothing enters a checkpoint.
    assert crit.state_dict() == {}
    assert any(n.endswith("window") for n, _ in crit.named_buffers())


def test_reconstruction_weights():
    x = sines()
    x_hat = x + 0.1 * noise_like(x)
    crit = ReconstructionLoss(SR, {"l1": 2.0, "stft": 0.0, "mel": 0.5})
    total, terms = crit(x_hat, x)
    assert set(terms) == {"l1", "mel"}  # weight 0: neither computed nor reported
    assert crit.stft is None
    torch.testing.assert_close(terms["l1"], (x_hat - x).abs().mean())
    torch.testing.assert_close(terms["mel"], MultiScaleMelLoss(SR)(x_hat, x))
    torch.testing.assert_close(total, 2.0 * terms["l1"] + 0.5 * terms["mel"])


def test_shared_spectra_equal_separate_losses():
    x = sines()
    x_hat = x + 0.1 * noise_like(x)
    total, terms = ReconstructionLoss(SR, {"stft": 1.0, "mel": 3.0, "mfcc": 2.0})(x_hat, x)
    torch.testing.assert_close(terms["stft"], MultiResolutionSTFTLoss()(x_hat, x))
    torch.testing.assert_close(terms["mel"], MultiScaleMelLoss(SR)(x_hat, x))
    torch.testing.assert_close(terms["mfcc"], CepstralLoss(SR)(x_hat, x))  # shares the 256-point STFT
    torch.testing.assert_close(total, terms["stft"] + 3.0 * terms["mel"] + 2.0 * terms["mfcc"])
    total, terms = ReconstructionLoss(SR, {"mel": 1.0, "phase": 0.5}, fft_sizes=(128, 256), n_mels=(16, 32))(x_hat, x)
    torch.testing.assert_close(terms["phase"], RelativePhaseLoss((128, 256))(x_hat, x))
    torch.testing.assert_close(total, terms["mel"] + 0.5 * terms["phase"])
    # Non-default resolutions (the recipe's fft_sizes, n_mels) must agree with the separate losses too.
    sizes = ReconstructionLoss(SR, {"stft": 1.0, "mel": 1.0}, fft_sizes=(256,), n_mels=(32,))
    _, terms = sizes(x_hat, x)
    torch.testing.assert_close(terms["mel"], MultiScaleMelLoss(SR, (256,), (32,))(x_hat, x))


def test_reconstruction_rejects_bad_weights():
    with pytest.raises(ValueError, match="spectral.*valid names: l1, stft, mel, mfcc"):
        ReconstructionLoss(SR, {"l1": 1.0, "spectral": 1.0})
    with pytest.raises(ValueError, match="every loss weight is 0"):
        ReconstructionLoss(SR, {"l1": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        ReconstructionLoss(SR, {"l1": -1.0})
    with pytest.raises(ValueError, match="shape"):
        ReconstructionLoss(SR, {"l1": 1.0})(torch.zeros(1, 1, 10), torch.zeros(1, 1, 11))


def test_mel_rejects_empty_filters_and_mismatched_scales():
    with pytest.raises(ValueError, match="without an FFT bin"):
        MultiScaleMelLoss(SR, fft_sizes=(64,), n_mels=(64,))
    with pytest.raises(ValueError, match="same length"):
        MultiScaleMelLoss(SR, fft_sizes=(128, 256), n_mels=(16,))


# ---- metrics -------------------------------------------------------------------------------

def test_si_snr_scaled_copy_is_very_high():
    ref = sines(1)[0, 0].numpy()
    assert metrics.si_snr(ref, 0.3 * ref) > 50
    # Negative scale and an offset: tensors work, the mean is removed.
    assert metrics.si_snr(torch.from_numpy(ref), torch.from_numpy(-2 * ref + 0.1)) > 50


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 25.0])
def test_si_snr_of_known_snr(snr_db):
    rng = np.random.default_rng(0)
    ref = sines(1, seconds=1.0)[0, 0].double().numpy()
    noise = rng.standard_normal(ref.size)
    noise *= np.sqrt(np.sum(ref**2) / np.sum(noise**2) / 10 ** (snr_db / 10))
    assert metrics.si_snr(ref, ref + noise) == pytest.approx(snr_db, abs=0.5)


def test_si_snr_silent_reference_is_finite():
    silent = np.zeros(800)
    assert metrics.si_snr(silent, silent) == 0.0
    assert math.isfinite(metrics.si_snr(silent, np.random.default_rng(0).standard_normal(800)))
    with pytest.raises(ValueError, match="same length"):
        metrics.si_snr(silent, silent[:-1])


def test_mel_distance():
    x = sines(1, seconds=0.5)[0, 0]
    n = noise_like(x)
    assert metrics.mel_distance(x, x.clone(), SR) == 0.0
    small, large = (metrics.mel_distance(x, x + s * n, SR) for s in (0.01, 0.1))
    assert 0 < small < large
    assert metrics.mel_setting(8000) == (512, 128, 64)
    assert metrics.mel_setting(16000) == (1024, 256, 64)
    assert metrics.mel_distance(x[:100], x[:100], SR) == 0.0  # shorter than n_fft still works


def test_perplexity_and_entropy():
    k = 8
    uniform = np.tile(np.arange(k), 5)
    assert metrics.perplexity(uniform, k) == pytest.approx(k)
    assert metrics.unigram_entropy_bits(uniform, k) == pytest.approx(3.0)
    assert metrics.perplexity(torch.full((4, 6), 3), k) == pytest.approx(1.0)
    # p = (1/3, 1/3, 1/6, 1/6): H = (2/3) log2 3 + (1/3) log2 6
    expected = 2 / 3 * math.log2(3) + 1 / 3 * math.log2(6)
    assert metrics.unigram_entropy_bits([0, 0, 1, 1, 2, 3], k) == pytest.approx(expected)
    assert metrics.perplexity([0, 0, 1, 1, 2, 3], k) == pytest.approx(2**expected)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        metrics.perplexity([0, 8], k)


def test_bitrate():
    assert metrics.bitrate(125, 512, 2) == 2250
    assert metrics.bitrate(50, 1024, 1) == 500


def test_optional_metrics_return_none_without_their_packages(monkeypatch):
    monkeypatch.setitem(sys.modules, "pesq", None)  # makes `import pesq` raise ImportError
    monkeypatch.setitem(sys.modules, "pystoi", None)
    x = speechlike(SR, 0.5)
    assert metrics.pesq_nb(x, x, SR) is None
    assert metrics.stoi(x, x, SR) is None
    report = metrics.quality_report(x, x, SR)
    assert report["pesq"] == "n/a: PESQ needs the eval extra (pip install 'vqaudio[eval]')"
    assert report["stoi"] == "n/a: STOI needs the eval extra (pip install 'vqaudio[eval]')"


@pytest.mark.parametrize("sr", [8000, 16000])  # 16 kHz is resampled to 8 kHz for NB PESQ
def test_pesq_nb(sr):
    pytest.importorskip("pesq")
    x = speechlike(sr)
    noisy = x + 0.1 * x.std() * np.random.default_rng(0).standard_normal(x.size)
    clean_score, noisy_score = metrics.pesq_nb(x, x, sr), metrics.pesq_nb(x, noisy, sr)
    assert clean_score > 4.0 and 1.0 <= noisy_score < clean_score
    assert metrics.pesq_nb(np.zeros(sr), x[:sr], sr) is None  # silent reference: no NaN, no crash


def test_stoi():
    pytest.importorskip("pystoi")
    x = speechlike(SR)
    noisy = x + 0.3 * x.std() * np.random.default_rng(0).standard_normal(x.size)
    assert metrics.stoi(x, x, SR) == pytest.approx(1.0, abs=1e-6)
    assert metrics.stoi(x, noisy, SR) < 0.99


def test_quality_report_keys():
    x = speechlike(SR)
    report = metrics.quality_report(x, 0.5 * x, SR)
    assert set(report) == {"si_snr", "mel_distance", "pesq", "stoi"}
    assert report["si_snr"] > 50 and isinstance(report["mel_distance"], float)
    for key, fn in (("pesq", metrics.pesq_nb), ("stoi", metrics.stoi)):
        assert report[key] == fn(x, 0.5 * x, SR) or report[key].startswith("n/a: ")


@pytest.mark.parametrize("case", ["one_sample", "silent", "short", "no_speech_for_stoi"])
def test_quality_report_says_why_a_metric_is_not_available(case):
    """Never NaN, never a made-up number: the reason, as "n/a: ..."."""
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    x = {"one_sample": np.array([0.5]), "silent": np.zeros(SR),
         "short": speechlike(SR, 0.2), "no_speech_for_stoi": np.r_[np.zeros(SR), speechlike(SR, 0.1)]}[case]
    report = metrics.quality_report(x, x, SR)
    expected = {
        "one_sample": {"si_snr": "n/a: input shorter than 2 samples",
                       "mel_distance": "n/a: input shorter than 64 ms (one mel frame)",
                       "pesq": "n/a: input shorter than 0.25 s", "stoi": "n/a: input shorter than 0.39 s"},
        "silent": {"si_snr": "n/a: silent input", "pesq": "n/a: silent input",
                   "stoi": "n/a: less than 0.39 s of speech in the input"},
        "short": {"pesq": "n/a: input shorter than 0.25 s", "stoi": "n/a: input shorter than 0.39 s"},
        "no_speech_for_stoi": {"stoi": "n/a: less than 0.39 s of speech in the input",
                               "pesq": "n/a: PESQ found no speech in the input"},
    }[case]
    for key, value in report.items():
        if key in expected:
            assert value == expected[key], key
        else:
            assert metrics.is_value(value), (key, value)


def test_mean_scores_average_what_was_scored_and_say_n_a_otherwise():
    from vqaudio.resynth import mean_scores

    summary = mean_scores([{"si_snr": 10.0, "stoi": "n/a: input shorter than 0.39 s"},
                           {"si_snr": "n/a: silent input", "stoi": "n/a: input shorter than 0.39 s"},
                           {"si_snr": 20.0, "stoi": "n/a: silent input"}])
    assert summary == {"si_snr": 15.0, "si_snr_files": 2,
                       "stoi": "n/a: input shorter than 0.39 s; silent input"}


def test_stoi_is_none_for_clips_too_short_to_score():
    pytest.importorskip("pystoi")
    from vqaudio.metrics import stoi

    t = np.arange(1600) / 8000  # 0.2 s: pystoi needs ~384 ms and would return 1e-5
    x = np.sin(2 * np.pi * 200 * t).astype(np.float32)
    assert stoi(x, x, 8000) is None


def test_streamed_si_snr_matches_the_whole_signal_and_says_na_where_undefined():
    from vqaudio.metrics import si_snr
    from vqaudio.resynth import SiSnr

    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000)
    est = ref + 0.3 * rng.standard_normal(1000)
    acc = SiSnr()
    for a in range(0, 1000, 300):
        acc.add(ref[a:a + 300], est[a:a + 300])
    assert acc.value() == pytest.approx(si_snr(ref, est), abs=1e-6)
    one = SiSnr()
    one.add(ref[:1], est[:1])
    assert one.value() == "n/a: input shorter than 2 samples"
    silent = SiSnr()
    silent.add(np.zeros(100), est[:100])
    assert silent.value() == "n/a: silent input"
