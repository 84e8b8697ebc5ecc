"""The image path's commands on files: resynth (image -> codes -> image), eval, sample."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from vqaudio.atomic import check_output_path
from vqaudio.build import load_image_prior, load_image_vqvae
from vqaudio.checkpoint import same_codes
from vqaudio.codec import resolve_model_dir
from vqaudio.data.images import IMAGE_EXTENSIONS, image_grid, load_images, read_image, write_image
from vqaudio.errors import VqaudioError
from vqaudio.image_stages import decode_grids, encode_images, grid_nats
from vqaudio.metrics import perplexity
from vqaudio.priors.sampling import Controls


def psnr_db(mse: float) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]."""
    return 10 * math.log10(1 / max(mse, 1e-12))


@torch.no_grad()
def resynth_images(inputs: list[Path], output: Path | None, model: Path) -> Iterator[dict]:
    """Reconstruct image files through the VQ-VAE: ``glyph.png`` -> ``glyph_resynth.png``
    (or ``output`` for one input, or files in the ``output`` folder for several)."""
    vqvae, config = load_image_vqvae(resolve_model_dir(model))
    if len(inputs) > 1 and output is not None and not output.is_dir():
        raise VqaudioError(f"{output}: several inputs need an existing output folder")
    jobs = []  # every input is read and every output checked before the first is written
    for src in inputs:
        if output is None:
            dst = src.with_name(f"{src.stem}_resynth.png")
        else:
            dst = output / f"{src.stem}_resynth.png" if output.is_dir() else output
        x = read_image(src, config["in_channels"], config["image_size"])[None]
        if dst.resolve() == src.resolve():
            raise VqaudioError(f"{dst}: the output would overwrite the input; choose another name")
        if dst.suffix.lower() not in IMAGE_EXTENSIONS:
            raise VqaudioError(f"{dst}: images are written as PNG; give an output name ending in .png")
        check_output_path(dst, str(dst))
        jobs.append((dst, x))
    if len({dst.resolve() for dst, _ in jobs}) != len(jobs):
        raise VqaudioError("two inputs would write the same output file; give them different names")
    for dst, x in jobs:
        out = vqvae(x)
        mse = F.mse_loss(out.x_hat, x).item()
        write_image(dst, out.x_hat[0].clamp(0, 1))
        yield {"output": str(dst), "mse": mse, "psnr_db": psnr_db(mse),
               "grid": config["grid"], "bits": config["bits_per_image"]}


@torch.no_grad()
def evaluate_images(inputs: list[Path], model: Path) -> dict:
    """MSE / PSNR of the reconstructions, code use, and (when the run has a prior) the prior's
    bits per code and bits per pixel, over image files, an .npz / IDX set or a PNG folder."""
    vqvae_dir = resolve_model_dir(model)
    run = vqvae_dir.parent  # where a prior/ beside the VQ-VAE would be
    vqvae, config = load_image_vqvae(vqvae_dir)
    images, names = [], []  # names: the label name of every image, or None
    for path in inputs:
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(read_image(path, config["in_channels"], config["image_size"])[None])
            names.append(None)
        else:
            data = load_images(path)
            images.append(data.images)
            names += ([None] * len(data.images) if data.labels is None
                      else [data.label_names[i] for i in data.labels.tolist()])
    x = torch.cat(images)
    if x.shape[1:] != (config["in_channels"], config["image_size"], config["image_size"]):
        raise VqaudioError(f"the images are {tuple(x.shape[1:])} (C, H, W), but this model takes "
                           f"({config['in_channels']}, {config['image_size']}, {config['image_size']})")
    x_hat = torch.cat([vqvae(b).x_hat for b in x.split(512)])
    mse = F.mse_loss(x_hat, x).item()
    summary: dict = {"images": len(x), "mse": mse, "psnr_db": psnr_db(mse)}
    if not config["num_codes"]:
        return summary  # a plain autoencoder: no codes
    codes = encode_images(vqvae, x)
    k = config["num_codes"]
    summary.update(bits_per_image=config["bits_per_image"], perplexity=perplexity(codes.flatten(), k),
                   codes_used_share=codes.unique().numel() / k)
    if (run / "prior" / "config.json").is_file():
        prior, prior_config = load_image_prior(run / "prior")
        vocab = prior_config["labels"]
        label_ids = None
        if vocab:
            unknown = {n for n in names if n not in vocab}
            if unknown:
                raise VqaudioError(f"this prior is conditioned on the labels {', '.join(vocab)}; evaluate a "
                                   f"set labelled with them (found {sorted(map(str, unknown))[:3]})")
            label_ids = torch.tensor([vocab.index(n) for n in names])
        # The levels it models, cut from the codes above rather than encoding the images again.
        prior_codes = codes.unflatten(-1, (-1, config["levels"]))[..., : prior_config["levels"]].flatten(-2)
        nats = grid_nats(prior, prior_codes, label_ids)
        summary["prior_bits_per_code"] = nats / prior_codes.numel() / math.log(2)
        summary["prior_bits_per_dim"] = nats / x[0].numel() / len(x) / math.log(2)  # per pixel value
        summary["log2_k"] = math.log2(k)
    return summary


@torch.no_grad()
def sample_images(vqvae_dir: Path, prior_dir: Path, num: int, output: Path, controls: Controls,
                  label_ids: torch.Tensor | None) -> dict:
    """``num`` glyphs from the PixelCNN, decoded, written as one grid image."""
    if output.suffix.lower() != ".png":
        raise VqaudioError(f"-o {output}: image samples are written as one PNG grid; give a name ending in .png")
    vqvae, config = load_image_vqvae(vqvae_dir)
    prior, prior_config = load_image_prior(prior_dir)
    if not same_codes(prior_config, config):
        raise VqaudioError(f"model {prior_dir}: this prior was trained on the codes of another VQ-VAE; "
                           "retrain it with --stage prior")
    grids = prior.sample(num, tuple(prior_config["grid"]), controls, label_ids)
    images = decode_grids(vqvae, grids, prior_config["levels"]).clamp(0, 1)
    write_image(output, image_grid(images, nrow=math.ceil(math.sqrt(num))))
    return {"output": str(output), "images": num, "grid": prior_config["grid"]}
