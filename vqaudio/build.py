"""The one place that maps a validated recipe to modules, and rebuilds a model from the
``config.json`` stored beside its weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from vqaudio.checkpoint import codes_id, load_into, read_config
from vqaudio.config import ImageRecipe, Recipe, from_dict
from vqaudio.errors import VqaudioError
from vqaudio.nn.audio import Decoder1d, Encoder1d, FourierDecoder
from vqaudio.nn.discriminators import MultiScaleSTFTDiscriminator
from vqaudio.nn.image import Decoder2d, Encoder2d, NoQuantizer
from vqaudio.priors.classifier import CodeClassifier
from vqaudio.priors.pixelcnn import GatedPixelCNN
from vqaudio.priors.wavenet import WaveNetPrior, receptive_field
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
    if m.decoder == "fourier":
        decoder = FourierDecoder(m.latent_dim, m.hop, m.decoder_dim, m.decoder_layers, m.n_fft,
                                 m.postfilter, m.postfilter_harmonic, m.postfilter_max_levels)
    else:
        decoder = Decoder1d(**args)
    return VQVAE(Encoder1d(**args), build_quantizer(recipe, m.latent_dim), decoder, hop=m.hop)


def build_audio_discriminator(recipe: Recipe) -> MultiScaleSTFTDiscriminator:
    return MultiScaleSTFTDiscriminator(channels=recipe.loss.discriminator_channels)


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
    return _load(path, AUDIO_VQVAE, lambda recipe, config: build_audio_vqvae(recipe))


AUDIO_PRIOR = "audio-prior"


def build_audio_prior(recipe: Recipe, num_labels: int) -> WaveNetPrior:
    p = recipe.prior
    return WaveNetPrior(recipe.quantizer.num_codes, levels=p.levels, channels=p.channels,
                        cycles=p.cycles, layers_per_cycle=p.layers_per_cycle, num_labels=num_labels,
                        null_label=p.label_dropout > 0, frame_stack=p.frame_stack)


def audio_prior_config(recipe: Recipe, vqvae_config: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """config.json of a prior: which VQ-VAE's codes it models, at how many levels (hence the
    bitrate of what it samples), its label vocabulary and the resolved recipe."""
    levels = recipe.prior.levels
    return {
        "kind": AUDIO_PRIOR,
        "vqvae_model_id": vqvae_config["model_id"],
        "vqvae_codes_id": codes_id(vqvae_config),  # the codes it models (a decoder-only fine-tune keeps them)
        "sample_rate": vqvae_config["sample_rate"],
        "frames_per_second": vqvae_config["frames_per_second"],
        "num_codes": recipe.quantizer.num_codes,
        "levels": levels,
        "bitrate_bps": vqvae_config["bitrate_bps"][str(levels)],
        "labels": labels,  # label i of the model is labels[i]; [] when unconditioned
        "frame_stack": recipe.prior.frame_stack,  # code frames per step of the prior
        "receptive_field_frames": receptive_field(recipe.prior.layers_per_cycle, recipe.prior.cycles,
                                                  recipe.prior.frame_stack),
        "recipe": recipe.to_dict(),
    }


def load_audio_prior(path: str | Path) -> tuple[WaveNetPrior, dict[str, Any]]:
    """Rebuild an audio prior from its model directory; eval mode."""
    return _load(path, AUDIO_PRIOR, lambda recipe, config: build_audio_prior(recipe, len(config["labels"])))


AUDIO_CLASSIFIER = "audio-classifier"


def build_audio_classifier(recipe: Recipe, num_labels: int) -> CodeClassifier:
    return CodeClassifier(recipe.quantizer.num_codes, recipe.prior.levels, num_labels)


def audio_classifier_config(recipe: Recipe, vqvae_config: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """config.json of a code classifier: whose codes, at how many levels, which labels."""
    return {
        "kind": AUDIO_CLASSIFIER,
        "vqvae_model_id": vqvae_config["model_id"],
        "vqvae_codes_id": codes_id(vqvae_config),
        "num_codes": recipe.quantizer.num_codes,
        "levels": recipe.prior.levels,
        "labels": labels,
        "recipe": recipe.to_dict(),
    }


def load_audio_classifier(path: str | Path) -> tuple[CodeClassifier, dict[str, Any]]:
    """Rebuild a code classifier from its model directory; eval mode."""
    return _load(path, AUDIO_CLASSIFIER, lambda recipe, config: build_audio_classifier(recipe, len(config["labels"])))


# -- image path -------------------------------------------------------------------------------

IMAGE_VQVAE = "image-vqvae"
IMAGE_PRIOR = "image-prior"


def build_image_vqvae(recipe: ImageRecipe) -> VQVAE:
    """2-D encoder -> the residual quantizer of the audio path (``quantizer.levels`` codes per
    grid cell) -> decoder; ``quantizer.kind = "none"`` puts a pass-through in its place (the
    plain autoencoder)."""
    m = recipe.model
    args = dict(channels=m.channels, downsamples=m.downsamples, latent_dim=m.latent_dim,
                res_blocks=m.res_blocks, global_code=m.global_code, image_size=m.image_size)
    quantizer = NoQuantizer() if recipe.quantizer.kind == "none" else build_quantizer(recipe, m.latent_dim)
    decoder = Decoder2d(m.in_channels, **args, input_norm=m.decoder_input_norm)
    return VQVAE(Encoder2d(m.in_channels, **args), quantizer, decoder)


def image_grid_shape(recipe: ImageRecipe) -> tuple[int, int]:
    """The grid of cells the encoder makes, (H, W)."""
    side = 1 if recipe.model.global_code else recipe.model.image_size // 2 ** recipe.model.downsamples
    return side, side


def image_code_grid_shape(recipe: ImageRecipe, levels: int) -> tuple[int, int]:
    """A grid of codes of ``levels`` levels, (H, W * levels): each cell's levels side by side."""
    h, w = image_grid_shape(recipe)
    return h, w * levels


