"""The image path on KMNIST: the VQ-VAE against a plain autoencoder of the same shape, and its
prior's samples judged by a classifier. Run by hand (not a test):

    python bench/image.py                        # recipes/kmnist.toml, runs in /tmp/vqaudio-bench-image
    python bench/image.py --ablate               # also the table of levers (VQ-VAE stage only)
    python bench/image.py --grids bench          # also write the README's sample and real-glyph grids
    python bench/image.py --recipe recipes/kmnist_smoke.toml --out /tmp/b   # a quick check

What it does, each training by ``vqaudio train`` in a subprocess with the wall time around it:
1. trains the recipe as it is (VQ-VAE, then the PixelCNN prior) and the same recipe with
   ``quantizer.kind=none``: a plain autoencoder of the same shape, the same steps;
2. reports validation MSE / PSNR of both and their ratio (goal <= 1.2), and the prior's bits per
   code;
3. trains the judge, a small CNN classifier, on the training split only, and reports its
   accuracy on the validation glyphs and on their VQ-VAE reconstructions;
4. samples 16 glyphs for every class with ``vqaudio sample --num 16 --label d`` (seed d), cuts
   the PNG grid back into glyphs, and reports the share the judge gives the asked class (goal
   >= 80%), per class and overall;
5. with ``--ablate``: one row per lever (codebook size, code dimension, codes per cell, grid,
   steps), VQ-VAE stage only, as MSE / autoencoder.
Validation is the recipe's last ``data.val_count`` images.
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

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

REPO = Path(__file__).resolve().parent.parent
SAMPLES_PER_CLASS = 16

# The levers, each row a change from the shipped recipe (VQ-VAE stage only, the same steps).
ABLATION = {
    "1 code per cell (the first recipe: K = 128, beta 0.25)": ["quantizer.levels=1", "quantizer.beta=0.25"],
    "4 residual levels, beta 0.25": ["quantizer.levels=4", "quantizer.beta=0.25"],
    "4 residual levels, beta 0.25, K = 256": ["quantizer.levels=4", "quantizer.beta=0.25", "quantizer.num_codes=256"],
    "6 residual levels, beta 0.25": ["quantizer.levels=6", "quantizer.beta=0.25"],
    "4 residual levels": ["quantizer.levels=4"],
    "6 residual levels": ["quantizer.levels=6"],
    "beta 0.1": ["quantizer.beta=0.1"],
    "beta 0 (the EMA codebook alone)": ["quantizer.beta=0"],
    "the decoder reads the latent as it is (no unit-RMS input)": ["model.decoder_input_norm=false"],
    "the recipe: 8 residual levels, K = 128, beta 0.05, decoder input at unit RMS": [],
}


def train(recipe: Path, out: Path, *overrides: str, stage: str = "all") -> float:
    args = [sys.executable, "-m", "vqaudio", "train", str(recipe), "--out", str(out), "--stage", stage]
    for o in overrides:
        args += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    return time.perf_counter() - t0


@torch.no_grad()
def reconstructions(run: Path, images: Tensor) -> Tensor:
    """The VQ-VAE's (or autoencoder's) reconstructions, in [0, 1] (its decoder ends in a sigmoid)."""
    from vqaudio.build import load_image_vqvae

    model, _ = load_image_vqvae(run / "vqvae")
    return torch.cat([model(x).x_hat for x in images.split(500)])


def val_mse(run: Path, images: Tensor) -> float:
    return F.mse_loss(reconstructions(run, images), images).item()


@torch.no_grad()
def prior_bits(run: Path, images: Tensor, labels: Tensor | None) -> tuple[float, float, int]:
    from vqaudio.build import load_image_prior, load_image_vqvae
    from vqaudio.image_stages import encode_images, grid_nats
    from vqaudio.metrics import unigram_entropy_bits

    vqvae, _ = load_image_vqvae(run / "vqvae")
    prior, config = load_image_prior(run / "prior")
    codes = encode_images(vqvae, images, config["levels"])
    bits = grid_nats(prior, codes, labels if config["labels"] else None) / codes.numel() / math.log(2)
    return bits, unigram_entropy_bits(codes.flatten(), config["num_codes"]), config["num_codes"]


# -- the judge ----------------------------------------------------------------------------------


def judge_net(classes: int) -> nn.Module:
    """A small CNN classifier for 28x28 glyphs: two conv blocks and two linear layers."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes))


def shifted(x: Tensor, g: torch.Generator, most: int = 2) -> Tensor:
    """Each image moved by up to ``most`` pixels each way (zero fill): the judge should not
    care where in the frame a glyph sits."""
    padded = F.pad(x, (most,) * 4)
    dy, dx = torch.randint(0, 2 * most + 1, (2,), generator=g).tolist()
    return padded[:, :, dy: dy + x.shape[2], dx: dx + x.shape[3]]


def train_judge(images: Tensor, labels: Tensor, classes: int, epochs: int = 8, seed: int = 0) -> nn.Module:
    """Trains the judge on the training split only (Adam, batch 128, shifted copies)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = judge_net(classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=g).split(128):
            loss = F.cross_entropy(net(shifted(images[idx], g)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def judged(net: nn.Module, images: Tensor) -> Tensor:
    return torch.cat([net(x).argmax(1) for x in images.split(500)])


def read_grid(path: Path) -> Tensor:
    """A grayscale PNG grid as written by ``vqaudio sample`` -> (1, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)[None]


