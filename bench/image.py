"""The image path on KMNIST: VQ-VAE against a plain autoencoder of the same shape, the prior's
likelihood, and training time. Run by hand (not a test):

    python bench/image.py                      # recipes/kmnist.toml, runs in /tmp/vqaudio-bench-image
    python bench/image.py --recipe recipes/kmnist_smoke.toml --out /tmp/b   # a quick check

Trains, each with ``vqaudio train`` in a subprocess (wall time measured around it):
1. the recipe as it is (VQ-VAE on a 7x7 grid of codes, then the PixelCNN prior);
2. the same recipe with ``quantizer.kind=none``: a plain autoencoder of the same shape;
3. the single global code of the Keras example (``model.global_code=true``, K = 64, D = 16),
   VQ-VAE stage only.
Then reports on the validation split (the recipe's last ``data.val_count`` images): MSE and
PSNR of each, the VQ-VAE / autoencoder MSE ratio (goal <= 1.1), and the prior's NLL in bits
per code against log2 K and the unigram entropy of the validation codes.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent


def train(recipe: Path, out: Path, *overrides: str, stage: str = "all") -> float:
    args = [sys.executable, "-m", "vqaudio", "train", str(recipe), "--out", str(out), "--stage", stage]
    for o in overrides:
        args += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    return time.perf_counter() - t0


@torch.no_grad()
def val_mse(run: Path, images: torch.Tensor) -> float:
    from vqaudio.build import load_image_vqvae

    model, _ = load_image_vqvae(run / "vqvae")
    return sum(F.mse_loss(model(x).x_hat, x, reduction="sum").item() for x in images.split(500)) / images.numel()


@torch.no_grad()
def prior_bits(run: Path, images: torch.Tensor, labels: torch.Tensor | None) -> tuple[float, float, int]:
    from vqaudio.build import load_image_prior, load_image_vqvae
    from vqaudio.image_stages import encode_images, grid_nats
    from vqaudio.metrics import unigram_entropy_bits

    vqvae, _ = load_image_vqvae(run / "vqvae")
    prior, config = load_image_prior(run / "prior")
    codes = encode_images(vqvae, images)
    bits = grid_nats(prior, codes, labels if config["labels"] else None) / codes.numel() / math.log(2)
    return bits, unigram_entropy_bits(codes.flatten(), config["num_codes"]), config["num_codes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "kmnist.toml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/vqaudio-bench-image"))
    args = ap.parse_args()

    from vqaudio.config import load_recipe
    from vqaudio.image_stages import image_splits

    recipe = load_recipe(args.recipe)
    _, val = image_splits(recipe)
    seconds = {
        "vqvae + prior": train(args.recipe, args.out / "vq"),
        "autoencoder": train(args.recipe, args.out / "ae", "quantizer.kind=none", stage="vqvae"),
        "global code": train(args.recipe, args.out / "global", "model.global_code=true",
                             "quantizer.num_codes=64", "model.latent_dim=16", stage="vqvae"),
    }
    mse = {name: val_mse(args.out / folder, val.images)
           for name, folder in (("vqvae + prior", "vq"), ("autoencoder", "ae"), ("global code", "global"))}
    bits, unigram, k = prior_bits(args.out / "vq", val.images, val.labels)

    print(f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"- Date: {datetime.date.today()}; recipe {args.recipe.name}; validation: {len(val.images)} images\n")
    print("| model | training wall time | val MSE | PSNR dB | MSE / autoencoder |")
    print("|---|---:|---:|---:|---:|")
    for name in mse:
        label = {"vqvae + prior": f"VQ-VAE {recipe.quantizer.num_codes} codes x 7x7 (+ PixelCNN)",
                 "autoencoder": "plain autoencoder, same shape", "global code": "VQ-VAE, one global code, K = 64"}[name]
        print(f"| {label} | {seconds[name] / 60:.1f} min | {mse[name]:.5f} | {10 * math.log10(1 / mse[name]):.2f} | "
              f"{mse[name] / mse['autoencoder']:.2f}x |")
    print(f"\nPrior on the validation codes: {bits:.3f} bits/code; unigram entropy {unigram:.3f}; log2 K = {math.log2(k):.0f}")


if __name__ == "__main__":
    main()