def image_model_config(recipe: ImageRecipe) -> dict[str, Any]:
    return {
        "kind": IMAGE_VQVAE,
        "in_channels": recipe.model.in_channels,
        "image_size": recipe.model.image_size,
        "grid": list(image_grid_shape(recipe)),
        "levels": recipe.quantizer.levels,
        "num_codes": recipe.quantizer.num_codes if recipe.quantizer.kind != "none" else 0,
        "bits_per_image": (math.prod(image_code_grid_shape(recipe, recipe.quantizer.levels))
                           * math.log2(recipe.quantizer.num_codes)
                           if recipe.quantizer.kind != "none" else None),
        "recipe": recipe.to_dict(),
    }


def build_image_prior(recipe: ImageRecipe, num_labels: int) -> GatedPixelCNN:
    p = recipe.prior
    return GatedPixelCNN(recipe.quantizer.num_codes, channels=p.channels, layers=p.layers,
                         kernel=p.kernel, num_labels=num_labels, null_label=p.label_dropout > 0)


def image_prior_config(recipe: ImageRecipe, vqvae_config: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    return {
        "kind": IMAGE_PRIOR,
        "vqvae_model_id": vqvae_config["model_id"],
        "vqvae_codes_id": codes_id(vqvae_config),  # the codes it models (a decoder-only fine-tune keeps them)
        "levels": recipe.prior.levels,
        "grid": list(image_code_grid_shape(recipe, recipe.prior.levels)),  # (H, W * levels)
        "num_codes": recipe.quantizer.num_codes,
        "labels": labels,
        "recipe": recipe.to_dict(),
    }


def _load(path: str | Path, kind: str, build) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model of ``kind`` in a model directory with ``build(recipe, config)``."""
    config = read_config(path)
    if config["kind"] != kind:
        raise VqaudioError(f"model {path}: is a '{config['kind']}' model, not an {kind} model; "
                           "pass a model folder of the right kind")
    try:
        recipe = from_dict(config["recipe"], f"{path}/config.json")
        model = build(recipe, config)
    except (KeyError, TypeError) as e:
        raise VqaudioError(f"model {path}: config.json lacks a valid recipe ({e})") from None
    load_into(model, path)
    return model.eval(), config


def load_image_vqvae(path: str | Path) -> tuple[VQVAE, dict[str, Any]]:
    return _load(path, IMAGE_VQVAE, lambda recipe, config: build_image_vqvae(recipe))


def load_image_prior(path: str | Path) -> tuple[GatedPixelCNN, dict[str, Any]]:
    return _load(path, IMAGE_PRIOR, lambda recipe, config: build_image_prior(recipe, len(config["labels"])))
