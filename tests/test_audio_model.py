import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqaudio.build import audio_model_config, build_audio_vqvae, load_audio_vqvae
from vqaudio.checkpoint import save_model_dir
from vqaudio.config import Recipe
from vqaudio.errors import VqaudioError


def tiny_recipe(levels=2) -> Recipe:
    r = Recipe()
    r.model.channels, r.model.latent_dim, r.model.res_blocks, r.model.max_channels = 8, 16, 1, 32
    r.quantizer.num_codes, r.quantizer.levels, r.quantizer.kmeans_init = 32, levels, False
    return r


@pytest.mark.parametrize("length", [1, 63, 64, 65, 1001, 4000])
def test_decode_encode_returns_exact_length(length):
    model = build_audio_vqvae(tiny_recipe()).eval()
    x = torch.randn(2, 1, length)
    codes = model.encode(x)
    assert codes.shape == (2, -(-length // 64), 2)
    assert model.decode(codes, length).shape == x.shape
    assert model(x).x_hat.shape == x.shape


def test_decode_of_codes_equals_forward():
    model = build_audio_vqvae(tiny_recipe()).eval()
    x = torch.randn(1, 1, 640)
    with torch.no_grad():
        assert_close(model.decode(model.encode(x), 640), model(x).x_hat, atol=1e-5, rtol=1e-4)
        one = model.encode(x, levels=1)
        assert one.shape[-1] == 1
        assert_close(model.decode(one, 640), model(x, levels=1).x_hat, atol=1e-5, rtol=1e-4)


def test_gradients_reach_encoder_and_decoder():
    model = build_audio_vqvae(tiny_recipe()).train()
    x = torch.randn(2, 1, 256)
    out = model(x)
    (F.l1_loss(out.x_hat, x) + out.q.loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def test_overfits_one_clip():
    torch.manual_seed(0)
    r = tiny_recipe(levels=1)
    r.quantizer.kmeans_init = True
    model = build_audio_vqvae(r).train()
    t = torch.arange(2048) / 8000
    x = (0.5 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t))[None, None]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = model(x)
        loss = F.mse_loss(out.x_hat, x) + out.q.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(F.mse_loss(out.x_hat, x).item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_model_directory_round_trip(tmp_path):
    r = tiny_recipe()
    model = build_audio_vqvae(r).eval()
    config = save_model_dir(tmp_path / "m", model, audio_model_config(r))
    assert (tmp_path / "m" / "weights.safetensors").is_file()
    assert config["bitrate_bps"]["1"] == 125 * 5  # 125 frames/s x log2(32)
    loaded, cfg = load_audio_vqvae(tmp_path / "m")
    x = torch.randn(1, 1, 500)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
    assert cfg["model_id"] == config["model_id"]


def test_model_directory_errors(tmp_path):
    r = tiny_recipe()
    save_model_dir(tmp_path / "m", build_audio_vqvae(r), audio_model_config(r))
    with pytest.raises(VqaudioError, match="no such folder"):
        load_audio_vqvae(tmp_path / "nope")
    other = tiny_recipe(levels=3)
    save_model_dir(tmp_path / "o", build_audio_vqvae(other), audio_model_config(other))
    (tmp_path / "m" / "weights.safetensors").replace(tmp_path / "o" / "weights.safetensors")
    with pytest.raises(VqaudioError, match="weights do not match"):
        load_audio_vqvae(tmp_path / "o")
    with pytest.raises(VqaudioError, match="weights.safetensors is missing"):
        load_audio_vqvae(tmp_path / "m")
    (tmp_path / "o" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(VqaudioError, match="not a valid safetensors"):
        load_audio_vqvae(tmp_path / "o")


# -- the Fourier decoder's postfilter (nn.audio.sharpen_spectrum) ------------------------------

def formant_spectrum(frames: int = 3) -> torch.Tensor:
    """(1, 129, frames): one broad formant at bin 40 over a falling tilt, with harmonics every 6 bins."""
    bins = torch.arange(129.0)
    log_mag = -0.02 * bins + 2.0 * torch.exp(-((bins - 40) / 8) ** 2) + 0.5 * torch.cos(2 * torch.pi * bins / 6)
    return log_mag.exp()[None, :, None].repeat(1, 1, frames)


def test_postfilter_off_is_the_identity_and_flat_spectra_pass_unchanged():
    from vqaudio.nn.audio import sharpen_spectrum

    mag = formant_spectrum()
    assert sharpen_spectrum(mag, 0.0, 0.0) is mag
    flat = torch.full((2, 129, 4), 0.3)  # no envelope and no fine structure to sharpen
    assert_close(sharpen_spectrum(flat, 0.5, 0.5), flat)


@pytest.mark.parametrize("formant, harmonic", [(0.3, 0.0), (0.0, 0.3), (0.15, 0.2)])
def test_postfilter_deepens_valleys_and_keeps_each_frames_energy(formant, harmonic):
    from vqaudio.nn.audio import sharpen_spectrum

    mag = formant_spectrum() * torch.tensor([1.0, 0.1, 3.0])  # three frames of different loudness
    out = sharpen_spectrum(mag, formant, harmonic)
    assert_close(out.square().sum(1), mag.square().sum(1))
    assert int(out[0, 30:50, 0].argmax()) == int(mag[0, 30:50, 0].argmax())  # the formant stays put
    if formant:  # the formant peak rises above the band around it (bins 70-100, away from the edges)
        assert (out[0, 40] / out[0, 70:100].mean(0) > 1.1 * mag[0, 40] / mag[0, 70:100].mean(0)).all()
    if harmonic:  # each harmonic rises above its neighbouring valley
        assert (out[0, 84] / out[0, 87] > 1.1 * mag[0, 84] / mag[0, 87]).all()


def test_fourier_decoder_applies_the_postfilter_at_inference_only():
    r = tiny_recipe()
    r.model.decoder, r.model.decoder_dim, r.model.decoder_layers = "fourier", 16, 1
    torch.manual_seed(0)
    plain = build_audio_vqvae(r)
    r.model.postfilter, r.model.postfilter_harmonic = 0.5, 0.2
    filtered = build_audio_vqvae(r)
    filtered.load_state_dict(plain.state_dict())  # the postfilter adds no weights
    z = torch.randn(1, 16, 6)
    with torch.no_grad():
        assert torch.equal(plain.decoder.train()(z), filtered.decoder.train()(z))  # training fits the plain spectrum
        mag, phase = plain.decoder.eval().spectrum(z)
        mag_f, phase_f = filtered.decoder.eval().spectrum(z)
    assert torch.equal(phase, phase_f) and not torch.equal(mag, mag_f)
    assert_close(mag_f.square().sum(1), mag.square().sum(1))


def test_postfilter_max_levels_leaves_finer_codes_alone():
    r = tiny_recipe(levels=3)
    r.model.decoder, r.model.decoder_dim, r.model.decoder_layers = "fourier", 16, 1
    torch.manual_seed(0)
    plain = build_audio_vqvae(r).eval()
    r.model.postfilter, r.model.postfilter_max_levels = 0.5, 2
    filtered = build_audio_vqvae(r).eval()
    filtered.load_state_dict(plain.state_dict())
    codes = torch.randint(0, 32, (1, 6, 3))
    x = torch.randn(1, 1, 640)
    with torch.no_grad():
        for levels in (1, 2, 3):  # decode and the forward pass agree on the level count
            same = torch.equal(plain.decode(codes[..., :levels]), filtered.decode(codes[..., :levels]))
            assert same == (levels > 2), levels
            assert torch.equal(plain(x, levels).x_hat, filtered(x, levels).x_hat) == (levels > 2), levels


def test_smoothing_is_a_normalised_hann_low_pass_over_frames():
    """``smooth_latent``: 1 frame is the identity, a constant latent passes unchanged (the
    window sums to 1), an impulse comes out as the window (Hann of frames + 2 points without its
    zero ends), the ends are repeated outwards; an even count is refused."""
    from vqaudio.codec import smooth_latent

    z = torch.randn(2, 3, 20)
    assert torch.equal(smooth_latent(z, 1), z)
    assert_close(smooth_latent(torch.full((1, 2, 9), 0.7), 5), torch.full((1, 2, 9), 0.7))
    impulse = torch.zeros(1, 1, 11)
    impulse[0, 0, 5] = 1.0
    window = torch.tensor([1.0, 3.0, 4.0, 3.0, 1.0]) / 12  # hann(7) = [0, .25, .75, 1, .75, .25, 0]
    assert_close(smooth_latent(impulse, 5)[0, 0, 3:8], window)
    assert float(smooth_latent(impulse, 5)[0, 0, :3].abs().sum()) == 0.0
    edge = torch.zeros(1, 1, 6)
    edge[0, 0, 0] = 1.0  # the first frame repeated twice outwards: 1/12 + 3/12 + 4/12 there
    assert_close(smooth_latent(edge, 5)[0, 0, 0], torch.tensor(8 / 12))
    with pytest.raises(ValueError, match="odd number of frames"):
        smooth_latent(z, 4)


def test_band_below_keeps_low_tones_and_removes_high_ones():
    from vqaudio.codec import band_below

    t = torch.arange(8000) / 8000
    low, high = torch.sin(2 * torch.pi * 300 * t), torch.sin(2 * torch.pi * 2000 * t)
    out = band_below(low + high, 1000.0, 8000)
    middle = slice(100, -100)  # away from the zeros beyond the ends
    assert_close(out[middle], low[middle], atol=0.01, rtol=0)
    assert_close(band_below(torch.ones(400), 1000.0, 8000)[60:-60], torch.ones(280))  # unit gain at 0 Hz


def test_codec_decode_smooths_the_low_band_the_same_in_chunks():
    """``Codec.decode(..., smoothing=N)``: below 1 kHz the decoder applied to the low-passed
    latent, above it the plain decode; the same when the codes run over several chunks;
    smoothing 1 is the plain decode."""
    from vqaudio.codec import SMOOTHED_BELOW_HZ, band_below, load_codec, smooth_latent

    codec = load_codec(None)  # the pretrained model: chunks of 10 s
    frames = round(23.0 * codec.sample_rate / codec.hop)  # three chunks
    codes = torch.randint(0, codec.config["num_codes"], (frames, 2), generator=torch.Generator().manual_seed(0))
    length = frames * codec.hop
    with torch.no_grad():  # one pass over all the codes, through the VQ-VAE's latent_filter hook
        plain = codec.model.decode(codes[None], length)[0, 0]
        smoothed = codec.model.decode(codes[None], length, latent_filter=lambda z: smooth_latent(z, 5))[0, 0]
    expected = plain + band_below(smoothed - plain, SMOOTHED_BELOW_HZ, codec.sample_rate)
    out = codec.decode(codes.numpy(), length, smoothing=5)
    np.testing.assert_allclose(out, expected.numpy(), atol=2e-4)
    np.testing.assert_allclose(codec.decode(codes.numpy(), length), plain.numpy(), atol=2e-4)
    change = torch.from_numpy(out) - plain
    assert change.abs().max() > 0.01  # it changes the sound ...
    spectrum = torch.fft.rfft(change).abs() ** 2
    hz = torch.fft.rfftfreq(length, 1 / codec.sample_rate)
    assert spectrum[hz > 1500].sum() < 1e-3 * spectrum[hz < 1000].sum()  # ... below 1 kHz only
