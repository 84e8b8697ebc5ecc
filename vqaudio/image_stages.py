"""Training stages of the image path: the 2-D VQ-VAE and the PixelCNN over its code grids.
The loop (train.fit), checkpoints and TensorBoard writer are the audio path's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqaudio.build import (build_image_prior, build_image_vqvae, image_grid_shape, image_model_config,
                           image_prior_config, load_image_vqvae)
from vqaudio.checkpoint import save_model_dir
from vqaudio.config import ImageRecipe
from vqaudio.data.images import ImageSet, image_grid, load_images, split_images
from vqaudio.errors import VqaudioError
from vqaudio.metrics import perplexity, unigram_entropy_bits
from vqaudio.priors.sampling import Controls, drop_labels
from vqaudio.data.batches import KeyedTensors


def image_splits(recipe: ImageRecipe) -> tuple[ImageSet, ImageSet]:
    """The recipe's images, checked against the model's size and channels, split train/val."""
    d, m = recipe.data, recipe.model
    data = load_images(recipe.resolve(d.path), recipe.resolve(d.labels) if d.labels else None)
    _, c, h, w = data.images.shape
    if (c, h, w) != (m.in_channels, m.image_size, m.image_size):
        raise VqaudioError(f"recipe {recipe.source}: data.path holds {c}-channel {h}x{w} images, but "
                           f"model.in_channels = {m.in_channels} and model.image_size = {m.image_size}; "
                           "make them match")
    if d.max_images:
        data = ImageSet(data.images[: d.max_images],
                        None if data.labels is None else data.labels[: d.max_images], data.label_names)
    if len(data.images) <= d.val_count:
        raise VqaudioError(f"recipe {recipe.source}: data.val_count = {d.val_count} leaves no training "
                           f"images out of {len(data.images)}; lower it")
    if recipe.prior.conditional and data.labels is None:
        raise VqaudioError(f"recipe {recipe.source}: prior.conditional is true but {d.path} has no labels; "
                           "give data.labels or set prior.conditional = false")
    return split_images(data, d.val_count)


def image_items(images: Tensor, labels: Tensor | None) -> KeyedTensors:
    """Training items (image or code grid, label); labels are zeros when the set has none."""
    return KeyedTensors(images, labels if labels is not None else torch.zeros(len(images), dtype=torch.long))


def side_by_side(a: Tensor, b: Tensor, nrow: int = 8) -> Tensor:
    """Two image batches (N, C, H, W) as one grid image: a's grid, a gap, b's grid."""
    ga, gb = image_grid(a, nrow=nrow), image_grid(b, nrow=nrow)
    return torch.cat([ga, torch.ones(ga.shape[0], ga.shape[1], 4), gb], dim=2)


class ImageVQVAEStage:
    name = "vqvae"

    def __init__(self, recipe: ImageRecipe, val: ImageSet):
        self.recipe, self.val = recipe, val.images
        self.model = build_image_vqvae(recipe)
        if recipe.train.decoder_only:
            self.model.freeze_codes()
        self.codes_of: dict[str, str] = {}  # {"codes_id": …} of the --init model a decoder-only run keeps
        self.quantized = recipe.quantizer.kind != "none"
        self.num_codes = recipe.quantizer.num_codes if self.quantized else 0  # collapse warning

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]:
        x, _ = batch
        out = self.model(x)
        mse = F.mse_loss(out.x_hat, x)
        total = mse + out.q.loss
        scalars = {"loss": total.item(), "mse": mse.item()}
        if self.quantized:
            scalars.update(quantizer=out.q.loss.item(), perplexity=out.q.perplexity.item(),
                           codes_used=float(out.q.used))
        return total, scalars

    def validate(self, writer, step: int) -> dict[str, float]:
        """Validation MSE and PSNR, code use; originals beside reconstructions; code histogram."""
        device = next(self.model.parameters()).device
        outs = [self.model(x.to(device)) for x in self.val.split(256)]
        x_hat = torch.cat([o.x_hat.cpu() for o in outs])
        mse = F.mse_loss(x_hat, self.val).item()
        metrics = {"mse": mse, "psnr_db": 10 * math.log10(1 / max(mse, 1e-12))}
        if self.quantized:
            codes = torch.cat([o.q.codes.flatten().cpu() for o in outs])
            k = self.recipe.quantizer.num_codes
            metrics.update(perplexity=perplexity(codes, k), codes_used=float(codes.unique().numel()))
            writer.add_histogram(f"{self.name}/codes", codes.numpy(), step, bins=np.arange(k + 1) - 0.5)
        for key, v in metrics.items():
            writer.add_scalar(f"{self.name}/val/{key}", v, step)
        writer.add_image(f"{self.name}/originals_vs_reconstructions",
                         side_by_side(self.val[:32], x_hat[:32].clamp(0, 1)), step)
        return metrics

    def save(self, directory: Path, extra: dict[str, bytes] | None = None) -> None:
        save_model_dir(directory, self.model, {**image_model_config(self.recipe), **self.codes_of}, extra)


class ImagePriorStage:
    """PixelCNN cross-entropy on the code grids of the VQ-VAE in the run folder (its first
    ``prior.levels`` levels)."""

    name = "prior"

    def __init__(self, recipe: ImageRecipe, vqvae, vqvae_config: dict, val_codes: Tensor,
                 val_labels: Tensor, train_codes: Tensor, labels: list[str]):
        self.recipe, self.vqvae, self.vqvae_config, self.labels = recipe, vqvae, vqvae_config, labels
        self.val_codes, self.val_labels, self.train_codes = val_codes, val_labels, train_codes
        self.model = build_image_prior(recipe, len(labels))

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.labels else None

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]:
        codes, labels = batch
        labels = drop_labels(labels, self.recipe.prior.label_dropout, len(self.labels))
        logits = self.model(codes, self._labels(labels))
        nll = F.cross_entropy(logits.flatten(0, 2), codes.flatten())
        return nll, {"loss": nll.item(), "bits_per_code": nll.item() / math.log(2)}

    def validate(self, writer, step: int) -> dict[str, float]:
        """Bits per code on the validation grids beside log2 K and the unigram entropy;
        decoded prior samples beside grids of independently drawn codes."""
        k = self.recipe.quantizer.num_codes
        bits = grid_nats(self.model, self.val_codes, self._labels(self.val_labels)) / self.val_codes.numel() / math.log(2)
        metrics = {"bits_per_code": bits, "unigram_entropy_bits": unigram_entropy_bits(self.val_codes.flatten(), k),
                   "log2_k": math.log2(k)}
        for key, v in metrics.items():
            writer.add_scalar(f"{self.name}/val/{key}", v, step)
        n = 32
        labels = torch.arange(n) % len(self.labels) if self.labels else None
        controls = Controls(seed=step, guidance=self.recipe.prior.guidance, temperature=self.recipe.prior.temperature)
        grids = self.model.sample(n, tuple(self.val_codes.shape[1:]), controls, labels).cpu()
        independent = independent_codes(self.train_codes, n, k, seed=step)
        writer.add_image(f"{self.name}/samples_vs_independent_codes",
                         side_by_side(decode_grids(self.vqvae, grids, self.recipe.prior.levels).clamp(0, 1),
                                      decode_grids(self.vqvae, independent, self.recipe.prior.levels).clamp(0, 1)), step)
        return metrics

    def save(self, directory: Path, extra: dict[str, bytes] | None = None) -> None:
        save_model_dir(directory, self.model, image_prior_config(self.recipe, self.vqvae_config, self.labels), extra)


@torch.no_grad()
def grid_nats(prior, codes: Tensor, labels: Tensor | None, batch: int = 512) -> float:
    """The prior's total negative log-likelihood (nats) of code grids (N, H, W * levels); ``labels``
    (N,) for a conditioned prior, else None."""
    total, device = 0.0, next(prior.parameters()).device
    for i in range(0, len(codes), batch):
        c = codes[i: i + batch].to(device)
        logits = prior(c, None if labels is None else labels[i: i + batch].to(device))
        total += F.cross_entropy(logits.flatten(0, 2), c.flatten(), reduction="sum").item()
    return total


def independent_codes(codes: Tensor, n: int, num_codes: int, seed: int) -> Tensor:
    """n grids whose codes are drawn independently from the codes' unigram distribution: the
    baseline without spatial structure that a prior's samples are compared with."""
    probs = torch.bincount(codes.flatten(), minlength=num_codes).float()
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(probs, n * codes[0].numel(), replacement=True, generator=g).view(n, *codes.shape[1:])


