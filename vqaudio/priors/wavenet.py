"""A WaveNet over code sequences (arXiv:1609.03499), with per-level heads for residual VQ.

Codes ``(B, T, L)``: T frames, L residual-VQ levels. The sampling order is row-major over
``(T, L)``: frame by frame, and within a frame level 0 first. So

* a causal stack of dilated convolutions (kernel 2, dilations 1, 2, 4 … in cycles, gated
  tanh·sigmoid units, residual and skip paths) summarises frames ``< t`` into ``h_t``;
* the head of level l predicts code ``(t, l)`` from ``h_t`` plus an embedding of the codes
  ``(t, 0..l-1)`` already drawn at this frame.

Causality comes from padding the past only (``F.pad(x, (d, 0))``) and from shifting the input
one frame right. ``generate`` keeps, per layer, a queue of its last ``d`` inputs (Fast WaveNet,
arXiv:1611.09482; the steppers of priors/steppers.py), so each new frame costs one pass through
the layers: O(T · layers).

``frame_stack`` = s > 1 lets the prior see the codec at 1/s of its frame rate: each step of the
stack reads s code frames as one of s·L codes (``step_levels``), frame-major, so the sampling
order over ``(T, L)`` is unchanged and a step costs one pass through the layers for s frames.
Everything outside the class still speaks ``(B, T, L)``; the steppers run in steps.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqaudio.priors.sampling import Controls, Sampler, guide, guided_labels
from vqaudio.priors.steppers import FloatArith, FrameStepper, GuidedStep, NumpyStepper, blas


def receptive_field(layers_per_cycle: int, cycles: int, frame_stack: int = 1) -> int:
    """Code frames of the past that reach ``h_t``: ``frame_stack`` per step times 1 (the input
    shift) + the sum of the dilations 1, 2, … 2^(layers_per_cycle-1) over all cycles."""
    return frame_stack * (1 + cycles * (2 ** layers_per_cycle - 1))


class GatedLayer(nn.Module):
    """Dilated causal conv -> tanh·sigmoid gate -> 1×1 conv to (residual, skip)."""

    def __init__(self, channels: int, dilation: int, num_labels: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size=2, dilation=dilation)
        self.out = nn.Conv1d(channels, 2 * channels, kernel_size=1)  # residual ‖ skip
        self.label = nn.Embedding(num_labels, 2 * channels) if num_labels else None  # null label included

    def gate(self, h: Tensor) -> Tensor:
        a, b = h.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, x: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """x (B, C, T) -> (new x, skip), both (B, C, T)."""
        h = self.conv(F.pad(x, (self.dilation, 0)))  # pads the past only: causal
        if self.label is not None:
            h = h + self.label(labels).unsqueeze(-1)
        res, skip = self.out(self.gate(h)).chunk(2, dim=1)
        return x + res, skip


def code_vector_rows(vectors: Tensor, channels: int, projection: torch.Generator) -> Tensor:
    """A level's code vectors (K, D) as embedding rows (K, channels) at the unit RMS of
    default N(0, 1) rows; D != channels through a fixed random projection drawn from
    ``projection`` (which keeps distances roughly: Johnson-Lindenstrauss)."""
    v = vectors.detach().float().cpu()
    if v.shape[1] != channels:
        v = v @ torch.randn(v.shape[1], channels, generator=projection)
    return v / v.square().mean().sqrt().clamp_min(1e-12)


class WaveNetPrior(nn.Module):
    """p(codes) over ``(B, T, L)`` code sequences with ``num_codes`` = K entries per level.

    ``forward(codes, labels) -> logits (B, T, L, K)``; ``labels`` (B,) long when
    ``num_labels`` > 0 (global conditioning, e.g. the spoken digit), else None. With
    ``null_label`` the label table has one more row, label ``num_labels`` = "no label", which
    training with label dropout teaches and classifier-free guidance samples with.
    """

    def __init__(self, num_codes: int, levels: int = 1, channels: int = 64, cycles: int = 2,
                 layers_per_cycle: int = 7, num_labels: int = 0, null_label: bool = False,
                 frame_stack: int = 1):
        super().__init__()
        self.num_codes, self.levels, self.channels, self.num_labels = num_codes, levels, channels, num_labels
        self.null_label = bool(num_labels and null_label)
        self.cycles, self.frame_stack = cycles, frame_stack
        self.step_levels = n = levels * frame_stack  # codes per step of the stack
        # The prior's own embeddings of code indices (step level l's code c is row l·K + c):
        # one for the past steps the stack reads, one for the lower levels the heads read.
        self.embed = nn.Embedding(n * num_codes, channels)
        self.embed_lower = nn.Embedding(n * num_codes, channels)
        self.register_buffer("offsets", torch.arange(n) * num_codes, persistent=False)
        dilations = [2 ** i for i in range(layers_per_cycle)] * cycles
        self.layers = nn.ModuleList(GatedLayer(channels, d, num_labels + self.null_label) for d in dilations)
        self.post = nn.Conv1d(channels, channels, kernel_size=1)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(channels, channels), nn.ReLU(),
                          nn.Linear(channels, num_codes)) for _ in range(n))
        for head in self.heads:  # zero head: the loss at step 0 is exactly log K
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)

    @torch.no_grad()
    def embed_codebooks(self, codebooks: list[Tensor]) -> None:
        """Start both code embeddings from the codec's code vectors, one (K, D) per level,
        scaled to the unit RMS of the default N(0, 1) rows: codes the decoder turns into alike
        sounds start alike to the prior too, where random rows make every code a stranger.
        D != channels goes through a fixed random projection (which keeps distances roughly:
        Johnson-Lindenstrauss)."""
        if len(codebooks) < self.levels:
            raise ValueError(f"need the code vectors of {self.levels} levels, got {len(codebooks)}")
        projection = torch.Generator().manual_seed(0)
        for level, vectors in enumerate(codebooks[: self.levels]):
            if vectors.shape != (self.num_codes, vectors.shape[-1]):
                raise ValueError(f"level {level}: expected ({self.num_codes}, D) code vectors, got {tuple(vectors.shape)}")
            v = code_vector_rows(vectors, self.channels, projection)
            for j in range(level, self.step_levels, self.levels):  # this level in every stacked frame
                rows = slice(j * self.num_codes, (j + 1) * self.num_codes)
                self.embed.weight[rows] = v.to(self.embed.weight)
                self.embed_lower.weight[rows] = v.to(self.embed_lower.weight)

    @property
    def receptive_field(self) -> int:
        """In code frames."""
        return receptive_field(len(self.layers) // self.cycles, self.cycles, self.frame_stack)

    def _steps(self, frames: int) -> int:
        """Steps of the stack that cover ``frames`` code frames: ceil(frames / s)."""
        return -(-frames // self.frame_stack)

    def _stacked(self, codes: Tensor) -> Tensor:
        """(B, T, L) -> (B, ceil(T/s), s·L): s frames a step, the last padded with code 0
        (it comes after every real position, so it changes no logit of theirs)."""
        b, t, _ = codes.shape
        steps = self._steps(t)
        codes = F.pad(codes, (0, 0, 0, steps * self.frame_stack - t))
        return codes.reshape(b, steps, self.step_levels)

    def _check(self, codes: Tensor, labels: Tensor | None) -> None:
        if codes.dim() != 3 or codes.shape[-1] != self.levels:
            raise ValueError(f"codes must be (B, T, {self.levels}), got {tuple(codes.shape)}")
        self._check_labels(labels)

    def _check_labels(self, labels: Tensor | None) -> None:
        if (labels is None) != (self.num_labels == 0):
            raise ValueError("labels are required exactly when the prior is label-conditioned")

    def _lower(self, codes: Tensor, level: int) -> Tensor:
        """(..., C): the summed embeddings of levels 0..level-1 of the same frame."""
        if level == 0:
            return codes.new_zeros((*codes.shape[:-1], self.channels), dtype=self.embed.weight.dtype)
        return self.embed_lower(codes[..., :level] + self.offsets[:level]).sum(-2)

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """codes (B, T, L) long -> logits (B, T, L, K)."""
        self._check(codes, labels)
        b, frames, _ = codes.shape
        codes = self._stacked(codes)
        x = self.embed(codes + self.offsets).sum(-2).transpose(1, 2)  # (B, C, T)
        x = F.pad(x, (1, -1))  # frame t sees frames < t only
        skip = torch.zeros_like(x)
        for layer in self.layers:
            x, s = layer(x, labels)
            skip = skip + s
        h = self.post(F.relu(skip)).transpose(1, 2)  # (B, T, C)
        logits = torch.stack([head(h + self._lower(codes, l)) for l, head in enumerate(self.heads)], dim=2)
        return logits.reshape(b, -1, self.levels, self.num_codes)[:, :frames]

    def nll(self, codes: Tensor, labels: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood in nats per code; ``mask`` (B, T) selects frames."""
        logits = self(codes, labels)
        ce = F.cross_entropy(logits.flatten(0, 2), codes.flatten(), reduction="none")
        if mask is None:
            return ce.mean()
        m = mask.unsqueeze(-1).expand_as(codes).flatten().float()
        return (ce * m).sum() / m.sum().clamp(min=1)

    # -- incremental generation -------------------------------------------------------------
    def stepper(self, batch: int, labels: Tensor | None = None, arith: FloatArith | None = None) -> FrameStepper:
        """The cached frame-by-frame path (Fast WaveNet) of the entropy coder
        (vqaudio/entropy.py), which runs it in exact fixed-point ``arith``
        (vqaudio/priors/fixed_point.py) so that its encoder and decoder agree on any machine,
        and of ``generate`` off the CPU (on the CPU it runs ``NumpyStepper``, the same steps
        fused for speed)."""
        self._check_labels(labels)
        return FrameStepper(self, batch, labels, arith or FloatArith())

    @torch.inference_mode()  # no autograd bookkeeping at all: ~10% faster than no_grad here
    def generate(self, batch: int, frames: int, controls: Controls = Controls(),
                 labels: Tensor | None = None, progress: Callable[[int], None] | None = None,
                 seeds: list[int] | None = None, until: Callable[[np.ndarray], bool] | None = None) -> Tensor:
        """Sample ``(batch, frames, L)`` codes, one frame per pass through the layers; row b's
        noise seeded ``controls.seed + b``, or ``seeds[b]`` when given. ``until`` hears each code
        frame as it is drawn ((batch, L) numpy); once it returns True the draw stops, and the
        frames not drawn are left 0 (``vqaudio.utterance``: the clips have all ended).

        Draws use the same noise stream in the same order as ``reference_sample``, so the
        output equals the full-recompute reference for the same seed. On the CPU the frames
        run through ``NumpyStepper`` (float32 numpy, fused weights: fewer and cheaper
        operations per frame, which is what costs at small batch); elsewhere through ``FrameStepper``.
        """
        device = self.embed.weight.device
        sampler = Sampler(controls, batch, self._steps(frames) * self.step_levels, seeds)
        labels = guided_labels(controls, self.num_labels, self.null_label, labels)
        rows = 2 * batch if controls.guided else batch  # guided: every row twice, the second unlabelled
        if device.type != "cpu":
            step = self.stepper(rows, labels)
            step = GuidedStep(step, batch, controls.guidance) if controls.guided else step
            return self._frames(self._generate(step, sampler, frames, progress, until), frames)
        step = NumpyStepper(self, rows, labels)
        step = GuidedStep(step, batch, controls.guidance) if controls.guided else step
        # numpy's OpenBLAS splits a matmul of more than ~2^18 multiply-adds over its threads,
        # which spin while they wait: beside a busy core the (8, 2702) @ (2702, 64) skip matmul
        # of a batch of 8 took 150 ms a frame instead of 0.1 ms. The per-frame matmuls are
        # small; one thread is right for them on any machine.
        with blas().limit(limits=1, user_api="blas"):
            return self._frames(torch.from_numpy(self._generate(step, sampler, frames, progress, until)), frames)

    def _frames(self, codes: Tensor, frames: int) -> Tensor:
        """Steps (B, S, s·L) -> the first ``frames`` code frames (B, frames, L)."""
        return codes.reshape(codes.shape[0], -1, self.levels)[:, :frames]

    def _generate(self, step, sampler: Sampler, frames: int, progress, until=None) -> Tensor | np.ndarray:
        """The ancestral loop over steps and their levels, for a torch (``FrameStepper``) or a
        numpy (``NumpyStepper``) step: codes (B, ceil(frames/s), s·L) of the step's kind.
        ``progress`` hears code frames done, ``until`` each code frame (``generate``)."""
        steps, n = self._steps(frames), self.step_levels
        codes = step.new_codes(steps)
        for t in range(steps):
            h = step.context()
            for l in range(n):
                codes[:, t, l] = sampler(step.logits(h, codes[:, t], l), t * n + l)
            step.push(codes[:, t])
            if progress is not None:
                progress(min((t + 1) * self.frame_stack, frames))
            if until is not None:
                drawn = codes[:, t] if isinstance(codes, np.ndarray) else codes[:, t].cpu().numpy()
                if any([until(f) for f in drawn.reshape(len(drawn), self.frame_stack, self.levels).transpose(1, 0, 2)]):
                    if progress is not None:
                        progress(frames)  # the frames not drawn are decided: the clips have ended
                    break
        return codes


def sequence_logits_fn(prior: WaveNetPrior, labels: Tensor | None, guidance: float | None = None) -> Callable[[Tensor], Tensor]:
    """``codes -> logits`` for ``reference_sample`` (full recompute over the sequence), guided
    (``sampling.guide``) when ``guidance`` is given and not 1."""
    if guidance is None or guidance == 1.0:
        return lambda codes: prior(codes, labels)
    null = torch.full_like(labels, prior.num_labels)
    return lambda codes: guide(prior(codes, labels), prior(codes, null), guidance)


def bits(nats: float) -> float:
    return nats / math.log(2)
