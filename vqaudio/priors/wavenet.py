"""A WaveNet over code sequences (arXiv:1609.03499), with per-level heads for residual VQ.

Codes ``(B, T, L)``: T frames, L residual-VQ levels. The sampling order is row-major over
``(T, L)``: frame by frame, and within a frame level 0 first. So

* a causal stack of dilated convolutions (kernel 2, dilations 1, 2, 4 … in cycles, gated
  tanh·sigmoid units, residual and skip paths) summarises frames ``< t`` into ``h_t``;
* the head of level l predicts code ``(t, l)`` from ``h_t`` plus an embedding of the codes
  ``(t, 0..l-1)`` already drawn at this frame.

Causality comes from padding the past only (``F.pad(x, (d, 0))``) and from shifting the input
one frame right.

``frame_stack`` = s > 1 lets the prior see the codec at 1/s of its frame rate: each step of the
stack reads s code frames as one of s·L codes (``step_levels``), frame-major, so the sampling
order over ``(T, L)`` is unchanged and a step costs one pass through the layers for s frames.
Everything outside the class still speaks ``(B, T, L)``; the steppers below run in steps. ``generate`` keeps, per layer, a queue of its last ``d`` inputs (Fast WaveNet,
arXiv:1611.09482), so each new frame costs one pass through the layers: O(T · layers).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController
from torch import Tensor, nn

from vqaudio.priors.sampling import Controls, Sampler, guide, guided_labels


def receptive_field(layers_per_cycle: int, cycles: int) -> int:
    """Frames of past codes that reach ``h_t``: 1 (the input shift) + the sum of the
    dilations 1, 2, … 2^(layers_per_cycle-1) over all cycles."""
    return 1 + cycles * (2 ** layers_per_cycle - 1)


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

    @property
    def receptive_field(self) -> int:
        """In code frames."""
        return self.frame_stack * receptive_field(len(self.layers) // self.cycles, self.cycles)

    def _stacked(self, codes: Tensor) -> Tensor:
        """(B, T, L) -> (B, ceil(T/s), s·L): s frames a step, the last padded with code 0
        (it comes after every real position, so it changes no logit of theirs)."""
        b, t, _ = codes.shape
        steps = -(-t // self.frame_stack)
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
    def stepper(self, batch: int, labels: Tensor | None = None, arith: "FloatArith | None" = None) -> "FrameStepper":
        """The cached frame-by-frame path (Fast WaveNet) of the entropy coder
        (vqaudio/entropy.py), which runs it in exact fixed-point ``arith``
        (vqaudio/priors/fixed_point.py) so that its encoder and decoder agree on any machine,
        and of ``generate`` off the CPU (on the CPU it runs ``NumpyStepper``, the same steps
        fused for speed)."""
        self._check_labels(labels)
        return FrameStepper(self, batch, labels, arith or FloatArith())

    @torch.inference_mode()  # no autograd bookkeeping at all: ~10% faster than no_grad here
    def generate(self, batch: int, frames: int, controls: Controls = Controls(),
                 labels: Tensor | None = None, progress: Callable[[int], None] | None = None) -> Tensor:
        """Sample ``(batch, frames, L)`` codes, one frame per pass through the layers.

        Draws use the same noise stream in the same order as ``reference_sample``, so the
        output equals the full-recompute reference for the same seed. On the CPU the frames
        run through ``NumpyStepper`` (float32 numpy, fused weights: fewer and cheaper
        operations per frame, which is what costs at small batch); elsewhere through ``FrameStepper``.
        """
        device = self.embed.weight.device
        steps = -(-frames // self.frame_stack)
        sampler = Sampler(controls, batch, steps * self.step_levels)
        labels = guided_labels(controls, self.num_labels, self.null_label, labels)
        rows = 2 * batch if controls.guided else batch  # guided: every row twice, the second unlabelled
        if device.type != "cpu":
            step = self.stepper(rows, labels)
            step = GuidedStep(step, batch, controls.guidance) if controls.guided else step
            return self._frames(self._generate(step, sampler, frames, progress), frames)
        step = NumpyStepper(self, rows, labels)
        step = GuidedStep(step, batch, controls.guidance) if controls.guided else step
        # numpy's OpenBLAS splits a matmul of more than ~2^18 multiply-adds over its threads,
        # which spin while they wait: beside a busy core the (8, 2702) @ (2702, 64) skip matmul
        # of a batch of 8 took 150 ms a frame instead of 0.1 ms. The per-frame matmuls are
        # small; one thread is right for them on any machine.
        with _blas().limit(limits=1, user_api="blas"):
            return self._frames(torch.from_numpy(self._generate(step, sampler, frames, progress)), frames)

    def _frames(self, codes: Tensor, frames: int) -> Tensor:
        """Steps (B, S, s·L) -> the first ``frames`` code frames (B, frames, L)."""
        return codes.reshape(codes.shape[0], -1, self.levels)[:, :frames]

    def _generate(self, step, sampler: Sampler, frames: int, progress) -> Tensor | np.ndarray:
        """The ancestral loop over steps and their levels, for a torch (``FrameStepper``) or a
        numpy (``NumpyStepper``) step: codes (B, ceil(frames/s), s·L) of the step's kind.
        ``progress`` hears code frames done."""
        steps, n = -(-frames // self.frame_stack), self.step_levels
        codes = step.new_codes(steps)
        for t in range(steps):
            h = step.context()
            for l in range(n):
                codes[:, t, l] = sampler(step.logits(h, codes[:, t], l), t * n + l)
            step.push(codes[:, t])
            if progress is not None:
                progress(min((t + 1) * self.frame_stack, frames))
        return codes


@functools.cache
def _blas() -> ThreadpoolController:  # finds the loaded BLAS libraries once (~10 ms)
    return ThreadpoolController()


class FloatArith:
    """The arithmetic of ``FrameStepper``: here the model's own floats in torch tensors
    (weights as they are, torch's matmul and activations). A fixed-point twin
    (priors/fixed_point.py) holds quantised weights in numpy arrays and replaces each
    operation by an exact integer one; FrameStepper touches its arrays only through these."""

    def weight(self, w: Tensor) -> Tensor:  # a matrix or an embedding table
        return w

    def bias(self, b: Tensor) -> Tensor:
        return b

    def zeros(self, *shape: int, like: Tensor) -> Tensor:
        return like.new_zeros(shape)

    def cat(self, a: Tensor, b: Tensor) -> Tensor:  # along channels: (B, C) ‖ (B, C) -> (B, 2C)
        return torch.cat([a, b], 1)

    def halves(self, h: Tensor) -> tuple[Tensor, Tensor]:  # (B, 2C) -> two (B, C)
        return h.chunk(2, dim=1)

    def embed(self, table: Tensor, index: Tensor) -> Tensor:  # index (B, n) long -> (B, C): rows summed
        return table[index].sum(1)

    def linear(self, b: Tensor, x: Tensor, w_t: Tensor) -> Tensor:  # b + x @ w_t
        return torch.addmm(b, x, w_t)

    def gate(self, h: Tensor) -> Tensor:  # (B, 2C) -> (B, C)
        a, b = h.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def relu(self, x: Tensor) -> Tensor:
        return F.relu(x)

    def head(self, prior: WaveNetPrior, level: int, x: Tensor) -> Tensor:
        return prior.heads[level](x)


class FrameStepper:
    """One frame at a time through a WaveNetPrior's layers, O(layers) per frame.

    Each layer keeps a ring buffer of its last ``dilation`` inputs ``(d, B, C)``: slot
    ``t % d`` holds the input from frame ``t - d`` (zeros before the start, like the padding
    of ``forward``); it is read, then overwritten with frame t's input. Per frame:
    ``h = context()`` summarises frames < t, ``logits(h, codes_t, l)`` predicts level l from
    it and the lower levels of frame t, ``push(codes_t)`` appends frame t. Codes are torch
    long tensors; activations are whatever ``arith`` computes in.
    """

    def __init__(self, prior: WaveNetPrior, batch: int, labels: Tensor | None, arith: FloatArith):
        self.prior, self.arith = prior, arith
        with torch.inference_mode():
            self.steps = []  # per layer: (dilation, conv weight for [x_{t-d} ‖ x_t], bias incl. label, out)
            for layer in prior.layers:
                w = layer.conv.weight  # (2C, C, 2): tap 0 reads x_{t-d}, tap 1 reads x_t
                bias = layer.conv.bias.expand(batch, -1)
                if layer.label is not None:
                    bias = bias + layer.label(labels)
                self.steps.append((layer.dilation, arith.weight(torch.cat([w[:, :, 0], w[:, :, 1]], 1).t()),
                                   arith.bias(bias), arith.weight(layer.out.weight[:, :, 0].t()),
                                   arith.bias(layer.out.bias)))
            self.post_w, self.post_b = arith.weight(prior.post.weight[:, :, 0].t()), arith.bias(prior.post.bias)
            self.embed, self.embed_lower = arith.weight(prior.embed.weight), arith.weight(prior.embed_lower.weight)
            self.x_in = arith.zeros(batch, prior.channels, like=self.embed)  # frame -1: zeros
            self.queues = [arith.zeros(d, batch, prior.channels, like=self.embed) for d, *_ in self.steps]
        self.t, self.batch = 0, batch

    def new_codes(self, frames: int) -> Tensor:
        """(B, frames, L) long zeros on the prior's device: ``generate`` fills them in."""
        return torch.zeros(self.batch, frames, self.prior.step_levels, dtype=torch.long, device=self.embed.device)

    @torch.inference_mode()
    def context(self):
        """(B, C): the summary of frames < t that every level's head of frame t reads."""
        x, skip, t, arith = self.x_in, None, self.t, self.arith
        for (d, w_conv, b_conv, w_out, b_out), queue in zip(self.steps, self.queues):
            pair = arith.cat(queue[t % d], x)  # [x_{t-d} ‖ x_t], a copy
            queue[t % d] = x
            res, s = arith.halves(arith.linear(b_out, arith.gate(arith.linear(b_conv, pair, w_conv)), w_out))
            x = x + res
            skip = s if skip is None else skip + s
        return arith.linear(self.post_b, arith.relu(skip), self.post_w)  # (B, C)

    @torch.inference_mode()
    def logits(self, h, codes_t: Tensor, level: int):
        """(B, K) logits of level ``level`` at frame t; ``codes_t`` (B, ≥level) holds its lower levels."""
        if level:  # the summed embeddings of levels 0..level-1 of this frame, as WaveNetPrior._lower
            h = h + self.arith.embed(self.embed_lower, codes_t[:, :level] + self.prior.offsets[:level])
        return self.arith.head(self.prior, level, h)

    @torch.inference_mode()
    def push(self, codes_t: Tensor) -> None:
        """Append frame t's codes (B, L') and move to frame t+1. L' < L (fewer levels than the
        prior models) sums the embeddings of the levels given: the entropy coder's case."""
        n = codes_t.shape[1]
        self.x_in = self.arith.embed(self.embed, codes_t + self.prior.offsets[:n])
        self.t += 1


# Up to this batch a matmul runs row by row, as vector-matrix products: OpenBLAS's
# matrix-matrix path costs more for 2 rows than two vector calls do (4.5 against 3.1 µs for a
# (2, 64) @ (64, 256) product on the idle machine, about 3x that beside a busy core), and a
# guided draw of one clip is a batch of 2.
ROWWISE_MAX = 2


def _rows(a: np.ndarray, out: np.ndarray) -> list[tuple[Callable, np.ndarray, np.ndarray]]:
    """The (product, input, output) triples that make ``out = a @ W``: ``np.dot`` of each row's
    1-D views up to ``ROWWISE_MAX`` rows, else one ``np.matmul`` of the whole (it takes the
    strided ``out`` views that ``np.dot`` refuses; ``np.dot`` costs less per call)."""
    return [(np.dot, x, y) for x, y in zip(a, out)] if len(a) <= ROWWISE_MAX else [(np.matmul, a, out)]


class NumpyStepper:
    """``FrameStepper``'s float path restated for speed on the CPU: numpy float32, codes numpy
    int64, the same ``context`` / ``logits`` / ``push`` steps. At batch 1 a frame is a few
    dozen tiny operations, so their number and per-call cost set the time, not the arithmetic
    (a numpy call costs a fraction of a torch one). Seven per layer:

    * one (B, C) @ (C, 4C) matmul of x_t against [W_now | W_past]: the first 2C columns are
      this frame's conv product, the last 2C the product frame t + d will need for its tap on
      x_{t-d}. Ring buffers keep those (bias added), so no [x_{t-d} ‖ x_t] copy;
    * sigmoid(b) = (1 + tanh(b/2)) / 2: the b half of the conv weights is halved (exact in
      floats), one tanh covers the whole (B, 2C), and the / 2 goes into the 1×1 conv;
    * each layer owns a row z = [x | 2·gate | 1] of one buffer, and one matmul
      z @ [I; W_res/2; b_res] writes the next layer's x (residual, gate and bias at once);
      one (B, layers·(2C+1)) matmul makes the summed skips of all layers;
    * at batch ≤ 2 (one clip, guided or not) each matmul runs row by row (``_rows``).

    Same function as ``FrameStepper``, other rounding (float sums in another order): logits
    agree to ~1e-6, and codes drawn from them can differ only where two candidates tie to
    that precision (tests/test_prior_wavenet.py checks both).
    """

    def __init__(self, prior: WaveNetPrior, batch: int, labels: Tensor | None):
        prior._check_labels(labels)
        c, n = prior.channels, len(prior.layers)
        self.prior, self.batch, self.levels = prior, batch, prior.step_levels
        f32 = lambda w: w.detach().cpu().numpy().astype(np.float32)  # a copy
        halve_b = np.concatenate([np.ones(c), np.full(c, 0.5)]).astype(np.float32)
        # z rows, (B, layers, 2C + 1): [x | 2·gate | 1] per layer; a batch row's z is one
        # contiguous vector, the input of the skip product
        self.z = np.concatenate([np.zeros((batch, n, 2 * c), np.float32), np.ones((batch, n, 1), np.float32)], 2)
        w_skip = np.zeros((n, 2 * c + 1, c), np.float32)  # the x rows stay 0
        self.layers = []
        y = np.empty((batch, 4 * c), np.float32)  # one layer's [now ‖ past tap] products
        with torch.inference_mode():
            for i, layer in enumerate(prior.layers):
                w = f32(layer.conv.weight) * halve_b[:, None, None]  # (2C, C, 2): tap 0 x_{t-d}, tap 1 x_t
                bias = layer.conv.bias.expand(batch, -1)
                if layer.label is not None:
                    bias = bias + layer.label(labels)
                bias = f32(bias) * halve_b  # (B, 2C)
                w_out = f32(layer.out.weight[:, :, 0]).T * np.float32(0.5)  # (C, 2C): residual ‖ skip, the gate's / 2
                b_out = f32(layer.out.bias)
                w_res = np.concatenate([np.eye(c, dtype=np.float32), w_out[:, :c], b_out[None, :c]])
                w_skip[i, c:] = np.concatenate([w_out[:, c:], b_out[None, c:]])
                # Ring (d, B, 2C): slot t % d holds x_{t-d} @ W_past + bias; frames before the
                # start are zeros (the padding of ``forward``), so the bias alone.
                ring = list(np.repeat(bias[None], layer.dilation, 0))
                z = self.z[:, i]
                # Every array and view the frame loop touches, made once: at batch 1 a slice
                # costs about as much as the arithmetic on it.
                self.layers.append((_rows(z[:, :c], y), np.concatenate([w[:, :, 1].T, w[:, :, 0].T], 1), y[:, :2 * c],
                                    y[:, 2 * c:], bias, ring, layer.dilation, y[:, :c], y[:, c:2 * c], z[:, c:2 * c],
                                    _rows(z, self.z[:, i + 1, :c]) if i + 1 < n else [], w_res))
            self.w_skip = w_skip.reshape(n * (2 * c + 1), c)
            post = np.concatenate([f32(prior.post.weight[:, :, 0]).T, f32(prior.post.bias)[None]])
            self.post, self.u = post, np.ones((batch, c + 1), np.float32)  # [relu(summed skips) | 1]
            self.heads = [(np.concatenate([f32(h[1].weight).T, f32(h[1].bias)[None]]),
                           np.concatenate([f32(h[3].weight).T, f32(h[3].bias)[None]]))
                          for h in prior.heads]  # head = ReLU, Linear, ReLU, Linear; biases as a row for the 1
            self.v1, self.v2 = np.ones((batch, c + 1), np.float32), np.ones((batch, c + 1), np.float32)  # [relu(.) | 1]
            self.v1_v2 = _rows(self.v1, self.v2[:, :-1])
            self.embed, self.embed_lower = f32(prior.embed.weight), f32(prior.embed_lower.weight)
        self.offsets = prior.offsets.cpu().numpy()
        self.x0 = self.z[:, 0, :c]  # the stack's input, frame -1: zeros
        self.skips = self.u[:, :-1]
        self.z_skips = _rows(self.z.reshape(batch, -1), self.skips)
        self.t = 0

    def new_codes(self, frames: int) -> np.ndarray:
        return np.zeros((self.batch, frames, self.levels), np.int64)

    def context(self) -> np.ndarray:
        """(B, C + 1) float32: the summary of frames < t, then a 1 (for the heads' biases)."""
        t = self.t
        for x_y, w_in, h, y_past, bias, ring, d, h_a, h_b, gate, z_next, w_res in self.layers:
            for product, x, y in x_y:
                product(x, w_in, out=y)
            h += ring[t % d]  # + x_{t-d} @ W_past + bias
            np.add(y_past, bias, out=ring[t % d])  # frame t + d's past tap
            np.tanh(h, out=h)
            h_b += 1
            np.multiply(h_a, h_b, out=gate)  # tanh(a)·(1 + tanh(b/2)) = 2·tanh(a)·sigmoid(b)
            for product, z, x_next in z_next:  # none after the last layer: its residual feeds nothing
                product(z, w_res, out=x_next)
        for product, z, skips in self.z_skips:
            product(z, self.w_skip, out=skips)
        np.maximum(self.skips, 0, out=self.skips)
        h = np.ones_like(self.u)
        for product, u, out in _rows(self.u, h[:, :-1]):
            product(u, self.post, out=out)
        return h

    def logits(self, h: np.ndarray, codes_t: np.ndarray, level: int) -> np.ndarray:
        """(B, K) float32 logits of level ``level`` at frame t from ``h`` (``context``'s) and
        ``codes_t`` (B, ≥level) int64."""
        (w1, w2), v1, v2 = self.heads[level], self.v1, self.v2
        if level:  # the summed embeddings of levels 0..level-1 of this frame
            np.add(h[:, :-1], self.embed_lower[codes_t[:, :level] + self.offsets[:level]].sum(1), out=v1[:, :-1])
            h = v1
        np.maximum(h, 0, out=v1)
        for product, a, b in self.v1_v2:
            product(a, w1, out=b)
        np.maximum(v2, 0, out=v2)
        if self.batch > ROWWISE_MAX:
            return v2 @ w2
        out = np.empty((self.batch, w2.shape[1]), np.float32)
        for b in range(self.batch):
            np.dot(v2[b], w2, out=out[b])
        return out

    def push(self, codes_t: np.ndarray) -> None:
        """Append frame t's codes (B, L) and move to frame t+1."""
        np.sum(self.embed[codes_t + self.offsets[:codes_t.shape[1]]], axis=1, out=self.x0)
        self.t += 1


class GuidedStep:
    """A stepper over 2B rows (B labelled, then the same B under the null label) run as a B-row
    one: both halves read the same codes, and the logits are guided (``sampling.guide``)."""

    def __init__(self, step, batch: int, scale: float):
        self.step, self.batch, self.scale = step, batch, scale

    def _twice(self, codes_t):
        return np.concatenate([codes_t, codes_t]) if isinstance(codes_t, np.ndarray) else torch.cat([codes_t, codes_t])

    def new_codes(self, frames: int):
        return self.step.new_codes(frames)[: self.batch]

    def context(self):
        return self.step.context()

    def logits(self, h, codes_t, level: int):
        both = self.step.logits(h, self._twice(codes_t), level)
        return guide(both[: self.batch], both[self.batch:], self.scale)

    def push(self, codes_t) -> None:
        self.step.push(self._twice(codes_t))


def sequence_logits_fn(prior: WaveNetPrior, labels: Tensor | None, guidance: float | None = None) -> Callable[[Tensor], Tensor]:
    """``codes -> logits`` for ``reference_sample`` (full recompute over the sequence), guided
    (``sampling.guide``) when ``guidance`` is given and not 1."""
    if guidance is None or guidance == 1.0:
        return lambda codes: prior(codes, labels)
    null = torch.full_like(labels, prior.num_labels)
    return lambda codes: guide(prior(codes, labels), prior(codes, null), guidance)


def bits(nats: float) -> float:
    return nats / math.log(2)
