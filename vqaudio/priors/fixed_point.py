"""Exact fixed-point arithmetic for a WaveNetPrior's frame step, and integer frequency tables.

An arithmetic decoder must rebuild, bit for bit, every frequency table its encoder used. Float
network outputs are not portable: the sum in a matmul rounds differently with another order
(threads, SIMD width, BLAS build), and one flipped last bit can move a table entry. Coarse
rounding of the floats does not cure it: a value near a rounding boundary still lands on
either side. So the entropy coder runs the prior in integers:

* weights and activations are integers scaled by 2^FRAC (weights rounded once from the
  float32 file: a deterministic function of the weights, which the header names by id);
* a linear layer is ``floor((x @ W + b·2^FRAC) / 2^FRAC)``. The integers are held in float64
  tensors, so torch's fast float64 matmul computes them, and it does so exactly: with
  ``|x| ≤ 2^20`` (inputs and outputs are clamped there), ``|W| < 2^(FRAC+8)`` and at most 2^12
  inputs, every product and partial sum is an integer below 2^53, which float64 represents
  exactly, so every addition is exact and the order of the sum cannot matter;
* tanh, sigmoid and the softmax's exp are read from tables (``TANH``, ``SIGMOID``, ``EXP``)
  built once from Python's float64 math and rounded to integers. They are the same on every
  machine unless a platform's libm rounds an entry across .5 (a chance of order 1e-8); their
  CRC32 (``FINGERPRINT``) is stored in the codes file and a mismatch is refused.

The tables cost little accuracy: activation steps of 2^-10 and weight steps of 2^-12
(measured: the coded size moves by < 0.5%, bench/RESULTS.md).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch
from torch import Tensor

from vqaudio.priors.wavenet import WaveNetPrior

FRAC = 12  # fractional bits of weights and activations
ONE = float(1 << FRAC)
LIMIT = float(1 << 20)  # activations are clamped to ±LIMIT (±256.0): keeps every sum below 2^53
MAX_WEIGHT = 256.0  # |w| must stay below this (2^(FRAC+8) as an integer)
MAX_INPUTS = 1 << 12  # inputs per output of a linear layer
LUT_STEP = 2  # activation LUTs index x in steps of 2^(LUT_STEP - FRAC) = 2^-10, over [-8, 8)
LUT_HALF = 8 << (FRAC - LUT_STEP)  # 8192 entries each side of 0
EXP_STEP = 4  # the exp LUT: steps of 2^-8 in (max logit - logit), over [0, 16)
EXP_SIZE = 16 << (FRAC - EXP_STEP)
EXP_BITS = 20  # exp(-d) scaled to 2^20


def _activation_table(fn) -> Tensor:
    """fn at each bin's midpoint, scaled by 2^FRAC and rounded: (2·LUT_HALF,) float64."""
    step = (1 << LUT_STEP) / ONE
    return torch.tensor([round(fn((i - LUT_HALF + 0.5) * step) * ONE) for i in range(2 * LUT_HALF)],
                        dtype=torch.float64)


TANH = _activation_table(math.tanh)
SIGMOID = _activation_table(lambda v: 1 / (1 + math.exp(-v)))
GATE = torch.cat([TANH, SIGMOID])
EXP = np.array([round(math.exp(-(i + 0.5) / (1 << (FRAC - EXP_STEP))) * (1 << EXP_BITS)) for i in range(EXP_SIZE)]
               + [0], dtype=np.int64)  # the last entry: differences of 16 and more
FINGERPRINT = zlib.crc32(b"".join(t.astype("<i8").tobytes() for t in
                                  (TANH.numpy().astype(np.int64), SIGMOID.numpy().astype(np.int64), EXP))
                         + bytes([FRAC, LUT_STEP, EXP_STEP, EXP_BITS]))


class FixedPoint:
    """The ``FloatArith`` interface of ``FrameStepper`` in exact integers (see the module doc)."""

    def __init__(self, prior: WaveNetPrior):
        for name, w in prior.state_dict().items():
            if w.is_floating_point() and w.numel() and float(w.abs().max()) >= MAX_WEIGHT:
                raise ValueError(f"{name} has a weight of magnitude {float(w.abs().max()):.3g}; "
                                 f"fixed-point coding needs all below {MAX_WEIGHT:g}")
        if 2 * prior.channels > MAX_INPUTS:
            raise ValueError(f"{prior.channels} channels: fixed-point coding allows up to {MAX_INPUTS // 2}")
        self._gate_offset: Tensor | None = None  # GATE index offsets: 0 for tanh, 2·LUT_HALF for sigmoid
        self.heads = [(self.weight(h[1].weight.t()), self.bias(h[1].bias),
                       self.weight(h[3].weight.t()), self.bias(h[3].bias)) for h in prior.heads]

    def weight(self, w: Tensor) -> Tensor:
        return torch.round(w.detach().to(torch.float64) * ONE)  # ×2^FRAC is exact in float64

    def bias(self, b: Tensor) -> Tensor:  # added to products, which carry 2^(2·FRAC)
        return torch.round(b.detach().to(torch.float64) * ONE * ONE)

    def linear(self, b: Tensor, x: Tensor, w_t: Tensor) -> Tensor:
        # Inputs clamped too: residual and skip sums add up to 2·layers outputs.
        return torch.floor(torch.addmm(b, x.clamp(-LIMIT, LIMIT), w_t) / ONE).clamp_(-LIMIT, LIMIT)

    def gate(self, h: Tensor) -> Tensor:  # (B, 2C): tanh of the first C, sigmoid of the rest
        c = h.shape[1] // 2
        if self._gate_offset is None or self._gate_offset.shape[0] != 2 * c:
            self._gate_offset = torch.cat([torch.zeros(c, dtype=torch.long), torch.full((c,), 2 * LUT_HALF)])
        i = torch.floor(h / (1 << LUT_STEP)).clamp_(-LUT_HALF, LUT_HALF - 1).long() + LUT_HALF
        a, b = GATE[i + self._gate_offset].chunk(2, dim=1)  # one lookup for both halves
        return torch.floor(a * b / ONE)

    def relu(self, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    def head(self, prior: WaveNetPrior, level: int, x: Tensor) -> Tensor:
        w1, b1, w2, b2 = self.heads[level]  # head = ReLU, Linear, ReLU, Linear
        return self.linear(b2, self.relu(self.linear(b1, self.relu(x), w1)), w2)


def frequencies(logits: Tensor, total: int) -> np.ndarray:
    """Integer table (K,) int64 from fixed-point logits (K,): e_k = EXP[max - logit_k] (exp of
    the difference, 2^-8 steps), then ``1 + floor(e_k · (total - K) / Σe)`` (a floor of 1
    keeps every code codable) and the few units lost to flooring given to the most likely code
    (the first on ties), so the table sums to exactly ``total``. Integers throughout."""
    z = logits.reshape(-1).numpy().astype(np.int64)  # integer-valued already: exact
    k = z.size
    if k > total // 2:
        raise ValueError(f"{k} codes do not fit a frequency total of {total}")
    d = np.minimum((z.max() - z) >> EXP_STEP, EXP_SIZE)
    e = EXP[d]
    f = 1 + e * (total - k) // e.sum()
    f[int(np.argmax(f))] += total - int(f.sum())
    return f
