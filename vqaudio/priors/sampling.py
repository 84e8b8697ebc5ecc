"""Sampling controls (temperature, top-k, top-p, seed) and the one ancestral loop.

A draw is Gumbel-max over the filtered, tempered logits: ``argmax(logits / T + g)`` with
``g ~ Gumbel(0, 1)`` drawn from seeded generators, one ``(B, K)`` slice per position in
sampling order. Any sampler that consumes the same noise in the same order (the reference loop
here, the WaveNet's cached loop) makes the same draws from the same logits; temperature 0 is a
plain argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from vqaudio.errors import VqaudioError


@dataclass(frozen=True)
class Controls:
    # > 1 flattens, < 1 sharpens, 0 = always the most likely code. None = the prior's own
    # default (prior.temperature of its recipe; 1 where it has none).
    temperature: float | None = None
    top_k: int = 0  # keep the k most likely codes (0 = all)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1 = all)
    seed: int = 0
    # Classifier-free guidance (arXiv:2207.12598) of a label-conditioned prior trained with
    # prior.label_dropout: logits u + g·(c − u) from the conditioned (c) and the null-label (u)
    # pass. 1 = the conditioned prior as it is; > 1 holds closer to the label; 0 ignores it.
    # None = the prior's own default (prior.guidance of its recipe).
    guidance: float | None = None
    # Best of N: draw N candidates per clip and keep the one a code classifier finds most
    # likely its label (``pick_clearest``). 1 = the plain draw; None = the prior's own
    # default (prior.candidates of its recipe; 1 where it has none).
    candidates: int | None = None
    # Sample smoothing: below 1 kHz, the decode of the drawn clip's latent low-passed over this
    # many frames (odd; ``Codec.decode``; steadier voices, DNSMOS up). 1 = off; None = the
    # prior's own default (prior.smoothing of its recipe; 1 where it has none).
    smoothing: int | None = None
    # End each clip with its first utterance: once this many seconds of quiet follow it, the
    # rest is silence (vqaudio/utterance.py). 0 = off; None = the prior's own default
    # (prior.end_silence of its recipe; 0 where it has none).
    end_silence: float | None = None

    @property
    def guided(self) -> bool:
        return self.guidance is not None and self.guidance != 1.0

    def check(self) -> "Controls":
        """These controls, validated; a temperature left to the prior's default (None) reads 1
        here, where no prior is at hand (``with_prior_defaults`` fills it from the prior)."""
        if self.temperature is None:
            return replace(self, temperature=1.0).check()
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise VqaudioError(f"--temperature must be 0 or more, got {self.temperature}")
        if self.top_k < 0:
            raise VqaudioError(f"--top-k must be 0 (off) or positive, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise VqaudioError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.guidance is not None and not (self.guidance >= 0 and math.isfinite(self.guidance)):
            raise VqaudioError(f"--guidance must be 0 or more, got {self.guidance}")
        if self.candidates is not None and self.candidates < 1:
            raise VqaudioError(f"--candidates must be 1 or more, got {self.candidates}")
        if self.smoothing is not None and (self.smoothing < 1 or self.smoothing % 2 == 0):
            raise VqaudioError(f"--smoothing must be an odd number of frames (1 = off, e.g. 5), got {self.smoothing}")
        if self.end_silence is not None and not (self.end_silence >= 0 and math.isfinite(self.end_silence)):
            raise VqaudioError(f"--end-silence must be 0 (off) or a number of seconds, got {self.end_silence}")
        return self


def guide(cond, uncond, scale: float):
    """Classifier-free guidance of logits (torch or numpy): ``uncond + scale·(cond − uncond)``."""
    return uncond + scale * (cond - uncond)


def drop_labels(labels: Tensor, rate: float, null: int) -> Tensor:
    """Training with prior.label_dropout: each label replaced by the ``null`` label with
    probability ``rate`` (torch's RNG, so seeded and resumed with the rest of training), so
    one model learns the unconditioned prior too, which guidance needs."""
    if rate <= 0:
        return labels
    return labels.masked_fill(torch.rand(labels.shape, device=labels.device) < rate, null)


def with_prior_defaults(controls: Controls, prior_config: dict) -> Controls:
    """``controls`` with guidance, temperature, candidates, smoothing and end_silence left as
    None replaced by the prior's own defaults: ``prior.guidance``, ``prior.temperature``,
    ``prior.candidates``, ``prior.smoothing`` and ``prior.end_silence`` of the recipe it was
    trained with (plain conditioning at full temperature, one draw, no smoothing, clips drawn
    to their end, for priors saved before they existed)."""
    p = prior_config["recipe"]["prior"]
    return replace(controls,
                   guidance=float(p.get("guidance", 1.0)) if controls.guidance is None else controls.guidance,
                   temperature=float(p.get("temperature", 1.0)) if controls.temperature is None else controls.temperature,
                   candidates=int(p.get("candidates", 1)) if controls.candidates is None else controls.candidates,
                   smoothing=int(p.get("smoothing", 1)) if controls.smoothing is None else controls.smoothing,
                   end_silence=float(p.get("end_silence", 0.0)) if controls.end_silence is None else controls.end_silence)


# Candidate j of the clip whose noise is seeded s draws from seed s + j·1,000,003: candidate 0
# is the plain draw, and clip i of --num N --seed S still equals the one clip of --seed S+i.
# (Not 2^32: torch's CPU generator keeps only a seed's low 32 bits.)
CANDIDATE_SEED_STRIDE = 1_000_003


def candidate_seeds(seed: int, num: int, candidates: int) -> list[int]:
    """Noise seeds of ``num`` clips x ``candidates`` rows, candidate-major (row j·num + i)."""
    return [seed + i + j * CANDIDATE_SEED_STRIDE for j in range(candidates) for i in range(num)]


def pick_clearest(codes: Tensor, log_probs: Tensor, labels: Tensor, candidates: int) -> Tensor:
    """Best of N. ``codes`` (N·B, ...) candidate-major, ``log_probs`` (N·B, labels) a
    classifier's log p(label | codes) for each, ``labels`` (B,) the labels asked: (B, ...) the
    candidate of each clip most likely its label (the first on a tie)."""
    num = labels.shape[0]
    score = log_probs.gather(1, labels.repeat(candidates)[:, None]).view(candidates, num)
    return codes.view(candidates, num, *codes.shape[1:])[score.argmax(0), torch.arange(num)]


def guided_labels(controls: Controls, num_labels: int, has_null: bool, labels: Tensor | None) -> Tensor | None:
    """The labels of the rows a draw runs: ``labels`` as they are, or for a guided draw each row
    twice, with its label and then with the null label (``num_labels``)."""
    check_guidance(controls, num_labels, has_null, labels)
    return torch.cat([labels, torch.full_like(labels, num_labels)]) if controls.guided else labels


def check_guidance(controls: Controls, num_labels: int, has_null: bool, labels) -> None:
    """A guided draw needs labels and a prior that learnt a null label (prior.label_dropout)."""
    if not controls.guided:
        return
    if not num_labels or labels is None:
        raise VqaudioError("--guidance needs a label-conditioned prior and labels; leave out --guidance")
    if not has_null:
        raise VqaudioError("--guidance: this prior was trained without prior.label_dropout, so it has "
                           "no unconditioned half to guide with; leave out --guidance or retrain the "
                           "prior with prior.label_dropout = 0.1")


def filter_logits(logits: Tensor, controls: Controls) -> Tensor:
    """Logits (..., K) with codes outside top-k / top-p set to -inf (at least one kept)."""
    if controls.top_k and controls.top_k < logits.shape[-1]:
        kth = logits.topk(controls.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if controls.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a code when the codes before it already reach p; the first is always kept.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= controls.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return logits


class Sampler:
    """Turns logits into codes, position by position. Row b of the batch has its own noise
    stream seeded with ``seed + b``, so a row's draws do not depend on the batch size: sample
    i of ``--num N --seed S`` equals the one sample of ``--seed S+i``. ``seeds`` (one per row)
    replaces ``seed + b`` (best-of-N candidates, ``candidate_seeds``)."""

    def __init__(self, controls: Controls, batch: int, positions: int, seeds: list[int] | None = None):
        self.controls = controls.check()
        self.batch, self.positions = batch, positions
        self.seeds = list(seeds) if seeds is not None else [controls.seed + b for b in range(batch)]
        if len(self.seeds) != batch:
            raise ValueError(f"{len(self.seeds)} seeds for {batch} rows")
        self.noise: np.ndarray | None = None  # (B, positions, K) Gumbel, drawn at the first call

    def _gumbel(self, num_codes: int) -> np.ndarray:
        """(B, positions, K) float32 Gumbel(0, 1) noise. numpy, not torch, for the arithmetic:
        torch splits a large elementwise op over its threads, and on a busy machine each such
        op can wait milliseconds for the other thread (the draws are the same either way up to
        the last bit of a rare entry; reference and cached samplers share this noise)."""
        # In place, into one preallocated array: the same bits as -log(-log(clip(u))) built
        # from temporaries, 2-4x faster for the 8 rows of a best-of-8 draw (2M entries).
        g = np.empty((self.batch, self.positions, num_codes), dtype=np.float32)
        for row, seed in zip(g, self.seeds):
            torch.rand((self.positions, num_codes), dtype=torch.float32,
                       generator=torch.Generator().manual_seed(seed), out=torch.from_numpy(row))
        np.clip(g, 1e-20, 1.0, out=g)
        np.log(g, out=g)
        np.negative(g, out=g)
        np.log(g, out=g)
        return np.negative(g, out=g)

    def __call__(self, logits: Tensor | np.ndarray, position: int) -> Tensor | np.ndarray:
        """logits (B, K) at flattened position ``position`` -> codes (B,) long.

        numpy float32 logits (``NumpyStepper``'s) give numpy int64 codes, the same draws: the
        unfiltered draw stays in numpy (float32 division and addition round the same in both),
        the filtered one goes through ``filter_logits`` on a zero-copy tensor."""
        if isinstance(logits, np.ndarray):
            return self._draw_numpy(logits, position)
        logits = filter_logits(logits.float(), self.controls)
        if self.controls.temperature == 0:
            return logits.argmax(-1)
        noise = torch.from_numpy(self._noise(logits.shape[-1])[:, position]).to(logits.device)
        return (logits / self.controls.temperature + noise).argmax(-1)

    def _noise(self, num_codes: int) -> np.ndarray:
        if self.noise is None:
            self.noise = self._gumbel(num_codes)
        return self.noise

    def _draw_numpy(self, logits: np.ndarray, position: int) -> np.ndarray:
        if self.controls.top_k or self.controls.top_p < 1:
            return self(torch.from_numpy(logits), position).numpy()
        if self.controls.temperature == 0:
            return logits.argmax(-1)
        noise = self._noise(logits.shape[-1])[:, position]
        return (logits / self.controls.temperature + noise).argmax(-1)


LogitsFn = Callable[[Tensor], Tensor]


@torch.inference_mode()
def reference_sample(logits_fn: LogitsFn, shape: tuple[int, ...], batch: int, controls: Controls,
                     device: torch.device | str = "cpu") -> Tensor:
    """The plain ancestral loop: recompute ``logits_fn(codes)`` (B, *S, K) over the whole
    code tensor for every position, in row-major order over ``shape`` (= S). O(N) full passes
    for N positions: slow, obviously correct, the reference the fast samplers are tested
    against."""
    codes = torch.zeros((batch, *shape), dtype=torch.long, device=device)
    flat = codes.view(batch, -1)
    sampler = Sampler(controls, batch, flat.shape[1])
    for i in range(flat.shape[1]):
        logits = logits_fn(codes)
        flat[:, i] = sampler(logits.reshape(batch, flat.shape[1], -1)[:, i], i)
    return codes
