"""Speed and code use of our EMA VectorQuantizer against vector-quantize-pytorch's VectorQuantize.

Run by hand (not a test), from the repository root with the package installed:

    python bench/quantizer.py                 # K = 1024 and 4096, 32,768 vectors of D = 64
    python bench/quantizer.py --codes 1024 --runs 15 --skip-codes

Both quantizers get equal settings: EMA codebook, decay 0.99, eps 1e-5, commitment weight 0.25,
straight-through gradients (``rotation_trick=False``), no k-means, no dead-code restarts, float32,
training mode (so every forward also does the EMA update). Speed: forward + backward of
``loss + mean(z_q^2)`` (a stand-in for a decoder loss), both from the same initial codebook, runs
interleaved (ours, theirs, ours, theirs, ...) so that load from other processes on the machine
hits both alike; medians reported. Code use: both train for ``--steps`` steps on the same
batches, from the same initial codebook and from each library's own default one."""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import time

import torch
from torch import Tensor
from vector_quantize_pytorch import VectorQuantize

from vqaudio.quantizer import VectorQuantizer


def make_pair(dim: int, num_codes: int, seed: int,
              same_init: bool = True) -> tuple[VectorQuantizer, VectorQuantize]:
    """Ours and theirs with equal settings and (``same_init``) the same initial codebook."""
    torch.manual_seed(seed)
    ours = VectorQuantizer(dim, num_codes, kind="ema", beta=0.25, decay=0.99, eps=1e-5).train()
    theirs = VectorQuantize(
        dim=dim,
        codebook_size=num_codes,
        decay=0.99,
        eps=1e-5,
        commitment_weight=0.25,
        rotation_trick=False,  # plain straight-through estimator, like ours
        straight_through=False,  # (their Gumbel straight-through; off = argmin)
        kmeans_init=False,
        threshold_ema_dead_code=0,  # no restarts, like ours with restart_after=0
        sync_codebook=False,
    ).train()
    if not same_init:  # each keeps its own default: ours N(0, 1), theirs Kaiming-uniform
        return ours, theirs
    with torch.no_grad():
        # Same start for both: codebook, running sums = codebook * sizes, sizes = 1.
        theirs._codebook.embed.copy_(ours.codebook[None])
        theirs._codebook.embed_avg.copy_(ours.embed_sum[None])
        theirs._codebook.cluster_size.copy_(ours.cluster_size[None])
    return ours, theirs


def step_ours(vq: VectorQuantizer, z: Tensor) -> None:
    q = vq(z)
    (q.loss + q.z_q.square().mean()).backward()


def step_theirs(vq: VectorQuantize, z: Tensor) -> None:
    z_q, _, loss = vq(z)
    (loss + z_q.square().mean()).backward()


def time_ms(step, vq, z: Tensor) -> float:
    z.grad = None
    start = time.perf_counter()
    step(vq, z)
    return (time.perf_counter() - start) * 1e3


def mixture_sampler(dim: int, centres: int, seed: int):
    """Draws from one mixture of Gaussians: ``centres`` means ~ N(0, 4 I), spread 1."""
    means = 2.0 * torch.randn(centres, dim, generator=torch.Generator().manual_seed(seed))

    def sample(n: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return means[torch.randint(centres, (n,), generator=g)] + torch.randn(n, dim, generator=g)

    return sample


def perplexity_and_used(codes: Tensor, num_codes: int) -> tuple[float, int]:
    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).float()
    probs = counts / counts.sum()
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum()
    return entropy.exp().item(), int((counts > 0).sum())


