"""Nothing is lost: checkpoints hold the whole training state, --resume after SIGKILL or Ctrl-C
gives bitwise the weights of an uninterrupted run (CPU, one thread, same seed), damaged
checkpoints are skipped, no file can run code when loaded, and training health is watched."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_cli import ROOT, tone, vqaudio

SMOKE = ROOT / "recipes" / "smoke.toml"
LONG = ["--set", "train.steps=60", "--set", "train.checkpoint_every=4", "--set", "train.val_every=30",
        "--set", "train.keep_checkpoints=3", "--stage", "vqvae"]


def weights(run: Path, stage: str = "vqvae") -> dict:
    return load_file(run / stage / "weights.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise, buffers (EMA codebook) included


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("ref") / "run"
    vqaudio("train", SMOKE, "--out", out, *LONG)
    return weights(out)


def start_training(out: Path, *args) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vqaudio", "train", str(SMOKE), "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoints(out: Path, proc: subprocess.Popen, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(list((out / "checkpoints").glob("vqvae-step*"))) < count:
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "run"
    proc = start_training(out, *LONG)
    wait_for_checkpoints(out, proc, 2)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    assert not (out / "vqvae").exists()
    steps = sorted(int(p.name[-7:]) for p in (out / "checkpoints").glob("vqvae-step*"))
    assert steps[-1] < 60
    p = vqaudio("train", SMOKE, "--out", out, *LONG, "--resume")
    assert f"resuming vqvae from {out / 'checkpoints'}" in p.stderr
    assert_same_weights(weights(out), reference)


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes_identically(tmp_path, reference):
    out = tmp_path / "run"
    proc = start_training(out, *LONG)
    wait_for_checkpoints(out, proc, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "--resume" in stderr and "Traceback" not in stderr
    import re

    saved = int(re.search(r"interrupted at vqvae step (\d+);", stderr).group(1))
    assert (out / "checkpoints" / f"vqvae-step{saved:07d}" / "training-state.json").is_file()
    vqaudio("train", SMOKE, "--out", out, *LONG, "--resume")
    assert_same_weights(weights(out), reference)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    out = tmp_path / "run"
    vqaudio("train", SMOKE, "--out", out, *LONG)
    newest = sorted((out / "checkpoints").glob("vqvae-step*"))[-1]
    (newest / "training-state.safetensors").write_bytes(b"\0" * 10)  # damaged, e.g. a bad disk
    p = vqaudio("train", SMOKE, "--out", out, *LONG, "--resume")
    assert f"warning: skipping checkpoint {newest.name}" in p.stderr
    assert "resuming vqvae" in p.stderr
    assert_same_weights(weights(out), reference)


def test_prior_stage_resumes_exactly(tmp_path):
    prior = ["--set", "prior_train.steps=10", "--set", "prior_train.checkpoint_every=4",
             "--set", "prior_train.keep_checkpoints=5"]
    out = tmp_path / "run"
    vqaudio("train", SMOKE, "--out", out, "--set", "train.steps=4", *prior)
    expected = weights(out, "prior")
    for path in [out / "prior", *sorted((out / "checkpoints").glob("prior-step*"))[1:]]:
        import shutil

        shutil.rmtree(path)  # as if killed right after the step-4 checkpoint
    p = vqaudio("train", SMOKE, "--out", out, "--set", "train.steps=4", *prior, "--resume")
    assert "resuming prior from" in p.stderr and "prior-step0000004" in p.stderr
    assert_same_weights(weights(out, "prior"), expected)


def test_resume_refuses_another_recipe_and_an_empty_run(tmp_path):
    out = tmp_path / "run"
    vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae")
    p = vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae", "--resume", "--set", "train.lr=1e-4", check=False)
    assert p.returncode == 1 and "another recipe (differs in train.lr)" in p.stderr
    vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae", "--resume", "--set", "train.num_threads=2")
    p = vqaudio("train", SMOKE, "--out", tmp_path / "new", "--resume", check=False)
    assert p.returncode == 1 and "no checkpoints to resume from" in p.stderr


class Boom:
    """Unpickling this writes a file: the attack a pickled checkpoint allows."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.parametrize("planted", ["weights", "training_state"])
