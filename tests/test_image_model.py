from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqaudio.errors import VqaudioError
from vqaudio.nn.image import Decoder2d, Encoder2d, NoQuantizer
from vqaudio.quantizer import VectorQuantizer
from vqaudio.vqvae import VQVAE

KMNIST = Path(__file__).parents[1] / "data" / "kmnist" / "kmnist-10k-imgs.npz"


def image_vqvae(channels=1, size=28, global_code=False, latent_dim=8, num_codes=32, quantizer=None):
    kw = dict(channels=8, downsamples=2, latent_dim=latent_dim, res_blocks=1, global_code=global_code,
              image_size=size)
    return VQVAE(Encoder2d(channels, **kw), quantizer or VectorQuantizer(latent_dim, num_codes),
                 Decoder2d(channels, **kw))


@pytest.mark.parametrize("channels, size, grid", [(1, 28, 7), (3, 32, 8)])
def test_shapes_through_the_vqvae(channels, size, grid):
    model = image_vqvae(channels, size).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        assert model.encoder(x).shape == (2, 8, grid, grid)
        codes = model.encode(x)
        assert codes.shape == (2, grid, grid) and codes.dtype == torch.long
        out = model(x)
        assert out.x_hat.shape == x.shape
        assert 0 <= out.x_hat.min() and out.x_hat.max() <= 1  # sigmoid output, like the data
        assert_close(model.decode(codes), out.x_hat)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_global_code_is_one_code_per_image(channels, size):
    # K = 64, D = 16: the configuration of the original Keras example.
    model = image_vqvae(channels, size, global_code=True, latent_dim=16, num_codes=64).eval()
    x = torch.rand(3, channels, size, size)
    with torch.no_grad():
        assert model.encoder(x).shape == (3, 16, 1, 1)
        codes = model.encode(x)
        assert codes.shape == (3, 1, 1)
        assert model.decode(codes).shape == x.shape
    with pytest.raises(ValueError, match="28x28"):
        image_vqvae(global_code=True).encoder(torch.rand(1, 1, 32, 32))


def test_image_size_must_divide_by_the_strides():
    with pytest.raises(ValueError, match="multiple"):
        Encoder2d(1, 8, 3, 8, 1, image_size=28)  # 28 is not a multiple of 8


def test_gradients_reach_encoder_and_decoder():
    model = image_vqvae().train()
    x = torch.rand(2, 1, 28, 28)
    out = model(x)
    (F.mse_loss(out.x_hat, x) + out.q.loss).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())


def kmnist_batch(n=16) -> torch.Tensor:
    with np.load(KMNIST) as npz:
        return torch.from_numpy(npz["arr_0"][:n]).float().div(255).unsqueeze(1)  # (n, 1, 28, 28)


def overfit(model, x, steps, lr):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = model(x)
        mse = F.mse_loss(out.x_hat, x)
        opt.zero_grad()
        (mse + out.q.loss).backward()
        opt.step()
        losses.append(mse.item())
    return losses


def mean_image_mse(x: torch.Tensor) -> float:
    """The MSE of the best constant guess, the batch's mean image (about 0.10 here): a model
    that beats it well has learnt something about each image."""
    return F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x).item()


def test_overfits_one_batch_of_kmnist():
    torch.manual_seed(0)
    x = kmnist_batch()
    model = VQVAE(Encoder2d(1, 8, 2, 16, 1), VectorQuantizer(16, 64, kmeans_init=True),
                  Decoder2d(1, 8, 2, 16, 1)).train()
    losses = overfit(model, x, 100, lr=1e-2)
    assert losses[-1] < losses[0] / 5 and losses[-1] < mean_image_mse(x) / 2, (losses, mean_image_mse(x))


def test_no_quantizer_trains_a_plain_autoencoder():
    torch.manual_seed(0)
    x = kmnist_batch()
    model = image_vqvae(quantizer=NoQuantizer()).train()
    z = model.encoder(x).movedim(1, -1)
    q = model.quantizer(z)
    assert q.z_q is z and q.codes.shape == (16, 7, 7) and q.codes.dtype == torch.long
    assert q.loss.item() == 0 and q.perplexity.item() == 0 and q.used.item() == 0
    losses = overfit(model, x, 120, lr=3e-3)
    assert losses[-1] < mean_image_mse(x) / 2, (losses, mean_image_mse(x))
    with pytest.raises(VqaudioError, match="no codes"):
        model.decode(torch.zeros(1, 7, 7, dtype=torch.long))


def test_residual_levels_lie_side_by_side_in_the_code_grid():
    # Several codes per cell: the prior's grid holds each cell's levels in a row, coarse first,
    # and decoding that grid gives the reconstruction at all levels.
    from vqaudio.build import build_image_vqvae, image_model_config
    from vqaudio.config import load_recipe
    from vqaudio.image_stages import decode_grids, encode_images

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "kmnist_smoke.toml", ["quantizer.levels=3"])
    model = build_image_vqvae(recipe).eval()
    assert image_model_config(recipe)["bits_per_image"] == 7 * 21 * 4  # K = 16
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        codes = model.encode(x)  # (N, H, W, levels)
        grids = encode_images(model, x)
        assert codes.shape == (4, 7, 7, 3) and grids.shape == (4, 7, 21)
        assert torch.equal(grids[:, 2, 3 * 5 + 1], codes[:, 2, 5, 1])  # row 2, cell 5, level 1
        assert_close(decode_grids(model, grids), model(x).x_hat)
        coarse = encode_images(model, x, levels=2)  # what a prior of prior.levels = 2 models
        assert torch.equal(coarse, codes[..., :2].flatten(-2))
        assert_close(decode_grids(model, coarse, levels=2), model(x, levels=2).x_hat)


def test_decoder_input_norm_makes_the_decoder_blind_to_the_latents_scale():
    """model.decoder_input_norm: a latent grid shrunk 100x (as the commitment loss shrinks the
    encoder's output) decodes to the same image; without the norm it does not."""
    torch.manual_seed(0)
    z = torch.randn(3, 16, 7, 7)
    for norm in (True, False):
        dec = Decoder2d(1, channels=8, downsamples=2, latent_dim=16, res_blocks=1, input_norm=norm).eval()
        with torch.no_grad():
            same = torch.allclose(dec(z), dec(z / 100), atol=1e-5)
        assert same == norm
