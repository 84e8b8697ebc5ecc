"""Scale-out: torchrun with 2 gloo processes on the CPU trains the same model as 1 process on the
same global batches, writes one set of files, and resumes with another number of processes;
the batches are a function of (seed, step) whatever the number of ranks; runtime options."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_cli import ROOT, vqaudio

SMOKE = ROOT / "recipes" / "smoke.toml"
# k-means init and restarts draw their vectors from the batch rows in rank order, which differs
# between 1 and 2 processes; quantizer dropout stays on (rank 0's draw is broadcast). The loss is
# the waveform L1 alone: the log-spectral terms are the same sums in another order too, but
# near their log floor (untrained decoder, 1/m up to 1e5) they turn rounding differences into
# gradient signs that Adam's first steps follow with whole steps of the learning rate. Their
# across-ranks computation is checked exactly in test_quantizer_distributed.py.
EXACT = ["--stage", "vqvae", "--set", "quantizer.kmeans_init=false", "--set", "quantizer.restart_after=0",
         "--set", "loss.stft=0", "--set", "loss.mel=0",
         "--set", "train.steps=6", "--set", "train.checkpoint_every=3", "--set", "train.val_every=3",
         "--set", "train.log_every=1"]


def torchrun(nproc: int, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(nproc), "-m", "vqaudio", *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=300)
    if p.returncode != 0:
        raise AssertionError(f"torchrun {args} failed:\n{p.stdout}\n{p.stderr[-3000:]}")
    return p


def assert_close_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "weights.safetensors"), load_file(b / "weights.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:  # the EMA codebook buffers included
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def listing(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.parent.name != "tb")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    vqaudio("train", SMOKE, "--out", root / "one", *EXACT)
    p = torchrun(2, "train", SMOKE, "--out", root / "two", *EXACT)
    return root, p


def test_two_processes_train_the_model_of_one(runs):
    root, _ = runs
    assert_close_weights(root / "one" / "vqvae", root / "two" / "vqvae")
    assert_close_weights(root / "one" / "checkpoints" / "vqvae-step0000003",
                         root / "two" / "checkpoints" / "vqvae-step0000003")
    # Same gradient norms (Adam alone would hide a gradient off by a constant factor) and losses.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    one, two = (EventAccumulator(str(root / r / "tb")).Reload() for r in ("one", "two"))
    for tag in ("vqvae/train/grad_norm", "vqvae/train/loss", "vqvae/train/quantizer"):
        a, b = ([e.value for e in ev.Scalars(tag)] for ev in (one, two))
        assert len(a) == 6 and a == pytest.approx(b, rel=1e-4), tag
    assert "2 processes (gloo)" in runs[1].stderr  # really two


def test_only_rank_zero_writes_and_logs(runs):
    root, p = runs
    assert listing(root / "two") == listing(root / "one")  # one set of checkpoints, one model
    assert len(list((root / "two" / "tb").iterdir())) == 1  # one event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(root / "two" / "tb")).Reload()
    assert [e.step for e in events.Scalars("vqvae/train/loss")] == [1, 2, 3, 4, 5, 6]  # once each
    assert [e.step for e in events.Scalars("vqvae/val/perplexity")] == [3, 6]
    assert p.stdout.count("trained smoke") == 1 and p.stdout.count("vqvae step 6/6") == 1


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_processes(runs, tmp_path, before, after):
    root, _ = runs
    run = tmp_path / "run"
    shutil.copytree(root / ("one" if before == 1 else "two"), run)
    shutil.rmtree(run / "checkpoints" / "vqvae-step0000006")  # as if stopped after step 3
    shutil.rmtree(run / "vqvae")
    if after == 1:
        p = vqaudio("train", SMOKE, "--out", run, *EXACT, "--resume")
    else:
        p = torchrun(after, "train", SMOKE, "--out", run, *EXACT, "--resume")
    assert p.stderr.count("resuming vqvae from") == 1
    assert_close_weights(root / "one" / "vqvae", run / "vqvae")


def test_global_batches_do_not_depend_on_the_number_of_processes():
    from vqaudio.data.batches import StepBatchSampler
    from vqaudio.errors import VqaudioError

    def steps(world: int, start: int, count: int = 12, seed: int = 3) -> list[list[tuple[int, int]]]:
        ranks = [iter(StepBatchSampler(21, 4, seed=seed, start=start, rank=r, world_size=world))
                 for r in range(world)]
        return [sorted(sum((next(it) for it in ranks), [])) for _ in range(count)]

    one = steps(1, 0)
    assert all(len(b) == 4 for b in one)
    for world in (2, 4):
        assert steps(world, 0) == one  # same items and crop seeds at every step, 3 epochs
        assert steps(world, 7, 5) == one[7:]  # resuming after step 7
    epochs = [sorted(i for b in one[e * 5:(e + 1) * 5] for i, _ in b) for e in range(2)]
    assert [len(set(e)) for e in epochs] == [20, 20]  # each epoch: 5 whole batches of 21 items
    assert one[:5] != one[5:10]  # reshuffled each epoch (DistributedSampler seed + epoch)
    assert steps(1, 0, seed=4) != one  # the seed decides
    with pytest.raises(VqaudioError, match="does not split evenly over 2 processes"):
        StepBatchSampler(21, 3, seed=0, rank=0, world_size=2)


def test_dataloader_workers_load_the_same_batches(tmp_path):
    """Crops are drawn from the batch keys, not from a worker's RNG."""
    from vqaudio.config import load_recipe
    from vqaudio.data.batches import step_batches
    from vqaudio.stages import audio_vqvae_stage

    _, train_set = audio_vqvae_stage(load_recipe(SMOKE))
    batches = [step_batches(train_set, 4, seed=0, workers=w)(5) for w in (0, 2)]
    for _ in range(6):
        a, b = next(batches[0]), next(batches[1])
        assert a.shape == (4, 1, 2000)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bf16_autocast_trains_with_a_float32_quantizer(tmp_path):
    out = tmp_path / "run"
    p = vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae", "--precision", "bf16", "--device", "cpu",
                "--set", "train.steps=4", "--set", "train.val_every=4")
    assert "vqvae step 4/4" in p.stdout
    w = load_file(out / "vqvae" / "weights.safetensors")
    assert all(v.dtype in (torch.float32, torch.int64, torch.bool) for v in w.values())
    assert all(torch.isfinite(v.float()).all() for v in w.values())


