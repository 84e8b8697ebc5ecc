"""One training loop for every stage (VQ-VAE, prior) and both modalities.

A *stage* owns a model and knows its loss, its validation and how to save itself; ``fit`` owns
everything else: AdamW, warm-up + cosine schedule, gradient clipping, progress, TensorBoard
scalars, periodic validation and checkpoints in the run directory.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from vqaudio.config import ImageRecipe, Recipe, TrainConfig
from vqaudio.errors import VqaudioError


class Stage(Protocol):
    name: str  # "vqvae", "prior": the model's folder in the run directory
    model: nn.Module

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]: ...

    def validate(self, writer, step: int) -> dict[str, float]: ...

    def save(self, directory: Path) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(cfg: TrainConfig):
    """Linear warm-up to the peak, then cosine decay to 0 at the last step."""
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def forever(loader) -> Iterator:
    while True:
        yield from loader


def fit(stage: Stage, batches: Iterator, cfg: TrainConfig, run_dir: Path, writer) -> dict:
    """Train ``stage.model`` for ``cfg.steps`` steps; returns the last validation metrics."""
    model = stage.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    tag = stage.name
    interactive = sys.stderr.isatty()
    bar = tqdm(range(1, cfg.steps + 1), desc=tag, disable=not interactive, dynamic_ncols=True)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    for step in bar:
        model.train()
        loss, scalars = stage.loss(next(batches))
        if not torch.isfinite(loss):
            raise VqaudioError(f"training {tag}: the loss became {loss.item()} at step {step}; "
                               "lower train.lr or check the data (the last checkpoint is intact)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        opt.step()
        sched.step()

        if step % cfg.log_every == 0 or step == cfg.steps:
            for k, v in scalars.items():
                writer.add_scalar(f"{tag}/train/{k}", v, step)
            writer.add_scalar(f"{tag}/train/lr", sched.get_last_lr()[0], step)
            writer.add_scalar(f"{tag}/train/grad_norm", float(grad_norm), step)
            shown = [k for k in ("loss", "perplexity", "codes_used") if k in scalars]
            bar.set_postfix({k: f"{scalars[k]:.3g}" for k in shown}, refresh=False)
        if step % cfg.val_every == 0 or step == cfg.steps:
            model.eval()
            with torch.no_grad():
                metrics = stage.validate(writer, step)
            writer.flush()
            if not interactive:
                rate = step / (time.perf_counter() - start)
                shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                print(f"{tag} step {step}/{cfg.steps} ({rate:.1f} steps/s): {shown}", flush=True)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_checkpoint(stage, run_dir, step, cfg.keep_checkpoints)
    stage.save(run_dir / tag)
    return metrics


def save_checkpoint(stage: Stage, run_dir: Path, step: int, keep: int) -> Path:
    """``run_dir/checkpoints/<stage>-step<N>``, a full model directory; only the newest
    ``keep`` are kept."""
    folder = run_dir / "checkpoints"
    path = folder / f"{stage.name}-step{step:07d}"
    stage.save(path)
    old = sorted(folder.glob(f"{stage.name}-step*"))[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return path


STAGES = ("vqvae", "prior", "all")


def train_recipe(recipe: Recipe | ImageRecipe, out: Path | None = None, stage: str = "all") -> Path:
    """Train the stages of a recipe into ``out`` (default ``runs/<recipe name>``): the VQ-VAE
    (``run/vqvae``), then the prior over its codes (``run/prior``). ``stage="prior"`` reuses
    the VQ-VAE already in the run folder."""
    if stage not in STAGES:
        raise VqaudioError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
    from torch.utils.tensorboard import SummaryWriter

    if isinstance(recipe, ImageRecipe):
        from vqaudio.image_stages import image_prior_stage as prior_stage_of
        from vqaudio.image_stages import image_vqvae_stage as vqvae_stage_of
        if stage == "all" and recipe.quantizer.kind == "none":
            stage = "vqvae"  # a plain autoencoder has no codes for a prior
    else:
        from vqaudio.stages import audio_prior_stage as prior_stage_of
        from vqaudio.stages import audio_vqvae_stage as vqvae_stage_of

    run_dir = Path(out) if out else Path("runs") / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(run_dir / "tb"))
    try:
        if stage in ("vqvae", "all"):
            _threads(recipe.train)
            seed_everything(recipe.train.seed)
            vq_stage, batches = vqvae_stage_of(recipe)
            fit(vq_stage, batches, recipe.train, run_dir, writer)
        if stage in ("prior", "all"):
            _threads(recipe.prior_train)
            seed_everything(recipe.prior_train.seed)
            prior_stage, batches = prior_stage_of(recipe, run_dir)
            fit(prior_stage, batches, recipe.prior_train, run_dir, writer)
    finally:
        writer.close()
    return run_dir


def _threads(cfg: TrainConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
