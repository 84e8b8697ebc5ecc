"""The one vector quantizer shared by the audio and image paths.

It sees only channels-last tensors ``(..., D)`` and knows nothing of audio or images:
``(B, T, D)`` code sequences, ``(B, H, W, D)`` code grids and ``(B, D)`` global codes all go
through the same code. arXiv:1711.00937 (VQ-VAE), EMA codebook from its appendix;
residual VQ and quantizer dropout from arXiv:2107.03312 (SoundStream).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("ema", "gradient")
_BLOCK_ELEMENTS = 2**22  # CPU distance blocks of 16 MB in float32 (see VectorQuantizer.nearest)


class Quantized(NamedTuple):
    z_q: Tensor  # (..., D) quantized, straight-through to the input
    codes: Tensor  # (...) long; ResidualVQ: (..., levels)
    loss: Tensor  # () commitment (+ codebook) loss
    perplexity: Tensor  # () exp(entropy) of code use in this batch; ResidualVQ: first level
    used: Tensor  # () number of distinct codes used in this batch; ResidualVQ: first level


def _distributed() -> bool:
    # Decided at every call, never cached at construction: the process group may be created
    # after the model (QUANTIZER.md pitfall 4).
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: Tensor) -> Tensor:
    if _distributed():
        dist.all_reduce(t)  # in place on the real tensor, never on a .contiguous() copy
    return t


def _broadcast(t: Tensor) -> Tensor:
    if _distributed():
        dist.broadcast(t, src=0)
    return t


def _all_gather_rows(t: Tensor) -> Tensor:
    """The rows of every rank's ``t`` (N_rank, D), concatenated in rank order."""
    if not _distributed():
        return t
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(t)], device=t.device))
    longest = int(max(counts))  # all_gather needs equal shapes: pad, then trim
    padded = torch.zeros(longest, *t.shape[1:], dtype=t.dtype, device=t.device)
    padded[: len(t)] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n)] for p, n in zip(parts, counts)])


