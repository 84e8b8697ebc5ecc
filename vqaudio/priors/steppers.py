"""Frame-by-frame runs of a ``WaveNetPrior`` (priors/wavenet.py): O(layers) per step instead
of a full pass over the sequence (Fast WaveNet, arXiv:1611.09482).

* ``FrameStepper``: the model's own torch layers, each with a ring buffer of its last
  ``dilation`` inputs; through ``FloatArith`` in floats, or in exact fixed point
  (priors/fixed_point.py) for the entropy coder;
* ``NumpyStepper``: the same steps fused and restated in numpy float32, what ``generate`` runs
  on the CPU;
* ``GuidedStep``: either one over every row twice, with and without the label, for
  classifier-free guidance.

A step is a code frame, or ``frame_stack`` of them (``WaveNetPrior.step_levels`` codes).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController
from torch import Tensor

from vqaudio.priors.sampling import guide

if TYPE_CHECKING:
    from vqaudio.priors.wavenet import WaveNetPrior


@functools.cache
def blas() -> ThreadpoolController:  # finds the loaded BLAS libraries once (~10 ms)
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
        out = np.empty((self.batch, w2.shape[1]), np.float32)
        for product, a, b in _rows(v2, out):
            product(a, w2, out=b)
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