def sample_glyphs(run: Path, out: Path, label: str, seed: int) -> Tensor:
    """``vqaudio sample --num 16 --label LABEL`` in a subprocess; its PNG grid cut into glyphs."""
    from vqaudio.data.images import grid_tiles

    png = out / f"samples-{label}.png"
    subprocess.run([sys.executable, "-m", "vqaudio", "sample", "--num", str(SAMPLES_PER_CLASS), "--label", label,
                    "--seed", str(seed), "--model", str(run), "-o", str(png)],
                   check=True, stdout=subprocess.DEVNULL, env={**os.environ})
    nrow = math.ceil(math.sqrt(SAMPLES_PER_CLASS))  # the layout sample_images writes
    return grid_tiles(read_grid(png), SAMPLES_PER_CLASS, (28, 28), nrow=nrow)


def write_grids(directory: Path, samples: dict[int, Tensor], val_images: Tensor, val_labels: Tensor,
                per_class: int = 10) -> None:
    """The README's pictures: one row per class, ``per_class`` prior samples in
    kmnist-samples.png and the first validation glyphs of that class in kmnist-real.png."""
    from vqaudio.data.images import image_grid, write_image

    real = torch.cat([val_images[val_labels == c][:per_class] for c in sorted(samples)])
    fake = torch.cat([samples[c][:per_class] for c in sorted(samples)])
    write_image(directory / "kmnist-samples.png", image_grid(fake, nrow=per_class))
    write_image(directory / "kmnist-real.png", image_grid(real, nrow=per_class))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "kmnist.toml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/vqaudio-bench-image"))
    ap.add_argument("--ablate", action="store_true", help="also train the rows of the lever table")
    ap.add_argument("--grids", type=Path, help="write kmnist-samples.png and kmnist-real.png here")
    args = ap.parse_args()

    from vqaudio.config import load_recipe
    from vqaudio.image_stages import image_splits

    recipe = load_recipe(args.recipe)
    train_set, val = image_splits(recipe)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = {"vq": train(args.recipe, args.out / "vq"),
               "ae": train(args.recipe, args.out / "ae", "quantizer.kind=none", stage="vqvae")}
    mse = {name: val_mse(args.out / name, val.images) for name in seconds}
    bits, unigram, k = prior_bits(args.out / "vq", val.images, val.labels)

    q, m = recipe.quantizer, recipe.model
    grid = m.image_size // 2 ** m.downsamples
    print(f"- Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"- Date: {datetime.date.today()}; recipe {args.recipe.name}; validation: {len(val.images)} images\n")
    print("| model | training wall time | val MSE | PSNR dB | MSE / autoencoder |")
    print("|---|---:|---:|---:|---:|")
    print(f"| VQ-VAE, {grid}x{grid} cells x {q.levels} codes of K = {q.num_codes} "
          f"({grid * grid * q.levels * math.log2(q.num_codes):.0f} bits), + PixelCNN | {seconds['vq'] / 60:.1f} min | "
          f"{mse['vq']:.5f} | {10 * math.log10(1 / mse['vq']):.2f} | {mse['vq'] / mse['ae']:.2f}x |")
    print(f"| plain autoencoder, same shape ({grid}x{grid}x{m.latent_dim} floats) | {seconds['ae'] / 60:.1f} min | "
          f"{mse['ae']:.5f} | {10 * math.log10(1 / mse['ae']):.2f} | 1.00x |")
    print(f"\nPrior on the validation codes: {bits:.3f} bits/code; unigram entropy {unigram:.3f}; "
          f"log2 K = {math.log2(k):.0f}")

    if train_set.labels is None:
        print("\nThe set has no labels: no judge.")
        return
    classes = len(train_set.label_names)
    t0 = time.perf_counter()
    judge = train_judge(train_set.images, train_set.labels, classes)
    judge_s = time.perf_counter() - t0
    real_acc = (judged(judge, val.images) == val.labels).float().mean().item()
    recon_acc = (judged(judge, reconstructions(args.out / "vq", val.images)) == val.labels).float().mean().item()
    samples, shares = {}, {}
    for c, name in enumerate(train_set.label_names):
        samples[c] = sample_glyphs(args.out / "vq", args.out, name, seed=c)
        shares[name] = (judged(judge, samples[c]) == c).float().mean().item()
    overall = sum(shares.values()) / len(shares)
    print(f"\nThe judge (trained on the {len(train_set.images)} training glyphs in {judge_s:.0f} s):\n")
    print("| glyphs | judged their class |")
    print("|---|---:|")
    print(f"| real validation glyphs ({len(val.images)}) | {real_acc:.1%} |")
    print(f"| their VQ-VAE reconstructions | {recon_acc:.1%} |")
    print(f"| prior samples, {SAMPLES_PER_CLASS} per class ({SAMPLES_PER_CLASS * classes}) | **{overall:.1%}** |")
    print("\nPer class: " + ", ".join(f"{n} {s:.0%}" for n, s in shares.items()))
    if args.grids:
        write_grids(args.grids, samples, val.images, val.labels)
        print(f"\nwrote {args.grids / 'kmnist-samples.png'} and {args.grids / 'kmnist-real.png'}")

    if args.ablate:
        print("\n| lever (one change from the recipe) | codes per image | bits per image | VQ-VAE wall time | "
              "val MSE | MSE / autoencoder |")
        print("|---|---:|---:|---:|---:|---:|")
        for i, (name, overrides) in enumerate(ABLATION.items()):
            row = load_recipe(args.recipe, overrides)
            rq, rm = row.quantizer, row.model
            cells = (rm.image_size // 2 ** rm.downsamples) ** 2
            s = train(args.recipe, args.out / f"ablation-{i}", *overrides, stage="vqvae")
            e = val_mse(args.out / f"ablation-{i}", val.images)
            print(f"| {name} | {cells * rq.levels} | {cells * rq.levels * math.log2(rq.num_codes):.0f} | "
                  f"{s / 60:.1f} min | {e:.5f} | {e / mse['ae']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