def kmeans(x: Tensor, k: int, iters: int = 10, generator: torch.Generator | None = None):
    """Lloyd's k-means on ``x`` (N, D). Returns centroids (k, D) and cluster counts (k,)."""
    n = x.shape[0]
    idx = torch.randperm(n, generator=generator, device="cpu")[:k] if n >= k else (
        torch.randint(n, (k,), generator=generator, device="cpu"))
    centroids = x[idx.to(x.device)].clone()
    counts = torch.zeros(k, device=x.device, dtype=x.dtype)
    for _ in range(iters):
        codes = torch.addmm((centroids * centroids).sum(1), x, centroids.T, alpha=-2).argmin(1)
        counts = torch.bincount(codes, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        filled = counts > 0  # an empty cluster keeps its previous centroid
        centroids[filled] = sums[filled] / counts[filled, None]
    return centroids, counts


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer with an EMA or gradient-trained codebook.

    Args:
        dim: D, the size of the input's last axis.
        num_codes: K, the number of codebook entries.
        kind: "ema" (codebook follows running means, only beta*commitment reaches the encoder)
            or "gradient" (codebook loss ||sg(z) - e||^2 + beta*||z - sg(e)||^2).
        beta: commitment weight.
        decay: EMA decay of the cluster sizes and sums (kind="ema").
        eps: Laplace smoothing of the EMA cluster sizes.
        kmeans_init: initialise the codebook with k-means on the first training batch.
        kmeans_iters: Lloyd iterations for that initialisation.
        restart_after: re-seed a code from recent encoder outputs once it has gone unused for
            this many training steps (0 disables restarts).
        cosine: l2-normalise inputs and codes, so the lookup is by cosine similarity.
        code_dim: quantize in a learned low-dimensional projection of this size
            (None: quantize in D itself).

    Input ``(..., D)``; output :class:`Quantized` with ``z_q (..., D)`` and ``codes (...)``.
    """

    def __init__(
        self,
        dim: int,
        num_codes: int,
        kind: str = "ema",
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        restart_after: int = 0,
        cosine: bool = False,
        code_dim: int | None = None,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"quantizer kind must be one of {KINDS}, not {kind!r}")
        if num_codes < 2:
            raise ValueError(f"num_codes must be at least 2, not {num_codes}")
        self.dim, self.num_codes, self.kind = dim, num_codes, kind
        self.beta, self.decay, self.eps = beta, decay, eps
        self.kmeans_iters, self.restart_after, self.cosine = kmeans_iters, restart_after, cosine
        self.code_dim = code_dim or dim
        if code_dim is not None and code_dim != dim:
            self.project_in: nn.Module = nn.Linear(dim, code_dim)
            self.project_out: nn.Module = nn.Linear(code_dim, dim)
        else:
            self.project_in = self.project_out = nn.Identity()

        codebook = torch.randn(num_codes, self.code_dim)
        if cosine:
            codebook = F.normalize(codebook, dim=-1)
        if kind == "ema":
            self.register_buffer("codebook", codebook)
            # Sizes start at one and sums equal codebook * sizes, so an unused code neither
            # divides by ~eps nor jumps at the first update (QUANTIZER.md pitfalls 2, 3).
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))

    # -- lookup -------------------------------------------------------------------------------
    def _codes_vectors(self) -> Tensor:
        return F.normalize(self.codebook, dim=-1) if self.cosine else self.codebook

    def lookup(self, codes: Tensor) -> Tensor:
        """Vectors ``(..., D)`` for integer codes ``(...)``; equals the forward ``z_q``."""
        return self.project_out(F.embedding(codes, self._codes_vectors()))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``flat`` (N, code_dim), float32 math."""
        e = self._codes_vectors().float()
        # Distances are translation invariant; centring on the codebook mean keeps
        # ||z||^2 - 2 z.e + ||e||^2 accurate for data far from the origin (QUANTIZER.md 6).
        mean = e.mean(0)
        e = e - mean
        e_sq = (e * e).sum(1)
        flat = flat.float()
        # On CPU the (N, K) distances are made a block of rows at a time: the allocator reuses
        # a block of 16 MB, while a whole N x K matrix (128 MB at N = 32768, K = 1024) is fresh
        # memory at every call, whose page faults can cost as much as the matmul. GPU
        # allocations are cached, so there the batch is one block.
        rows = _BLOCK_ELEMENTS // len(e) if flat.is_cpu else len(flat)
        # ||z||^2 is the same for every code, so argmin needs only ||e||^2 - 2 z.e: one addmm
        # per block.
        return torch.cat([torch.addmm(e_sq, block - mean, e.T, alpha=-2).argmin(1)
                          for block in flat.split(max(rows, 1))])

    # -- forward ------------------------------------------------------------------------------
    def forward(self, z: Tensor) -> Quantized:
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected last axis of size {self.dim}, got shape {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):
            out = self._quantize(z)
        return out._replace(z_q=out.z_q.to(z.dtype))

    def _quantize(self, z: Tensor) -> Quantized:
        z = self.project_in(z.float())
        if self.cosine:
            z = F.normalize(z, dim=-1)
        lead = z.shape[:-1]
        flat = z.reshape(-1, self.code_dim)
        update = self.training and torch.is_grad_enabled()

        if update and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        codes = self.nearest(flat.detach())
        counts = torch.bincount(codes, minlength=self.num_codes).float()

        if update and self.kind == "ema":
            self._ema_update(flat.detach(), codes, counts)
        if update and self.restart_after > 0:
            self._restart_dead(flat.detach(), counts)

        q = F.embedding(codes, self._codes_vectors()).view_as(z)
        commitment = F.mse_loss(z, q.detach())
        if self.kind == "gradient":
            loss = F.mse_loss(q, z.detach()) + self.beta * commitment
        else:
            loss = self.beta * commitment
        z_q = z + (q - z).detach()  # straight-through estimator
        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return Quantized(self.project_out(z_q), codes.view(lead), loss, perplexity,
                         (counts > 0).sum())

    # -- codebook maintenance (no gradients; identical on every rank) -------------------------
    @torch.no_grad()
    def _kmeans_init(self, flat: Tensor) -> None:
        # On the whole global batch, as one process would see it; every rank draws the same
        # initial rows (same seed), and rank 0's result is broadcast all the same.
        centroids, counts = kmeans(_all_gather_rows(flat), self.num_codes, self.kmeans_iters)
        if self.cosine:
            centroids = F.normalize(centroids, dim=-1)
        _broadcast(centroids)  # rank 0's centroids for everyone
        _broadcast(counts)
        self.codebook.data.copy_(centroids)
        if self.kind == "ema":
            self.cluster_size.copy_(counts.clamp(min=1))
            self.embed_sum.copy_(centroids * self.cluster_size[:, None])
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, codes: Tensor, counts: Tensor) -> None:
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, flat)
        # Sum the batch statistics of all ranks before the update, so every rank applies the
        # same step and holds the same codebook as one process on the whole batch would.
        batch_counts = _all_reduce_sum(counts.clone())
        sums = _all_reduce_sum(sums)
        self.cluster_size.lerp_(batch_counts, 1 - self.decay)
        self.embed_sum.lerp_(sums, 1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.embed_sum / size.unsqueeze(1))

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor, counts: Tensor) -> None:
        used = _all_reduce_sum(counts.clone()) > 0
        self.unused_steps.add_(1).masked_fill_(used, 0)
        dead = self.unused_steps >= self.restart_after
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Replacement vectors are drawn from rank 0's batch and broadcast; the decision to
        # restart came from synced counts, so every rank takes part in the broadcast.
        pick = torch.randint(flat.shape[0], (n_dead,)).to(flat.device)  # the CPU RNG, on any device
        fresh = _broadcast(flat[pick].clone())
        if self.cosine:
            fresh = F.normalize(fresh, dim=-1)
        # After the EMA step, and all buffers together, so the restart is not overwritten by
        # the running sums (QUANTIZER.md pitfall 1).
        self.codebook.data[dead] = fresh
        if self.kind == "ema":
            self.cluster_size[dead] = 1.0
            self.embed_sum[dead] = fresh
        self.unused_steps[dead] = 0


