"""The quantizer under data parallelism: 2 gloo processes on CPU (QUANTIZER.md pitfall 4).

Each rank sees different data. Every piece of codebook state must stay identical on all ranks
(EMA statistics summed over ranks, restarts and k-means centroids broadcast from rank 0,
quantizer dropout drawn once for all), and the EMA run must equal one process on the
concatenated batch. Starting processes costs seconds (each imports torch), so one spawn runs
every scenario and the tests below check what it wrote.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.testing import assert_close

from vqaudio.quantizer import ResidualVQ, VectorQuantizer

WORLD = 2
EMA_STEPS = 5
EMA_ROWS = (48, 24)  # rows per rank differ: sums, not means, must be reduced
EMA_KW = dict(dim=4, num_codes=16, decay=0.8)
RVQ_STEPS = 24

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def ema_batches() -> list[list[torch.Tensor]]:
    """batches[step][rank]: (rows, 4), offset per rank; the same in every process."""
    g = torch.Generator().manual_seed(1)
    return [[torch.randn(rows, 4, generator=g) + 2.0 * rank for rank, rows in enumerate(EMA_ROWS)]
            for _ in range(EMA_STEPS)]


def ema_state(vq: VectorQuantizer) -> dict[str, torch.Tensor]:
    return {k: getattr(vq, k).clone() for k in ("codebook", "cluster_size", "embed_sum")}


def _scenario_ema(rank: int, vq: VectorQuantizer) -> dict:
    for batches in ema_batches():
        vq(batches[rank].view(-1, 3, 4) if rank == 1 else batches[rank])  # any leading shape
    return ema_state(vq)


def _scenario_restart(rank: int) -> dict:
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=2, num_codes=16, restart_after=2).train()
    # Every code far from the data: one code wins, the rest die and are restarted.
    vq.codebook.copy_(torch.randn(16, 2) + 50.0)
    vq.embed_sum.copy_(vq.codebook)
    torch.manual_seed(100 + rank)  # ranks now draw different restart candidates locally
    first_used = None
    for _ in range(6):
        q = vq(torch.randn(256, 2) * 3 + torch.tensor([4.0 * rank, 0.0]))
        first_used = q.used.item() if first_used is None else first_used
    return {**ema_state(vq), "unused_steps": vq.unused_steps.clone(), "first_used": first_used}


def _scenario_kmeans(rank: int) -> dict:
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=2, num_codes=8, kmeans_init=True).train()
    torch.manual_seed(100 + rank)  # each rank's k-means would start from different samples
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]]) * (1 + rank)
    data = (centres[:, None] + 0.3 * torch.randn(4, 50, 2)).reshape(-1, 2)
    vq(data)
    out = {**ema_state(vq), "initialized": vq.initialized.clone()}
    vq(data)  # and they stay together
    return {**out, "after": ema_state(vq)}


def _scenario_rvq_dropout(rank: int) -> dict:
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, num_codes=8, num_levels=4, dropout=True).train()
    torch.manual_seed(100 + rank)  # local draws of the number of levels would differ
    levels = [rvq(torch.randn(32, 4)).codes.shape[-1] for _ in range(RVQ_STEPS)]
    return {"levels": levels,
            "codebooks": torch.stack([vq.codebook.clone() for vq in rvq.levels])}


def loss_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of 4 clips (target, reconstruction) with very different energies."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 800, generator=g) * torch.tensor([0.01, 1.0, 0.3, 0.05]).view(4, 1, 1)
    return x, x + 0.1 * torch.randn(4, 1, 800, generator=g)


def full_batch_loss(x: torch.Tensor, x_hat: torch.Tensor, across_ranks: bool):
    from vqaudio.losses import ReconstructionLoss

    crit = ReconstructionLoss(8000, {"l1": 1.0, "stft": 1.0, "mel": 1.0})
    x_hat = x_hat.clone().requires_grad_(True)
    total, terms = crit(x_hat, x, across_ranks=across_ranks)
    total.backward()
    return {"stft": terms["stft"].detach(), "grad": x_hat.grad}


def _scenario_loss(rank: int) -> dict:
    x, x_hat = loss_batch()
    half = slice(2 * rank, 2 * rank + 2)  # each rank reconstructs half of the global batch
    return full_batch_loss(x[half], x_hat[half], across_ranks=True)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    # Built before the process group exists: whether to sync must be decided at forward time.
    torch.manual_seed(0)
    ema_vq = VectorQuantizer(**EMA_KW).train()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=30))
    scenarios = {
        "ema": lambda: _scenario_ema(rank, ema_vq),
        "restart": lambda: _scenario_restart(rank),
        "kmeans": lambda: _scenario_kmeans(rank),
        "rvq": lambda: _scenario_rvq_dropout(rank),
        "loss": lambda: _scenario_loss(rank),
    }
    results = {}
    try:
        for name, run in scenarios.items():
            try:
                results[name] = run()
            except Exception:  # reported by the scenario's own test (a desync ends the group)
                results[name] = traceback.format_exc()
                break
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        try:
            dist.barrier()  # neither rank tears gloo down while the other still talks to it
        except RuntimeError:
            pass  # the other rank failed (its scenario's test reports it); only teardown is left
        dist.destroy_process_group()
    # The results are saved: skip interpreter finalisation, where gloo's threads being torn down
    # can abort a process (SIGABRT, "terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    # gloo itself occasionally kills a rank by a signal on a loaded machine (seen once in CI:
    # SIGABRT at setup). That is retried once, in a fresh folder; a Python exception in a
    # scenario is never retried: the worker saves it and its test fails with the traceback.
    for attempt in (1, 2):
        tmp = tmp_path_factory.mktemp("dist")
        try:
            mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
            break
        except mp.ProcessExitedException as e:
            if e.signal_name is None or attempt == 2:
                raise
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


def scenario(ranks: list[dict], name: str) -> list[dict]:
    """Each rank's results of one scenario; fails with the worker's traceback if it raised."""
    for rank, results in enumerate(ranks):
        if name not in results:
            pytest.fail(f"rank {rank} did not reach scenario {name!r}")
        if isinstance(results[name], str):
            pytest.fail(f"rank {rank} raised in scenario {name!r}:\n{results[name]}")
    return [results[name] for results in ranks]


def assert_same_on_ranks(a: dict, b: dict) -> None:
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key


def test_ema_state_identical_on_ranks_and_equal_to_one_process(ranks):
    r0, r1 = scenario(ranks, "ema")
    assert_same_on_ranks(r0, r1)
    torch.manual_seed(0)
    single = VectorQuantizer(**EMA_KW).train()
    for batches in ema_batches():
        single(torch.cat(batches))
    expected = ema_state(single)
    for key, value in r0.items():
        assert_close(value, expected[key], msg=key)
    # The data moved the codebook, so the comparison is not trivially of the initial one.
    torch.manual_seed(0)
    assert not torch.allclose(expected["codebook"], VectorQuantizer(**EMA_KW).codebook)


def test_dead_code_restarts_identical_on_ranks(ranks):
    r0, r1 = scenario(ranks, "restart")
    assert_same_on_ranks(r0, r1)
    assert r0["first_used"] <= 2
    # Restarts happened: the codes now sit among the data, not back at 50.
    assert r0["codebook"].norm(dim=1).max() < 20


def test_kmeans_init_identical_on_ranks(ranks):
    k0, k1 = scenario(ranks, "kmeans")
    assert k0["initialized"] and k1["initialized"]
    assert_same_on_ranks(k0, k1)
    assert_same_on_ranks(k0["after"], k1["after"])


def test_quantizer_dropout_same_levels_on_ranks(ranks):
    r0, r1 = scenario(ranks, "rvq")
    assert r0["levels"] == r1["levels"]
    assert len(set(r0["levels"])) > 1  # dropout did vary the number of levels
    assert torch.equal(r0["codebooks"], r1["codebooks"])


def test_reconstruction_loss_across_ranks_is_the_global_batch_loss(ranks):
    """Spectral convergence is a ratio of norms over the whole batch: summed across ranks, each
    rank's gradient is world-size times its share of the global gradient, which is what
    DistributedDataParallel's average turns into the one-process gradient."""
    r0, r1 = scenario(ranks, "loss")
    x, x_hat = loss_batch()
    single = full_batch_loss(x, x_hat, across_ranks=False)
    assert_close((r0["stft"] + r1["stft"]) / WORLD, single["stft"])  # what DDP's average sees
    assert_close(torch.cat([r0["grad"], r1["grad"]]) / WORLD, single["grad"], rtol=1e-4, atol=1e-9)
    # Without the sum across ranks the ratio would be each half's own: another loss.
    halves = [full_batch_loss(x[s], x_hat[s], across_ranks=False)["stft"] for s in (slice(0, 2), slice(2, 4))]
    assert abs(float(sum(halves)) / 2 - float(single["stft"])) > 1e-3
