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
