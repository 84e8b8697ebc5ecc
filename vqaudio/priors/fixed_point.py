"""Exact fixed-point arithmetic for a WaveNetPrior's frame step, and integer frequency tables.

An arithmetic decoder must rebuild, bit for bit, every frequency table its encoder used. Float
network outputs are not portable: the sum in a matmul rounds differently with another order
(threads, SIMD width, BLAS build), and one flipped last bit can move a table entry. Coarse
rounding of the floats does not cure it: a value near a rounding boundary still lands on
either side. So the entropy coder runs the prior in integers:

* weights and activations are integers scaled by 2^FRAC (weights rounded once from the
  float32 file: a deterministic function of the weights, which the header names by id);
* a linear layer is ``floor((x @ W + b·2^FRAC) / 2^FRAC)``, its output clamped to ±2^20
  (±256.0). The integers are held in float64 numpy arrays, so a fast float64 matmul (BLAS)
  computes them, and it does so exactly: every product and partial sum is an integer below
  2^53, which float64 represents exactly, so every addition is exact and the order of the sum
  cannot matter. ``FixedPoint`` checks that bound for the prior's shape: an input is at most
  (levels + layers) clamped outputs summed (the residual stream), a weight below 2^(FRAC+8);
* tanh and sigmoid are read from tables (``GATE``) at every fixed-point input in [-8, 8), the
  softmax's exp from a table (``EXP``) in steps of 2^-8; all built once from Python's float64
  math and rounded to integers. They are the same on every machine unless a platform's libm
  rounds an entry across .5 (a chance of order 1e-7); their CRC32 (``FINGERPRINT``) is stored
  in the codes file and a mismatch is refused.

Weight steps of 2^-12 and the exp table's 2^-8 cost nothing measurable: the test prior's
coded size on the benchmark files is the same to 0.01 bits per code (bench/RESULTS.md).
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from torch import Tensor

from vqaudio.priors.wavenet import WaveNetPrior

FRAC = 12  # fractional bits of weights and activations
ONE = float(1 << FRAC)
LIMIT = float(1 << 20)  # activations are clamped to ±LIMIT (±256.0): keeps every sum below 2^53
MAX_WEIGHT = 256.0  # |w| must stay below this (2^(FRAC+8) as an integer)
LUT_HALF = 8 << FRAC  # activation tables: every fixed-point input in [-8, 8), 2^15 each side of 0
EXP_STEP = 4  # the exp LUT: steps of 2^-8 in (max logit - logit), over [0, 16)
EXP_SIZE = 16 << (FRAC - EXP_STEP)
EXP_BITS = 20  # exp(-d) scaled to 2^20


def _activation_table(fn) -> list[int]:
    """fn at every fixed-point input in [-8, 8), scaled by 2^FRAC and rounded."""
    return [round(fn((i - LUT_HALF) / ONE) * ONE) for i in range(2 * LUT_HALF)]


# tanh for indices [0, 2·LUT_HALF), sigmoid for [2·LUT_HALF, 4·LUT_HALF): one lookup gates both halves
GATE = np.array(_activation_table(math.tanh) + _activation_table(lambda v: 1 / (1 + math.exp(-v))),
                dtype=np.float64)
EXP = np.array([round(math.exp(-(i + 0.5) / (1 << (FRAC - EXP_STEP))) * (1 << EXP_BITS)) for i in range(EXP_SIZE)]
               + [0], dtype=np.int64)  # the last entry: differences of 16 and more
FINGERPRINT = zlib.crc32(GATE.astype("<i8").tobytes() + EXP.astype("<i8").tobytes()
                         + bytes([FRAC, EXP_STEP, EXP_BITS]))


class FixedPoint:
    """The ``FloatArith`` interface of ``FrameStepper`` in exact integers (see the module doc),
    held in numpy float64 arrays: a frame costs a third of torch's per-operation overhead."""

    def __init__(self, prior: WaveNetPrior):
        for name, w in prior.state_dict().items():
            if w.is_floating_point() and w.numel() and float(w.abs().max()) >= MAX_WEIGHT:
                raise ValueError(f"{name} has a weight of magnitude {float(w.abs().max()):.3g}; "
                                 f"fixed-point coding needs all below {MAX_WEIGHT:g}")
        # The largest |sum| in any linear layer: 2C inputs, each at most (levels + layers)
        # clamped values (the residual stream), times the largest weight, plus the bias.
        largest = 2 * prior.channels * (prior.step_levels + len(prior.layers)) * LIMIT * MAX_WEIGHT * ONE
        if largest + MAX_WEIGHT * ONE * ONE >= 2.0 ** 53:
            raise ValueError(f"{prior.channels} channels and {len(prior.layers)} layers could make sums "
                             "beyond 2^53 in fixed point")
        c = prior.channels
        self.gate_offset = np.concatenate([np.full(c, LUT_HALF), np.full(c, 3 * LUT_HALF)])  # 0 in GATE
        self.heads = [(self.weight(h[1].weight.t()), self.bias(h[1].bias),
                       self.weight(h[3].weight.t()), self.bias(h[3].bias)) for h in prior.heads]

    def weight(self, w: Tensor) -> np.ndarray:
        return np.round(w.detach().cpu().numpy().astype(np.float64) * ONE)  # ×2^FRAC is exact

    def bias(self, b: Tensor) -> np.ndarray:  # added to products, which carry 2^(2·FRAC)
        return np.round(b.detach().cpu().numpy().astype(np.float64) * ONE * ONE)

    def zeros(self, *shape: int, like: np.ndarray) -> np.ndarray:
        return np.zeros(shape)

    def cat(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.concatenate([a, b], 1)

    def halves(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = h.shape[1] // 2
        return h[:, :c], h[:, c:]

    def embed(self, table: np.ndarray, index: Tensor) -> np.ndarray:
        return table[index.numpy()].sum(1)

    def linear(self, b: np.ndarray, x: np.ndarray, w_t: np.ndarray) -> np.ndarray:
        y = x @ w_t
        y += b
        np.floor_divide(y, ONE, out=y)
        return np.clip(y, -LIMIT, LIMIT, out=y)

    def gate(self, h: np.ndarray) -> np.ndarray:  # (B, 2C): tanh of the first C, sigmoid of the rest
        g = GATE[np.clip(h, -LUT_HALF, LUT_HALF - 1).astype(np.int64) + self.gate_offset]
        a, b = self.halves(g)
        return np.floor_divide(a * b, ONE)

    def relu(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)

    def head(self, prior: WaveNetPrior, level: int, x: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self.heads[level]  # head = ReLU, Linear, ReLU, Linear
        return self.linear(b2, self.relu(self.linear(b1, self.relu(x), w1)), w2)


def frequencies(logits: np.ndarray, total: int) -> np.ndarray:
    """Integer table (K,) int64 from fixed-point logits (K,): e_k = EXP[max - logit_k] (exp of
    the difference, 2^-8 steps), then ``1 + floor(e_k · (total - K) / Σe)`` (a floor of 1
    keeps every code codable) and the few units lost to flooring given to the most likely code
    (the first on ties), so the table sums to exactly ``total``. Integers throughout."""
    z = np.asarray(logits).reshape(-1).astype(np.int64)  # integer-valued already: exact
    k = z.size
    if k > total // 2:
        raise ValueError(f"{k} codes do not fit a frequency total of {total}")
    d = np.minimum((z.max() - z) >> EXP_STEP, EXP_SIZE)
    e = EXP[d]
    f = 1 + e * (total - k) // e.sum()
    f[int(np.argmax(f))] += total - int(f.sum())
    return f