def bench_speed(num_codes: int, args: argparse.Namespace) -> dict:
    ours, theirs = make_pair(args.dim, num_codes, args.seed)
    shape = (args.batch, args.vectors // args.batch, args.dim)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed)).requires_grad_()
    for _ in range(args.warmup):
        time_ms(step_ours, ours, z)
        time_ms(step_theirs, theirs, z)
    t_ours, t_theirs = [], []
    for _ in range(args.runs):
        t_ours.append(time_ms(step_ours, ours, z))
        t_theirs.append(time_ms(step_theirs, theirs, z))
    return {"ours": statistics.median(t_ours), "theirs": statistics.median(t_theirs),
            "ours_all": t_ours, "theirs_all": t_theirs}


def bench_codes(num_codes: int, args: argparse.Namespace, same_init: bool) -> dict:
    """Train both for ``args.steps`` steps on the same batches; code use on a held-out draw."""
    ours, theirs = make_pair(args.dim, num_codes, args.seed, same_init)
    sample = mixture_sampler(args.dim, args.centres, args.seed + 1)
    shape = (args.batch, args.code_vectors // args.batch, args.dim)
    for i in range(args.steps):  # a fresh draw every step, like new minibatches
        batch = sample(args.code_vectors, seed=1000 + i).reshape(shape)
        step_ours(ours, batch.clone().requires_grad_())
        step_theirs(theirs, batch.clone().requires_grad_())
    ours.eval()
    theirs.eval()
    x = sample(args.code_vectors, seed=999).reshape(shape)
    with torch.no_grad():
        q = ours(x)
        z_q, codes_theirs, _ = theirs(x)
    out = {}
    for name, codes, recon in (("ours", q.codes, q.z_q), ("theirs", codes_theirs, z_q)):
        ppl, used = perplexity_and_used(codes, num_codes)
        out[name] = {"perplexity": ppl, "used": used, "mse": (recon - x).square().mean().item()}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--codes", type=int, nargs="+", default=[1024, 4096], help="K values")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=32768, help="vectors per batch")
    parser.add_argument("--batch", type=int, default=32, help="leading batch axis")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=9, help="timed runs of each (interleaved)")
    parser.add_argument("--steps", type=int, default=50, help="training steps for code use")
    parser.add_argument("--code-vectors", type=int, default=8192,
                        help="vectors per training step and in the held-out draw, for code use")
    parser.add_argument("--centres", type=int, default=512, help="Gaussian mixture components")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-codes", action="store_true", help="timing only")
    parser.add_argument("--verbose", action="store_true", help="print every timed run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, vector-quantize-pytorch "
          f"{importlib.metadata.version('vector-quantize-pytorch')}, {args.threads} threads, "
          f"{args.vectors} vectors of D={args.dim} as "
          f"{(args.batch, args.vectors // args.batch, args.dim)}, "
          f"{args.runs} interleaved runs after {args.warmup} warm-up\n")
    speed_rows, code_rows = [], []
    for k in args.codes:
        speed = bench_speed(k, args)
        if args.verbose:
            print(f"K={k} ours  ", " ".join(f"{t:.0f}" for t in speed["ours_all"]))
            print(f"K={k} theirs", " ".join(f"{t:.0f}" for t in speed["theirs_all"]))
        speed_rows.append(f"| {k} | {speed['ours']:.0f} | {speed['theirs']:.0f} "
                          f"| {speed['ours'] / speed['theirs']:.2f}× |")
        if not args.skip_codes:
            for same_init in (True, False):
                c = bench_codes(k, args, same_init)
                o, t = c["ours"], c["theirs"]
                init = "shared" if same_init else "each its default"
                code_rows.append(
                    f"| {k} | {init} | {o['perplexity']:.0f} / {o['used']} / {o['mse']:.3f} "
                    f"| {t['perplexity']:.0f} / {t['used']} / {t['mse']:.3f} |")

    print("| K | ours fwd+bwd (ms, median) | theirs fwd+bwd (ms, median) | ours / theirs |")
    print("|---:|---:|---:|---:|")
    print("\n".join(speed_rows))
    if code_rows:
        print(f"\nCode use after {args.steps} training steps of {args.code_vectors} vectors, fresh "
              f"draws from a mixture of {args.centres} Gaussians in D={args.dim}; measured on a "
              "held-out draw in eval mode:\n")
        print("| K | initial codebook | ours perplexity / used / MSE "
              "| theirs perplexity / used / MSE |")
        print("|---:|---|---:|---:|")
        print("\n".join(code_rows))


if __name__ == "__main__":
    main()
