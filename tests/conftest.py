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


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """The smoke recipe (VQ-VAE and prior), trained once for every test that uses it."""
    out = tmp_path_factory.mktemp("run") / "smoke"
    p = vqaudio("train", ROOT / "recipes" / "smoke.toml", "--out", out)
    assert "trained smoke" in p.stdout
    return out
