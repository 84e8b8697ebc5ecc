"""Entropy coding of codes with a prior: an arithmetic coder over integer frequency tables.

The coder is the classic integer arithmetic coder (Witten, Neal & Cleary, CACM 1987, in the
formulation of Nayuki's Reference-arithmetic-coding: 32-bit low/high, underflow bits), pure
Python: a few bits per code at 250 codes/s is far from its limit; the prior is the cost.

Probabilities to tables: the encoder and the decoder run the prior frame by frame through the
same cached step (``WaveNetPrior.stepper``) in exact fixed-point arithmetic
(priors/fixed_point.py), and turn its integer logits into integer frequency tables (a floor of
1 per code, so every code stays codable at ≤ 16 bits, and a fixed total of 2^16) by integer
operations. Nothing depends on float rounding, thread count, CPU or torch build: the tables,
hence the decoded codes, are the same on every machine. The header records the fixed-point
lookup tables' fingerprint (``fixed_point.FINGERPRINT``) and decoding refuses another.

Levels: a prior over L_p levels codes the first min(L, L_p) levels of each frame with its
probabilities; further levels are coded flat (uniform frequencies: log2 K bits each). With
L < L_p the prior's input for a frame sums the embeddings of the levels present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vqaudio.errors import VqaudioError
from vqaudio.priors.fixed_point import FixedPoint, frequencies
from vqaudio.priors.wavenet import WaveNetPrior

TOTAL = 1 << 16  # every table sums to this
STATE_BITS = 32
_FULL = (1 << STATE_BITS) - 1
_HALF = 1 << (STATE_BITS - 1)
_QUARTER = _HALF >> 1
ENTROPY_PRIOR = "entropy_prior"  # the optional folder beside a model's vqvae/ and prior/


class ArithmeticEncoder:
    def __init__(self):
        self.low, self.high, self.pending = 0, _FULL, 0
        self.bits: list[int] = []

    def encode(self, cum_low: int, cum_high: int, total: int) -> None:
        """Code the symbol whose cumulative frequencies span [cum_low, cum_high) of ``total``."""
        span = self.high - self.low + 1
        self.high = self.low + span * cum_high // total - 1
        self.low = self.low + span * cum_low // total
        while not (self.low ^ self.high) & _HALF:  # top bits agree: emit it
            bit = self.low >> (STATE_BITS - 1)
            self.bits.append(bit)
            self.bits.extend([bit ^ 1] * self.pending)
            self.pending = 0
            self.low = (self.low << 1) & _FULL
            self.high = ((self.high << 1) & _FULL) | 1
        while self.low & ~self.high & _QUARTER:  # low = 01…, high = 10…: defer a bit
            self.pending += 1
            self.low = (self.low << 1) ^ _HALF
            self.high = ((self.high ^ _HALF) << 1) | _HALF | 1

    def finish(self) -> bytes:
        """One final bit (plus pending ones) selects the interval; the decoder reads zeros past
        the end, so trailing zero bytes are dropped."""
        self.bits.append(1)
        self.bits.extend([0] * self.pending)
        return np.packbits(np.array(self.bits, dtype=np.uint8)).tobytes().rstrip(b"\0")


class ArithmeticDecoder:
    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
        self.pos = 0
        self.low, self.high, self.code = 0, _FULL, 0
        for _ in range(STATE_BITS):
            self.code = (self.code << 1) | self._bit()

    def _bit(self) -> int:
        self.pos += 1
        return self.bits[self.pos - 1] if self.pos <= len(self.bits) else 0

    def decode(self, cum: np.ndarray) -> int:
        """The symbol s with cum[s] ≤ value < cum[s+1]; ``cum`` (K+1,) starts at 0, ends at the total."""
        total = int(cum[-1])
        span = self.high - self.low + 1
        value = ((self.code - self.low + 1) * total - 1) // span
        s = int(np.searchsorted(cum, value, side="right")) - 1
        cum_low, cum_high = int(cum[s]), int(cum[s + 1])
        self.high = self.low + span * cum_high // total - 1
        self.low = self.low + span * cum_low // total
        while not (self.low ^ self.high) & _HALF:
            self.low = (self.low << 1) & _FULL
            self.high = ((self.high << 1) & _FULL) | 1
            self.code = ((self.code << 1) & _FULL) | self._bit()
        while self.low & ~self.high & _QUARTER:
            self.low = (self.low << 1) ^ _HALF
            self.high = ((self.high ^ _HALF) << 1) | _HALF | 1
            self.code = (self.code & _HALF) | ((self.code << 1) & (_FULL >> 1)) | self._bit()
        return s


def _cumulative(f: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(f)])


def _stepper(prior: WaveNetPrior):
    try:
        return prior.stepper(1, arith=FixedPoint(prior))
    except ValueError as e:  # weights too large for the fixed-point range
        raise VqaudioError(f"this entropy prior cannot be run in fixed point ({e}); retrain it") from None


def encode(prior: WaveNetPrior, codes: np.ndarray) -> bytes:
    """Arithmetic-code codes (frames, L) with ``prior``'s probabilities, frame by frame."""
    codes = np.asarray(codes, dtype=np.int64)
    frames, levels = codes.shape
    k, m = prior.num_codes, min(levels, prior.levels)
    enc = ArithmeticEncoder()
    c = torch.from_numpy(codes)
    step = _stepper(prior)
    for t in range(frames):
        h, row = step.context(), c[t: t + 1, :m]
        for l in range(m):
            cum = _cumulative(frequencies(step.logits(h, row, l), TOTAL))
            s = int(codes[t, l])
            enc.encode(int(cum[s]), int(cum[s + 1]), TOTAL)
        for l in range(m, levels):  # levels beyond the prior: flat
            enc.encode(int(codes[t, l]), int(codes[t, l]) + 1, k)
        step.push(row)
    return enc.finish()


