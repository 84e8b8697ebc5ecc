"""One training loop for every stage (VQ-VAE, prior) and both modalities.

A *stage* owns a model and knows its loss, its validation and how to save itself; ``fit`` owns
everything else: AdamW, warm-up + cosine schedule, gradient clipping, progress, TensorBoard
scalars, periodic validation and checkpoints in the run directory.
"""

from __future__ import annotations

import math
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from vqaudio.config import ImageRecipe, Recipe, TrainConfig
from vqaudio.data.batches import BatchesFrom, step_batches
from vqaudio.distributed import NullWriter, Runtime, runtime, say
from vqaudio.errors import Interrupted, VqaudioError
from vqaudio.run_checkpoints import resume_from_checkpoint, save_checkpoint


class Stage(Protocol):
    """A stage may also have a ``critic`` (a second model, e.g. a discriminator, or None) and
    ``critic_loss()``, its loss on what the last ``loss(batch)`` computed; the loop then gives
    it its own optimizer and schedule, saves and resumes both, and wraps both in DDP."""
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


class StageStep(nn.Module):
    """A stage's training loss as a module's forward. DistributedDataParallel averages the
    gradients of what runs through its wrapper's forward, and a stage's loss may call more than
    the model's forward (the prior's ``nll``), so the wrapper wraps the whole loss."""

    def __init__(self, stage: Stage):
        super().__init__()
        self.model = stage.model  # registered: the wrapper's parameters are the model's
        self.stage = stage

    def forward(self, batch) -> tuple[Tensor, dict[str, float]]:
        return self.stage.loss(batch)


class CriticStep(nn.Module):
    """The critic's loss as a module's forward, for DistributedDataParallel (see StageStep)."""

    def __init__(self, stage: Stage):
        super().__init__()
        self.critic = stage.critic
        self.stage = stage

    def forward(self) -> tuple[Tensor, dict[str, float]]:
        return self.stage.critic_loss()


def _ddp(net: nn.Module, rt: Runtime, unused: bool = False) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # Rank 0's weights and buffers are broadcast here. Buffers are not broadcast again at
    # every step: the quantizer all-reduces its EMA statistics itself (QUANTIZER.md 4).
    return DistributedDataParallel(net, device_ids=[rt.device] if rt.device.type == "cuda" else None,
                                   broadcast_buffers=False, find_unused_parameters=unused)


