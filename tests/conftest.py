import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Two cores: one thread per test process keeps the small tests fast and deterministic.
torch.set_num_threads(1)

ROOT = Path(__file__).parents[1]


def vqaudio(*args, cwd=None, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "vqaudio", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, env=env, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"vqaudio {args} failed:\n{p.stdout}\n{p.stderr}")
    return p


def train_recipe(tmp_path_factory, name: str):
    """Train ``recipes/<name>.toml`` (both stages) into a fresh run folder; return it."""
    out = tmp_path_factory.mktemp(name) / name
    p = vqaudio("train", ROOT / "recipes" / f"{name}.toml", "--out", out)
    assert f"trained {name}" in p.stdout
    return out


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """The smoke recipe (VQ-VAE and prior), trained once for every test that uses it."""
    return train_recipe(tmp_path_factory, "smoke")