class ResidualVQ(nn.Module):
    """A stack of quantizers, each coding the residual the previous levels left (a bitrate
    ladder). With ``dropout``, training uses a random number of levels per batch, so one
    model serves every bitrate from 1 to ``num_levels`` levels.

    Input ``(..., D)``; codes ``(..., levels)``. Extra keyword arguments configure every level
    (see :class:`VectorQuantizer`).
    """

    def __init__(self, dim: int, num_codes: int, num_levels: int, dropout: bool = False,
                 **level_kwargs):
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be at least 1, not {num_levels}")
        self.dim, self.num_codes, self.num_levels, self.dropout = dim, num_codes, num_levels, dropout
        self.levels = nn.ModuleList(
            VectorQuantizer(dim, num_codes, **level_kwargs) for _ in range(num_levels))

    def forward(self, z: Tensor, levels: int | None = None) -> Quantized:
        n = levels or self.num_levels
        if not 1 <= n <= self.num_levels:
            raise ValueError(f"levels must be between 1 and {self.num_levels}, not {n}")
        if levels is None and self.dropout and self.training:
            # Rank 0's draw for every rank, so all ranks train the same number of levels.
            n = int(_broadcast(torch.randint(1, self.num_levels + 1, ()).to(z.device)))
        residual, total = z, torch.zeros_like(z)
        codes, losses, first = [], [], None
        for vq in self.levels[:n]:
            q = vq(residual)
            first = q if first is None else first
            # Detach what is subtracted: each level's commitment loss then pulls the encoder
            # output itself, not a chain through earlier codes (QUANTIZER.md pitfall 5).
            quantized = q.z_q.detach()
            residual = residual - quantized
            total = total + quantized
            codes.append(q.codes)
            losses.append(q.loss)
        z_q = z + (total - z).detach()
        return Quantized(z_q, torch.stack(codes, -1), torch.stack(losses).sum(),
                         first.perplexity, first.used)

    @property
    def may_skip_parameters(self) -> bool:
        """Whether a training step can leave parameters without a gradient: quantizer dropout
        skips the upper levels, and with them their learned codebooks or projections
        (DistributedDataParallel must be told)."""
        return self.dropout and any(p.requires_grad for p in self.levels[1:].parameters())

    def lookup(self, codes: Tensor) -> Tensor:
        """Sum of each level's vectors for codes ``(..., levels)``; levels may be fewer than all."""
        if codes.shape[-1] > self.num_levels:
            raise ValueError(f"codes have {codes.shape[-1]} levels, the quantizer {self.num_levels}")
        return sum(vq.lookup(codes[..., i]) for i, vq in enumerate(self.levels[:codes.shape[-1]]))

    def bits_per_frame(self, levels: int | None = None) -> float:
        return (levels or self.num_levels) * math.log2(self.num_codes)
