"""One training loop for every stage (VQ-VAE, prior) and both modalities.

A *stage* owns a model and knows its loss, its validation and how to save itself; ``fit`` owns
everything else: AdamW, warm-up + cosine schedule, gradient clipping, progress, TensorBoard
scalars, periodic validation and checkpoints in the run directory.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from vqaudio.config import ImageRecipe, Recipe, TrainConfig
from vqaudio.errors import Interrupted, VqaudioError


class Stage(Protocol):
    name: str  # "vqvae", "prior": the model's folder in the run directory
    model: nn.Module

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]: ...

    def validate(self, writer, step: int) -> dict[str, float]: ...

    def save(self, directory: Path, extra: dict[str, bytes] | None = None) -> None: ...


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


def shuffled_batches(n: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Endless batches of indices into n items: a fresh permutation every epoch, drawn from
    ``seed`` alone, so the batch of any step is known without replaying training: ``start``
    skips the first ``start`` batches (for --resume)."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)  # the last partial batch of an epoch is dropped
    for _ in range(start // per_epoch):
        torch.randperm(n, generator=generator)  # advance the generator past whole epochs
    skip = start % per_epoch
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        for b in range(skip, per_epoch):
            yield order[b * batch_size: (b + 1) * batch_size]
        skip = 0


BatchesFrom = Callable[[int], Iterator]  # start step -> the batches of steps start+1, start+2, …


def fit(stage: Stage, batches_from: BatchesFrom, cfg: TrainConfig, run_dir: Path, writer,
        resume: bool = False) -> dict:
    """Train ``stage.model`` for ``cfg.steps`` steps; returns the last validation metrics.

    With ``resume``, training continues from the newest complete checkpoint of this stage in
    ``run_dir/checkpoints`` (weights, optimizer, schedule, RNG states; the batches restart at
    the same step), so the result equals an uninterrupted run's. Ctrl-C saves a checkpoint of
    the last finished step and raises :class:`Interrupted`.
    """
    model = stage.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    tag = stage.name
    first = resume_from_checkpoint(stage, run_dir, opt, sched) if resume else 0
    batches = batches_from(first)
    interactive = sys.stderr.isatty()
    bar = tqdm(range(first + 1, cfg.steps + 1), desc=tag, disable=not interactive, dynamic_ncols=True,
               initial=first, total=cfg.steps)
    metrics: dict[str, float] = {}
    start, skipped = time.perf_counter(), 0
    with stop_on_ctrl_c() as stop_requested:
        for step in bar:
            model.train()
            loss, scalars = stage.loss(next(batches))
            opt.zero_grad(set_to_none=True)
            finite = bool(torch.isfinite(loss))
            if finite:
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                finite = bool(torch.isfinite(grad_norm))
            if not finite:
                if cfg.nonfinite == "stop":
                    raise VqaudioError(
                        f"training {tag}: the loss or its gradient became non-finite at step {step}; "
                        f"lower the learning rate or check the data, or set nonfinite = \"skip\" "
                        f"(the last checkpoint in {run_dir / 'checkpoints'} is intact)")
                skipped += 1  # nonfinite = "skip": drop this batch, keep the weights
                print(f"warning: {tag} step {step}: non-finite loss or gradient, batch skipped "
                      f"({skipped} so far)", file=sys.stderr, flush=True)
                writer.add_scalar(f"{tag}/train/skipped_batches", skipped, step)
                opt.zero_grad(set_to_none=True)
            else:
                opt.step()
            sched.step()

            if finite and (step % cfg.log_every == 0 or step == cfg.steps):
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
                warn_if_collapsed(stage, metrics, writer, step)
                writer.flush()
                if not interactive:
                    rate = (step - first) / (time.perf_counter() - start)
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                    print(f"{tag} step {step}/{cfg.steps} ({rate:.1f} steps/s): {shown}", flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop_requested():
                path = save_checkpoint(stage, run_dir, step, cfg.keep_checkpoints, opt, sched)
                if stop_requested():
                    bar.close()
                    raise Interrupted(f"interrupted at {tag} step {step}; checkpoint saved in {path}; "
                                      "continue with the same command and --resume")
    stage.save(run_dir / tag)
    return metrics


@contextmanager
def stop_on_ctrl_c():
    """While active, the first Ctrl-C only sets a flag (read with the yielded function), so
    training stops at the end of a whole step, with a consistent checkpoint; a second Ctrl-C
    interrupts at once."""
    requested = threading.Event()

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        print("\nstopping after this step (Ctrl-C again to stop now, without a checkpoint)",
              file=sys.stderr, flush=True)

    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set  # signals only reach the main thread
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def warn_if_collapsed(stage: Stage, metrics: dict[str, float], writer, step: int) -> None:
    """A codebook that uses under 10% of its codes has (mostly) collapsed: say so in the log
    and in TensorBoard; restarts (quantizer.restart_after) or k-means init usually help."""
    k = getattr(stage, "num_codes", 0)
    if not k or "codes_used" not in metrics:
        return
    used = metrics["codes_used"]
    writer.add_scalar(f"{stage.name}/val/codes_used_share", used / k, step)
    if used < 0.1 * k:
        message = (f"codebook collapse at {stage.name} step {step}: only {used:.0f} of {k} codes "
                   "used on the validation set; consider quantizer.restart_after, kmeans_init, a "
                   "smaller num_codes or a lower learning rate")
        print(f"warning: {message}", file=sys.stderr, flush=True)
        writer.add_text(f"{stage.name}/warnings", message, step)


def save_checkpoint(stage: Stage, run_dir: Path, step: int, keep: int, opt, sched) -> Path:
    """``run_dir/checkpoints/<stage>-step<N>``: a full model directory plus the training state
    (written atomically, as one folder); only the newest ``keep`` are kept."""
    from vqaudio.checkpoint import training_state_files

    folder = run_dir / "checkpoints"
    path = folder / f"{stage.name}-step{step:07d}"
    stage.save(path, extra=training_state_files(step, opt, sched))
    old = sorted(folder.glob(f"{stage.name}-step*"))[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return path


def resume_from_checkpoint(stage: Stage, run_dir: Path, opt, sched) -> int:
    """Load the newest complete checkpoint of ``stage`` into model, optimizer, scheduler and
    RNGs; returns its step (0 when there is none: the stage starts from scratch). A damaged
    newest checkpoint is skipped with a warning in favour of the one before it."""
    from vqaudio.checkpoint import load_into, read_config, read_training_state, restore_training_state

    candidates = sorted((run_dir / "checkpoints").glob(f"{stage.name}-step*"), reverse=True)
    expected = stage.recipe.to_dict()
    for path in candidates:
        try:
            config = read_config(path)
            differ = recipe_differences(config.get("recipe") or {}, expected)
            if differ:
                raise RecipeMismatch(f"--resume: {path} was trained with another recipe (differs in "
                                     f"{', '.join(differ[:4]) or 'its settings'}); resume with the same "
                                     "recipe and --set values, or train into a new --out folder")
            tensors, meta = read_training_state(path)
            load_into(stage.model, path)
            step = restore_training_state(tensors, meta, opt, sched)
        except RecipeMismatch:
            raise
        except VqaudioError as e:
            print(f"warning: skipping checkpoint {path.name}: {e}", file=sys.stderr, flush=True)
            continue
        print(f"resuming {stage.name} from {path} (step {step})", file=sys.stderr, flush=True)
        return step
    if candidates:
        print(f"warning: no usable {stage.name} checkpoint in {run_dir / 'checkpoints'}; "
              f"training {stage.name} from the start", file=sys.stderr, flush=True)
    return 0


class RecipeMismatch(VqaudioError):
    pass


# Settings that do not change what is computed: they may differ between a run and its resume.
RESUME_FREE = {"num_threads", "log_every", "val_every", "keep_checkpoints"}


def recipe_differences(trained: dict, current: dict) -> list[str]:
    """``section.key`` names whose values differ between two recipe dicts."""
    differ = []
    for sec in sorted(set(trained) | set(current)):
        a, b = trained.get(sec), current.get(sec)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += [f"{sec}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in RESUME_FREE]
        elif a != b:
            differ.append(sec)
    return differ


STAGES = ("vqvae", "prior", "all")


def train_recipe(recipe: Recipe | ImageRecipe, out: Path | None = None, stage: str = "all",
                 resume: bool = False) -> Path:
    """Train the stages of a recipe into ``out`` (default ``runs/<recipe name>``): the VQ-VAE
    (``run/vqvae``), then the prior over its codes (``run/prior``). ``stage="prior"`` reuses
    the VQ-VAE already in the run folder; ``resume`` continues each stage from its newest
    complete checkpoint (a finished stage resumes at its last step and only saves again)."""
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
    if resume and not (run_dir / "checkpoints").is_dir():
        raise VqaudioError(f"--resume: {run_dir} has no checkpoints to resume from; "
                           "train without --resume (or pass the run folder with --out)")
    writer = None
    try:
        for name, cfg, make in (("vqvae", recipe.train, lambda: vqvae_stage_of(recipe)),
                                ("prior", recipe.prior_train, lambda: prior_stage_of(recipe, run_dir))):
            if stage not in (name, "all"):
                continue
            _threads(cfg)
            seed_everything(cfg.seed)
            current, batches_from = make()  # loads the data: bad data fails before any file is written
            if writer is None:
                run_dir.mkdir(parents=True, exist_ok=True)
                writer = SummaryWriter(str(run_dir / "tb"))
            fit(current, batches_from, cfg, run_dir, writer, resume)
    finally:
        if writer is not None:
            writer.close()
    return run_dir


def _threads(cfg: TrainConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