def test_a_planted_pickle_is_refused_and_never_run(tmp_path, planted):
    out = tmp_path / "run"
    vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae")
    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps(Boom(marker))
    if planted == "weights":
        (out / "vqvae" / "weights.safetensors").write_bytes(payload)
        p = vqaudio("resynth", tone(tmp_path / "in.wav"), "--model", out, check=False)
        assert p.returncode == 1 and "not a valid safetensors file" in p.stderr
        assert not (tmp_path / "in_resynth.wav").exists()
    else:
        for ckpt in (out / "checkpoints").glob("vqvae-step*"):
            (ckpt / "training-state.safetensors").write_bytes(payload)
        p = vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae", "--resume")
        assert "skipping checkpoint" in p.stderr and "training vqvae from the start" in p.stderr
    assert not marker.exists()


def test_nothing_in_the_package_can_unpickle():
    for path in (ROOT / "vqaudio").rglob("*.py"):
        text = path.read_text()
        assert "import pickle" not in text and "torch.load(" not in text, path
        for line in text.splitlines():
            if "np.load(" in line:
                assert "allow_pickle=False" in line, f"{path}: {line.strip()}"


class ToyStage:
    """A one-parameter stage whose loss is NaN at the steps in ``bad``."""

    name = "toy"

    def __init__(self, bad: set[int]):
        from vqaudio.config import Recipe

        self.recipe, self.bad, self.step = Recipe(), bad, 0
        self.model = torch.nn.Linear(1, 1)

    def loss(self, batch):
        self.step += 1
        loss = (self.model(batch) ** 2).mean()
        return (loss * float("nan") if self.step in self.bad else loss), {"loss": 0.0}

    def validate(self, writer, step):
        return {}

    def save(self, directory, extra=None):
        from vqaudio.checkpoint import save_model_dir

        save_model_dir(directory, self.model, {"kind": "toy", "recipe": self.recipe.to_dict()}, extra)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss_stops_naming_the_step_or_skips_the_batch(tmp_path, capsys, policy):
    from torch.utils.tensorboard import SummaryWriter

    from vqaudio.config import TrainConfig
    from vqaudio.errors import VqaudioError
    from vqaudio.train import fit

    cfg = TrainConfig(steps=8, batch_size=2, warmup_steps=1, log_every=1, val_every=100, checkpoint_every=2,
                      nonfinite=policy)
    stage = ToyStage(bad={5})
    batches = lambda start: iter(lambda: torch.ones(2, 1), None)
    with SummaryWriter(str(tmp_path / "tb")) as writer:
        if policy == "stop":
            with pytest.raises(VqaudioError, match="non-finite at step 5"):
                fit(stage, batches, cfg, tmp_path, writer)
            assert (tmp_path / "checkpoints" / "toy-step0000004").is_dir()  # the last good one is intact
            assert not (tmp_path / "toy").exists()
        else:
            fit(stage, batches, cfg, tmp_path, writer)
            assert "step 5: non-finite loss or gradient, batch skipped" in capsys.readouterr().err
            assert all(torch.isfinite(p).all() for p in stage.model.parameters())
            assert (tmp_path / "toy" / "weights.safetensors").is_file()


def test_collapsed_codebook_is_a_warning_in_log_and_tensorboard(tmp_path):
    out = tmp_path / "run"
    p = vqaudio("train", SMOKE, "--out", out, "--stage", "vqvae", "--set", "quantizer.num_codes=2048",
                "--set", "train.steps=2")
    assert "warning: codebook collapse at vqvae step 2" in p.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(out / "tb")).Reload().Tags()
    assert "vqvae/val/codes_used_share" in tags["scalars"]
    assert any("warnings" in t for t in tags["tensors"])  # add_text is stored as a tensor