def image_vqvae_stage(recipe: ImageRecipe):
    train, val = image_splits(recipe)
    return ImageVQVAEStage(recipe, val), image_items(train.images, train.labels)


@torch.no_grad()
def encode_images(model, images: Tensor, levels: int | None = None) -> Tensor:
    """Images (N, C, H', W') -> code grids (N, H, W * levels), the layout the prior models:
    the codes of the first ``levels`` levels (default all), (N, H, W, levels), with each cell's
    levels side by side in its row, coarse first, so the PixelCNN's raster order draws a cell's
    levels one after the other."""
    return torch.cat([model.encode(x, levels).flatten(-2) for x in images.split(512)])


def decode_grids(model, grids: Tensor, levels: int | None = None) -> Tensor:
    """Code grids (N, H, W * levels) -> images: the inverse of :func:`encode_images`."""
    return model.decode(grids.unflatten(-1, (-1, levels or model.quantizer.num_levels)))


def image_prior_stage(recipe: ImageRecipe, run_dir: Path):
    """The PixelCNN stage over the code grids of ``run_dir/vqvae`` (encoded once, in memory:
    10,000 glyphs take seconds)."""
    if recipe.quantizer.kind == "none":
        raise VqaudioError("a plain autoencoder (quantizer.kind = 'none') has no codes to train a prior "
                           "on; train with --stage vqvae")
    if not (run_dir / "vqvae" / "config.json").is_file():
        raise VqaudioError(f"no trained VQ-VAE in {run_dir / 'vqvae'}; train it first with "
                           f"'vqaudio train {recipe.source or 'RECIPE'} --stage vqvae --out {run_dir}'")
    vqvae, config = load_image_vqvae(run_dir / "vqvae")
    if (config["num_codes"] != recipe.quantizer.num_codes or config["grid"] != list(image_grid_shape(recipe))
            or config["levels"] != recipe.quantizer.levels):
        raise VqaudioError(f"the VQ-VAE in {run_dir / 'vqvae'} does not match this recipe's quantizer "
                           "or grid; retrain it with --stage all")
    train, val = image_splits(recipe)
    levels = recipe.prior.levels
    train_codes, val_codes = encode_images(vqvae, train.images, levels), encode_images(vqvae, val.images, levels)
    labels = train.label_names if recipe.prior.conditional else []
    zeros = lambda s: torch.zeros(len(s.images), dtype=torch.long)
    val_labels = val.labels if val.labels is not None else zeros(val)
    stage = ImagePriorStage(recipe, vqvae, config, val_codes, val_labels, train_codes, labels)
    return stage, image_items(train_codes, train.labels)