def to_device(batch, device: torch.device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def fit(stage: Stage, batches_from: BatchesFrom, cfg: TrainConfig, run_dir: Path, writer,
        resume: bool = False, rt: Runtime | None = None) -> dict:
    """Train ``stage.model`` for ``cfg.steps`` steps; returns the last validation metrics.

    With ``resume``, training continues from the newest complete checkpoint of this stage in
    ``run_dir/checkpoints`` (weights, optimizer, schedule, RNG states; the batches restart at
    the same step), so the result equals an uninterrupted run's. Ctrl-C (or SIGTERM) saves a
    checkpoint of the last finished step and raises :class:`Interrupted`.

    ``rt`` says where to run (device, bf16 autocast, torch.compile) and, under torchrun, which
    rank this is: the model is then wrapped in DistributedDataParallel, ``batches_from`` gives
    this rank's share of each global batch, and only rank 0 validates and writes.
    """
    rt = rt or Runtime()
    model = stage.model.to(rt.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    critic = None  # (module, optimizer, schedule) of the stage's second model, if it has one
    if getattr(stage, "critic", None) is not None:
        module = stage.critic.to(rt.device)
        # Adam with beta1 = 0.5 for the discriminator, as EnCodec and HiFi-GAN train theirs.
        c_opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
        critic = (module, c_opt, torch.optim.lr_scheduler.LambdaLR(c_opt, lr_lambda(cfg)))
    tag = stage.name
    first = resume_from_checkpoint(stage, run_dir, opt, sched, critic) if resume else 0
    if rt.compile:
        compile_model(model)
    net: nn.Module = StageStep(stage)
    critic_net: nn.Module | None = CriticStep(stage) if critic else None
    if rt.distributed:
        net = _ddp(net, rt, unused=any(getattr(m, "may_skip_parameters", False) for m in model.modules()))
        critic_net = _ddp(critic_net, rt) if critic_net is not None else None
    batches = batches_from(first)
    interactive = sys.stderr.isatty() and rt.main
    bar = tqdm(range(first + 1, cfg.steps + 1), desc=tag, disable=not interactive, dynamic_ncols=True,
               initial=first, total=cfg.steps)
    metrics: dict[str, float] = {}
    start, skipped = time.perf_counter(), 0
    with stop_on_ctrl_c() as stop_requested:
        for step in bar:
            net.train()
            with rt.autocast():
                loss, scalars = net(to_device(next(batches), rt.device))
            opt.zero_grad(set_to_none=True)
            finite, grad_norm = bool(torch.isfinite(loss)), None
            clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            if finite or rt.distributed:  # under DDP every rank's backward joins the all-reduce
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(params, clip)
                finite = finite and bool(torch.isfinite(grad_norm))
                if critic:  # its loss on the pair just made; both steps are taken below
                    critic[1].zero_grad(set_to_none=True)
                    with rt.autocast():
                        critic_loss, critic_scalars = critic_net()
                    critic_loss.backward()
                    critic_norm = nn.utils.clip_grad_norm_(critic[0].parameters(), clip)
                    finite = finite and bool(torch.isfinite(critic_loss)) and bool(torch.isfinite(critic_norm))
                    scalars = {**scalars, **critic_scalars, "discriminator_grad_norm": float(critic_norm)}
            finite, stop = rt.agree(finite, stop_requested())
            if not finite:
                if cfg.nonfinite == "stop":
                    raise VqaudioError(
                        f"training {tag}: the loss or its gradient became non-finite at step {step}; "
                        f"lower the learning rate or check the data, or set nonfinite = \"skip\" "
                        f"(the last checkpoint in {run_dir / 'checkpoints'} is intact)")
                skipped += 1  # nonfinite = "skip": drop this batch, keep the weights
                say(f"warning: {tag} step {step}: non-finite loss or gradient, batch skipped ({skipped} so far)")
                writer.add_scalar(f"{tag}/train/skipped_batches", skipped, step)
                opt.zero_grad(set_to_none=True)
                if critic:
                    critic[1].zero_grad(set_to_none=True)
            else:
                opt.step()
                if critic:
                    critic[1].step()
            sched.step()
            if critic:
                critic[2].step()

            if finite and (step % cfg.log_every == 0 or step == cfg.steps):
                scalars = rt.mean(scalars)
                for k, v in scalars.items():
                    writer.add_scalar(f"{tag}/train/{k}", v, step)
                writer.add_scalar(f"{tag}/train/lr", sched.get_last_lr()[0], step)
                writer.add_scalar(f"{tag}/train/grad_norm", float(grad_norm), step)
                shown = [k for k in ("loss", "perplexity", "codes_used") if k in scalars]
                bar.set_postfix({k: f"{scalars[k]:.3g}" for k in shown}, refresh=False)
            if rt.main and (step % cfg.val_every == 0 or step == cfg.steps):
                model.eval()
                with torch.no_grad():
                    metrics = stage.validate(writer, step)
                warn_if_collapsed(stage, metrics, writer, step)
                writer.flush()
                if not interactive:
                    rate = (step - first) / (time.perf_counter() - start)
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                    print(f"{tag} step {step}/{cfg.steps} ({rate:.1f} steps/s): {shown}", flush=True)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                where = run_dir / "checkpoints"
                if rt.main:
                    where = save_checkpoint(stage, run_dir, step, cfg.keep_checkpoints, opt, sched, critic)
                if stop:
                    bar.close()
                    rt.barrier()  # the checkpoint is complete before any rank exits
                    raise Interrupted(f"interrupted at {tag} step {step}; checkpoint saved in {where}; "
                                      "continue with the same command and --resume")
    if rt.main:
        stage.save(run_dir / tag)
    rt.barrier()  # the next stage (on every rank) reads what rank 0 just wrote
    return metrics


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; torchrun, schedulers and kill


def compile_model(model: nn.Module) -> None:
    """torch.compile in place, so the state dict keeps its names and checkpoints stay loadable.
    A quantizer stays eager: its codebook bookkeeping (in-place EMA updates, restarts,
    collectives, data-dependent branches) would break the graph at every step, and it already
    runs as a few large kernels; the encoder and decoder around it are compiled."""
    from vqaudio.quantizer import ResidualVQ, VectorQuantizer

    quantizers = (VectorQuantizer, ResidualVQ)
    if not any(isinstance(m, quantizers) for m in model.modules()):
        model.compile()  # a prior: one network
        return
    for child in model.children():
        if not isinstance(child, quantizers):
            child.compile()


@contextmanager
def stop_on_ctrl_c():
    """While active, the first Ctrl-C (or SIGTERM, which torchrun sends its workers when it is
    interrupted) only sets a flag, read with the yielded function, so training stops at the end
    of a whole step, with a consistent checkpoint; a second one interrupts at once."""
    requested = threading.Event()

    def handler(signum, frame):
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        say("\nstopping after this step (Ctrl-C again to stop now, without a checkpoint)")

    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set  # signals only reach the main thread
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield requested.is_set
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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


STAGES = ("vqvae", "prior", "classifier", "all")


def train_recipe(recipe: Recipe | ImageRecipe, out: Path | None = None, stage: str = "all",
                 resume: bool = False, device: str = "auto", precision: str = "auto",
                 compile: bool = False, workers: int | None = None, init: str | Path | None = None) -> Path:
    """Train the stages of a recipe into ``out`` (default ``runs/<recipe name>``): the VQ-VAE
    (``run/vqvae``), then the prior over its codes (``run/prior``), then for an audio recipe
    with ``prior.candidates`` > 1 the code classifier that ranks the prior's candidates
    (``run/classifier``; ``stage="classifier"`` trains it alone). ``stage="prior"`` reuses
    the VQ-VAE already in the run folder; ``resume`` continues each stage from its newest
    complete checkpoint (a finished stage resumes at its last step and only saves again).

    ``device`` is auto | cpu | cuda; ``precision`` auto (bf16 autocast on CUDA, float32 on the
    CPU) | fp32 | bf16; ``compile`` applies torch.compile; ``workers`` DataLoader processes
    (default: none on the CPU, a few on a GPU). Under torchrun every process calls this, and
    the recipe's batch sizes are global batches split across the processes.

    ``init`` (a model folder or a run folder) starts each stage from that model's weights
    instead of at random, with a fresh optimizer and schedule (see finetune.py).
    """
    if stage not in STAGES:
        raise VqaudioError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
    if init is not None and resume:
        raise VqaudioError("--init and --resume do not go together: --resume continues this run's own "
                           "checkpoints, --init starts a new run from a model's weights; drop one")
    if recipe.train.decoder_only and stage != "prior" and init is None and not resume:
        raise VqaudioError("train.decoder_only keeps the encoder and codebooks as they are, so it needs "
                           "trained ones: pass --init MODEL_DIR (or set train.decoder_only = false)")
    start = None  # the model folders --init names
    if init is not None:
        from vqaudio.finetune import init_models, load_init

        start = init_models(init, recipe, stage)  # a bad --init fails before the data is read
    from torch.utils.tensorboard import SummaryWriter

    classifier_stage_of = None
    if isinstance(recipe, ImageRecipe):
        from vqaudio.image_stages import image_prior_stage as prior_stage_of
        from vqaudio.image_stages import image_vqvae_stage as vqvae_stage_of
        if stage == "classifier":
            raise VqaudioError("--stage classifier: the code classifier (for vqaudio sample --candidates) "
                               "serves audio recipes only")
        if stage == "all" and recipe.quantizer.kind == "none":
            stage = "vqvae"  # a plain autoencoder has no codes for a prior
    else:
        from vqaudio.stages import audio_classifier_stage as classifier_stage_of
        from vqaudio.stages import audio_prior_stage as prior_stage_of
        from vqaudio.stages import audio_vqvae_stage as vqvae_stage_of
    # The classifier ranks the prior's candidates: "all" trains it where the recipe samples
    # more than one (prior.candidates > 1); --stage classifier trains it on its own.
    with_classifier = stage == "classifier" or (stage == "all" and classifier_stage_of is not None
                                                 and recipe.prior.candidates > 1)

    run_dir = Path(out) if out else Path("runs") / recipe.name
    if resume and not (run_dir / "checkpoints").is_dir():
        raise VqaudioError(f"--resume: {run_dir} has no checkpoints to resume from; "
                           "train without --resume (or pass the run folder with --out)")
    writer = None
    with runtime(device, precision, compile, workers) as rt:
        if rt.distributed or rt.device.type != "cpu" or rt.bf16 or rt.compile:
            say(rt.describe())  # anything but the plain one-process CPU run is worth a line
        try:
            for name, cfg, make in (("vqvae", recipe.train, lambda: vqvae_stage_of(recipe)),
                                    ("prior", recipe.prior_train, lambda: prior_stage_of(recipe, run_dir)),
                                    ("classifier", recipe.prior_train,  # the prior's loop settings
                                     lambda: classifier_stage_of(recipe, run_dir))):
                if stage not in (name, "all") or (name == "classifier" and not with_classifier):
                    continue
                _threads(cfg)
                seed_everything(cfg.seed)
                # Loads the data: bad data fails before any file is written. Rank 0 goes first,
                # so the code caches it writes are read, not written again, by the others.
                if not rt.main:
                    rt.barrier()
                current, train_set = make()
                if rt.main:
                    rt.barrier()
                if start is not None:  # before any file is written: a misfit VQ-VAE stops here
                    load_init(current, start)
                batches_from = step_batches(train_set, cfg.batch_size, cfg.seed, rt.rank,
                                            rt.world_size, rt.workers, rt.device.type == "cuda")
                if writer is None:
                    if rt.main:
                        run_dir.mkdir(parents=True, exist_ok=True)
                    writer = SummaryWriter(str(run_dir / "tb")) if rt.main else NullWriter()
                fit(current, batches_from, cfg, run_dir, writer, resume, rt)
        finally:
            if writer is not None:
                writer.close()
    return run_dir


def _threads(cfg: TrainConfig) -> None:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