def decode(prior: WaveNetPrior, data: bytes, frames: int, levels: int) -> np.ndarray:
    """Inverse of ``encode``: codes (frames, levels) int64. Any bytes decode to codes in
    range: damage is caught by the file's checksum, not here."""
    k, m = prior.num_codes, min(levels, prior.levels)
    codes = np.zeros((frames, levels), dtype=np.int64)
    flat = np.arange(k + 1)
    dec = ArithmeticDecoder(data)
    step = _stepper(prior)
    row = torch.zeros(1, m, dtype=torch.long)
    for t in range(frames):
        h = step.context()
        for l in range(m):
            row[0, l] = codes[t, l] = dec.decode(_cumulative(frequencies(step.logits(h, row, l), TOTAL)))
        for l in range(m, levels):
            codes[t, l] = dec.decode(flat)
        step.push(row.clone())
    return codes


def load_entropy_prior(codec) -> tuple[WaveNetPrior, dict]:
    """The unconditional prior in ``entropy_prior/`` beside the codec's ``vqvae/`` folder;
    VqaudioError when there is none or it does not fit the codec."""
    from vqaudio.build import load_audio_prior
    from vqaudio.checkpoint import same_codes

    folder = Path(codec.path).parent / ENTROPY_PRIOR
    if not (folder / "config.json").is_file():
        raise VqaudioError(f"model {Path(codec.path).parent}: has no entropy prior ({ENTROPY_PRIOR}/); "
                           "encode without --entropy, or train one (README: 'Entropy coding')")
    prior, config = load_audio_prior(folder)
    if config.get("labels"):
        raise VqaudioError(f"model {folder}: the entropy prior is label-conditioned; entropy coding "
                           "needs an unconditional one (prior.conditional = false)")
    if prior.frame_stack != 1:
        raise VqaudioError(f"model {folder}: the entropy prior steps {prior.frame_stack} frames at a time; "
                           "the entropy coder runs one frame a step: retrain it with prior.frame_stack = 1")
    if config["num_codes"] != codec.config["num_codes"] or not same_codes(config, codec.config):
        raise VqaudioError(f"model {folder}: the entropy prior was trained on the codes of another VQ-VAE "
                           f"(id {config['vqvae_model_id']}, this model is {codec.config['model_id']}); "
                           "retrain it with --stage prior on this model")
    return prior, config
