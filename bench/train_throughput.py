"""Training throughput of recipes/speech.toml with 1 and 2 processes on this machine.

Run by hand (not a test):

    python bench/train_throughput.py                  # both stages, 3 repeats, ~10 min on 2 cores
    python bench/train_throughput.py --steps 40 --repeats 1

Each configuration trains the VQ-VAE stage and then the prior stage for ``--steps`` steps
(validation and checkpoints only at the last step) in a fresh process tree:

- 1 process, 2 threads: ``vqaudio train`` as a user runs it on this machine;
- 1 process, 1 thread;
- 2 processes, 1 thread each: ``torchrun --standalone --nproc_per_node 2 -m vqaudio train``
  (gloo, DistributedDataParallel), the same global batch (16 for the VQ-VAE, 32 for the prior)
  split in two.

The prior stage reuses the pretrained VQ-VAE (``vqaudio/pretrained/speech/vqvae``, trained with
this recipe) and, after the first run, its cached codes of the data set, so it starts at once. Throughput comes from the wall times TensorBoard
stores with the logged training loss (every ``--log-every`` steps): steps between the first and
the last logged step divided by the time between them, so process start, data loading and
validation are not counted. The configurations alternate within each repeat, and the table
gives the median over repeats, with global samples per second (steps/s x global batch) and the
ratio to the 2-thread single process of the same repeat.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "speech.toml"
CONFIGS = {  # name -> (processes, threads per process)
    "1 process x 2 threads": (1, 2),
    "1 process x 1 thread": (1, 1),
    "2 processes x 1 thread (torchrun, gloo)": (2, 1),
}
BATCH = {"vqvae": 16, "prior": 32}


def command(processes: int, out: Path, steps: int, log_every: int) -> list[str]:
    sets = []
    for section in ("train", "prior_train"):
        sets += ["--set", f"{section}.steps={steps}", "--set", f"{section}.val_every={steps}",
                 "--set", f"{section}.checkpoint_every={steps}", "--set", f"{section}.log_every={log_every}",
                 "--set", f"{section}.num_threads=0"]  # threads from OMP_NUM_THREADS
    launcher = [sys.executable, "-m", "vqaudio"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", str(processes), "-m", "vqaudio"]
    return [*launcher, "train", str(RECIPE), "--out", str(out), "--device", "cpu", *sets]


def steps_per_second(run: Path, stage: str) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0}).Reload()
    points = events.Scalars(f"{stage}/train/loss")
    first, last = points[0], points[-1]
    return (last.step - first.step) / (last.wall_time - first.wall_time)


def run_config(processes: int, threads: int, steps: int, log_every: int, scratch: Path) -> dict[str, float]:
    out = scratch / f"run-{processes}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # VQ-VAE stage from scratch, then the prior on the pretrained VQ-VAE's codes.
    result = {}
    for stage in ("vqvae", "prior"):
        if stage == "prior":
            shutil.rmtree(out / "vqvae", ignore_errors=True)
            shutil.copytree(REPO / "vqaudio" / "pretrained" / "speech" / "vqvae", out / "vqvae")
            for cache in scratch.glob("codes-*.npz"):  # the data set encoded once, for every run
                shutil.copy(cache, out / cache.name)
        p = subprocess.run([*command(processes, out, steps, log_every), "--stage", stage],
                           capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise SystemExit(f"training failed ({processes} x {threads}, {stage}):\n{p.stderr[-3000:]}")
        result[stage] = steps_per_second(out, stage)
    for cache in out.glob("codes-*.npz"):
        shutil.copy(cache, scratch / cache.name)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="vqaudio-throughput-"))
    rates: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for r in range(args.repeats):
        for name, (processes, threads) in CONFIGS.items():
            rates[name].append(run_config(processes, threads, args.steps, args.log_every, scratch))
            print(f"repeat {r + 1}: {name}: " + ", ".join(f"{s} {v:.2f} steps/s" for s, v in rates[name][-1].items()),
                  file=sys.stderr, flush=True)
    shutil.rmtree(scratch, ignore_errors=True)

    import torch

    print(f"\n{datetime.date.today()}, {platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"recipes/speech.toml, {args.steps} steps per stage, median of {args.repeats} repeats\n")
    base = next(iter(CONFIGS))
    print("| configuration | VQ-VAE steps/s | VQ-VAE samples/s | prior steps/s | prior samples/s | vs 1 × 2 threads (VQ-VAE / prior) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in CONFIGS:
        med = {s: statistics.median(x[s] for x in rates[name]) for s in BATCH}
        ratio = {s: statistics.median(x[s] / b[s] for x, b in zip(rates[name], rates[base])) for s in BATCH}
        print(f"| {name} | {med['vqvae']:.2f} | {med['vqvae'] * BATCH['vqvae']:.0f} | {med['prior']:.2f} | "
              f"{med['prior'] * BATCH['prior']:.0f} | {ratio['vqvae']:.2f}× / {ratio['prior']:.2f}× |")


if __name__ == "__main__":
    main()
