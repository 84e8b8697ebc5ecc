"""The one place that maps a validated recipe to modules, and rebuilds a model from the
``config.json`` stored beside its weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vqaudio.checkpoint import load_into, read_config
from vqaudio.config import Recipe, from_dict
from vqaudio.errors import VqaudioError
from vqaudio.nn.audio import Decoder1d, Encoder1d
from vqaudio.priors.wavenet import WaveNetPrior
from vqaudio.quantizer import ResidualVQ
from vqaudio.vqvae import VQVAE

AUDIO_VQVAE = "audio-vqvae"


def build_quantizer(recipe: Recipe, dim: int) -> ResidualVQ:
    q = recipe.quantizer
    return ResidualVQ(
        dim, q.num_codes, q.levels, dropout=q.dropout, kind=q.kind, beta=q.beta, decay=q.decay,
        eps=q.eps, kmeans_init=q.kmeans_init, kmeans_iters=q.kmeans_iters,
        restart_after=q.restart_after, cosine=q.cosine, code_dim=q.code_dim or None)


def build_audio_vqvae(recipe: Recipe) -> VQVAE:
    m = recipe.model
    args = dict(channels=m.channels, strides=m.strides, latent_dim=m.latent_dim,
                res_blocks=m.res_blocks, max_channels=m.max_channels)
    return VQVAE(Encoder1d(**args), build_quantizer(recipe, m.latent_dim), Decoder1d(**args),
                 hop=m.hop)


def audio_model_config(recipe: Recipe) -> dict[str, Any]:
    """What config.json holds for an audio VQ-VAE: the resolved recipe and the facts a user
    (and a codes file) needs without rebuilding the model."""
    fps = recipe.data.sample_rate / recipe.model.hop
    bits = math.log2(recipe.quantizer.num_codes)
    return {
        "kind": AUDIO_VQVAE,
        "sample_rate": recipe.data.sample_rate,
        "hop": recipe.model.hop,
        "frames_per_second": fps,
        "num_codes": recipe.quantizer.num_codes,
        "levels": recipe.quantizer.levels,
        "peak": recipe.data.peak,  # inputs are scaled to this peak and outputs scaled back
        "bitrate_bps": {str(n): fps * n * bits for n in range(1, recipe.quantizer.levels + 1)},
        "recipe": recipe.to_dict(),
    }


def load_audio_vqvae(path: str | Path) -> tuple[VQVAE, dict[str, Any]]:
    """Rebuild an audio VQ-VAE from its model directory; eval mode."""
    config = read_config(path)
    if config["kind"] != AUDIO_VQVAE:
        raise VqaudioError(f"model {path}: is a '{config['kind']}' model, not an audio VQ-VAE; "
                           "pass an audio model folder")
    try:
        recipe = from_dict(config["recipe"], f"{path}/config.json")
    except (KeyError, TypeError) as e:
        raise VqaudioError(f"model {path}: config.json lacks a valid recipe ({e})") from None
    model = build_audio_vqvae(recipe)
    load_into(model, path)
    return model.eval(), config


AUDIO_PRIOR = "audio-prior"


def build_audio_prior(recipe: Recipe, num_labels: int) -> WaveNetPrior:
    p = recipe.prior
    return WaveNetPrior(recipe.quantizer.num_codes, levels=p.levels, channels=p.channels,
                        cycles=p.cycles, layers_per_cycle=p.layers_per_cycle, num_labels=num_labels)


def audio_prior_config(recipe: Recipe, vqvae_config: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """config.json of a prior: which VQ-VAE's codes it models, at how many levels (hence the
    bitrate of what it samples), its label vocabulary and the resolved recipe."""
    levels = recipe.prior.levels
    return {
        "kind": AUDIO_PRIOR,
        "vqvae_model_id": vqvae_config["model_id"],
        "sample_rate": vqvae_config["sample_rate"],
        "frames_per_second": vqvae_config["frames_per_second"],
        "num_codes": recipe.quantizer.num_codes,
        "levels": levels,
        "bitrate_bps": vqvae_config["bitrate_bps"][str(levels)],
        "labels": labels,  # label i of the model is labels[i]; [] when unconditioned
        "receptive_field_frames": 1 + recipe.prior.cycles * (2 ** recipe.prior.layers_per_cycle - 1),
        "recipe": recipe.to_dict(),
    }


def load_audio_prior(path: str | Path) -> tuple[WaveNetPrior, dict[str, Any]]:
    """Rebuild an audio prior from its model directory; eval mode."""
    config = read_config(path)
    if config["kind"] != AUDIO_PRIOR:
        raise VqaudioError(f"model {path}: is a '{config['kind']}' model, not an audio prior")
    try:
        recipe = from_dict(config["recipe"], f"{path}/config.json")
        model = build_audio_prior(recipe, len(config["labels"]))
    except (KeyError, TypeError) as e:
        raise VqaudioError(f"model {path}: config.json lacks a valid recipe ({e})") from None
    load_into(model, path)
    return model.eval(), config