@pytest.mark.parametrize("options, message", [
    (dict(device="tpu"), "--device must be one of auto, cpu, cuda"),
    (dict(precision="fp16"), "--precision must be one of auto, fp32, bf16"),
    (dict(workers=-1), "--workers must be 0 or more"),
])
def test_bad_runtime_options_are_refused(options, message):
    from vqaudio.distributed import runtime
    from vqaudio.errors import VqaudioError

    with pytest.raises(VqaudioError, match=message):
        with runtime(**options):
            pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_one_line_and_writes_nothing(tmp_path):
    p = vqaudio("train", SMOKE, "--out", tmp_path / "run", "--device", "cuda", check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: --device cuda: torch sees no CUDA GPU")
    assert not (tmp_path / "run").exists()


def test_auto_device_is_the_cpu_here_and_bf16_only_on_request():
    from vqaudio.distributed import runtime

    with runtime() as rt:
        assert rt.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
        assert rt.bf16 == (rt.device.type == "cuda") and rt.world_size == 1 and rt.main
        assert rt.workers == 0 or rt.device.type == "cuda"  # workers only feed a GPU
    with runtime(device="cpu", precision="bf16") as rt:
        assert rt.bf16 and rt.device.type == "cpu"


def test_compile_keeps_checkpoint_names_and_the_eager_numbers():
    """--compile: encoder and decoder compiled in place, the quantizer eager; same gradients."""
    from vqaudio.build import build_audio_vqvae
    from vqaudio.config import load_recipe
    from vqaudio.train import compile_model

    r = load_recipe(SMOKE, ["quantizer.kmeans_init=false", "quantizer.dropout=false", "model.strides=[8]",
                            "model.hop=8", "model.res_blocks=0"])  # a small graph: compiling costs seconds
    torch.manual_seed(0)
    eager = build_audio_vqvae(r)
    torch.manual_seed(0)
    compiled = build_audio_vqvae(r)
    names = list(compiled.state_dict())
    compile_model(compiled)
    assert list(compiled.state_dict()) == names  # no "_orig_mod." prefixes in checkpoints
    assert compiled.encoder._compiled_call_impl is not None and compiled.quantizer._compiled_call_impl is None
    x = torch.randn(2, 1, 400, generator=torch.Generator().manual_seed(1)) * 0.1
    outs = []
    for model in (eager, compiled):
        out = model.train()(x)
        out.x_hat.square().mean().backward()
        outs.append((out.x_hat.detach(), model.encoder.net[0].weight.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-8)
