"""The Fourier-head decoder and adversarial training: the inverse STFT inverts its analysis,
lengths are exact, the discriminator's losses behave, both models move, and the two-model loop
resumes bitwise after SIGKILL and trains the same model on 2 gloo processes as on 1."""

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from test_cli import vqaudio
from test_distributed import EXACT, SMOKE, assert_close_weights, torchrun
from test_resume import assert_same_weights, start_training, wait_for_checkpoints, weights
from vqaudio.build import build_audio_vqvae
from vqaudio.config import Recipe
from vqaudio.losses import discriminator_hinge_loss, feature_matching_loss, generator_adversarial_loss
from vqaudio.nn.audio import ISTFT, FourierDecoder
from vqaudio.nn.discriminators import MultiScaleSTFTDiscriminator

FOURIER = ["--set", "model.decoder=fourier", "--set", "model.decoder_dim=16", "--set", "model.decoder_layers=2"]
GAN = [*FOURIER, "--set", "loss.adversarial=1.0", "--set", "loss.feature_matching=2.0",
       "--set", "loss.discriminator_channels=4"]


@pytest.mark.parametrize("n_fft, hop", [(256, 64), (128, 64), (320, 80), (384, 64)])
def test_inverse_stft_of_an_analysis_reproduces_its_input(n_fft, hop):
    istft = ISTFT(n_fft, hop)
    x = torch.randn(3, hop * 37)
    spec = istft.analysis(x)
    assert spec.shape == (3, n_fft // 2 + 1, 37)  # one frame per hop: the code frame rate
    assert_close(istft(spec), x, atol=1e-5, rtol=1e-5)


def tiny_fourier_recipe() -> Recipe:
    r = Recipe()
    r.model.channels, r.model.latent_dim, r.model.res_blocks, r.model.max_channels = 8, 16, 1, 32
    r.model.decoder, r.model.decoder_dim, r.model.decoder_layers = "fourier", 16, 2
    r.quantizer.num_codes, r.quantizer.levels, r.quantizer.kmeans_init = 32, 2, False
    return r


@pytest.mark.parametrize("length", [1, 63, 65, 1001, 4001])
def test_fourier_decoder_returns_the_exact_length(length):
    model = build_audio_vqvae(tiny_fourier_recipe()).eval()
    x = torch.randn(2, 1, length)
    assert model(x).x_hat.shape == x.shape
    assert model.decode(model.encode(x), length).shape == x.shape
    assert FourierDecoder(16, 64, 16, 1)(torch.randn(2, 16, 5)).shape == (2, 1, 320)


def test_fourier_decoder_learns_a_tone_and_gradients_reach_the_encoder():
    torch.manual_seed(0)
    model = build_audio_vqvae(tiny_fourier_recipe()).train()
    t = torch.arange(1024) / 8000
    x = (0.5 * torch.sin(2 * torch.pi * 440 * t)).view(1, 1, -1)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(150):
        out = model(x)
        loss = (out.x_hat - x).abs().mean() + out.q.loss
        opt.zero_grad()
        loss.backward()
        if first is None:
            first = loss.item()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
        opt.step()
    assert loss.item() < 0.3 * first


def test_discriminator_losses():
    torch.manual_seed(0)
    d = MultiScaleSTFTDiscriminator(channels=4)
    x, y = torch.randn(2, 1, 2000), torch.randn(2, 1, 2000)
    real, fake = d(x), d(y)
    assert len(real) == 3 and all(len(feats) == 5 for _, feats in real)
    for value in (discriminator_hinge_loss(real, fake), generator_adversarial_loss(fake),
                  feature_matching_loss(real, fake)):
        assert value.ndim == 0 and torch.isfinite(value)
    assert feature_matching_loss(real, d(x)).item() == 0  # identical audio, identical features
    # Hinge by hand: logits past the margins cost nothing.
    confident_real = [(torch.full((1, 1, 2, 2), 2.0), [])]
    confident_fake = [(torch.full((1, 1, 2, 2), -2.0), [])]
    assert discriminator_hinge_loss(confident_real, confident_fake).item() == 0
    assert generator_adversarial_loss(confident_fake).item() == 3.0
    # The generator's gradient flows through the discriminator into its input.
    y.requires_grad_(True)
    generator_adversarial_loss(d(y)).backward()
    assert y.grad.abs().sum() > 0


def test_adversarial_stage_trains_both_models(tmp_path):
    out = tmp_path / "run"
    vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae", *GAN, "--set", "train.steps=6",
            "--set", "train.checkpoint_every=3", "--set", "train.log_every=1")
    a, b = (out / "checkpoints" / f"vqvae-step000000{s}" for s in (3, 6))
    for name in ("weights.safetensors", "critic.safetensors"):  # the generator and the critic
        wa, wb = load_file(a / name), load_file(b / name)
        moved = [k for k in wa if wa[k].is_floating_point() and not torch.equal(wa[k], wb[k])]
        assert len(moved) > len(wa) // 2, name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb")).Reload()
    for tag in ("adversarial", "feature_matching", "discriminator", "discriminator_grad_norm", "loss"):
        values = [e.value for e in events.Scalars(f"vqvae/train/{tag}")]
        assert len(values) == 6 and all(map(torch.isfinite, torch.tensor(values))), tag
    assert not (out / "vqvae" / "critic.safetensors").exists()  # the model folder is the codec alone


def test_adversarial_resume_after_sigkill_is_bitwise(tmp_path):
    steps = [*GAN, "--set", "train.steps=24", "--set", "train.checkpoint_every=4", "--set", "train.val_every=12",
             "--set", "train.keep_checkpoints=3", "--stage", "vqvae"]
    ref = tmp_path / "ref"
    vqaudio("train", SMOKE, "--out", ref, *steps)
    out = tmp_path / "run"
    proc = start_training(out, *steps)
    wait_for_checkpoints(out, proc, 2)
    proc.kill()
    proc.wait()
    assert not (out / "vqvae").exists()
    vqaudio("train", SMOKE, "--out", out, *steps, "--resume")
    assert_same_weights(weights(out), weights(ref))
    last = sorted((ref / "checkpoints").glob("vqvae-step*"))[-1].name
    assert_same_weights(load_file(out / "checkpoints" / last / "critic.safetensors"),
                        load_file(ref / "checkpoints" / last / "critic.safetensors"))


def test_adversarial_two_processes_train_the_models_of_one(tmp_path):
    args = [*EXACT, *GAN]
    vqaudio("train", SMOKE, "--out", tmp_path / "one", *args)
    torchrun(2, "train", SMOKE, "--out", tmp_path / "two", *args)
    assert_close_weights(tmp_path / "one" / "vqvae", tmp_path / "two" / "vqvae")
    one, two = (load_file(tmp_path / r / "checkpoints" / "vqvae-step0000006" / "critic.safetensors")
                for r in ("one", "two"))
    for k in one:
        assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)
