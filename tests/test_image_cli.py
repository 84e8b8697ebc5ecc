"""The image path end to end in subprocesses: train both stages on a tiny KMNIST recipe,
sample a grid, resynthesise a glyph, evaluate; bad inputs give one line and no output."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import train_recipe
from test_cli import ROOT, vqaudio


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_recipe(tmp_path_factory, "kmnist_smoke")


def glyph(path, size=28, mode="L"):
    data = np.load(ROOT / "data" / "kmnist" / "kmnist-10k-imgs.npz")["arr_0"][0]
    img = Image.fromarray(data)
    if size != 28:
        img = img.resize((size, size))
    img.convert(mode).save(path)
    return path


def test_train_writes_both_models_and_tensorboard(run_dir):
    vq = json.loads((run_dir / "vqvae" / "config.json").read_text())
    prior = json.loads((run_dir / "prior" / "config.json").read_text())
    assert vq["kind"] == "image-vqvae" and vq["grid"] == [7, 7] and vq["num_codes"] == 16
    assert vq["levels"] == 3 and vq["bits_per_image"] == 7 * 7 * 3 * 4  # 3 residual codes per cell, K = 16
    assert prior["kind"] == "image-prior" and prior["vqvae_model_id"] == vq["model_id"]
    assert prior["levels"] == 2 and prior["grid"] == [7, 14]  # the first 2 levels, side by side
    assert prior["labels"] == [str(i) for i in range(10)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload().Tags()
    for scalar in ("vqvae/val/mse", "vqvae/val/psnr_db", "vqvae/val/perplexity", "prior/val/bits_per_code",
                   "prior/val/unigram_entropy_bits", "prior/val/log2_k"):
        assert scalar in tags["scalars"], scalar
    assert "vqvae/originals_vs_reconstructions" in tags["images"]
    assert "prior/samples_vs_independent_codes" in tags["images"]
    assert "vqvae/codes" in tags["histograms"]


def test_sample_writes_an_image_grid_deterministically(run_dir, tmp_path):
    p = vqaudio("sample", "--num", "9", "-o", tmp_path / "s.png", "--model", run_dir, "--label", "3", "--seed", "2")
    assert str(tmp_path / "s.png") in p.stdout and "labels 3" in p.stdout
    img = np.asarray(Image.open(tmp_path / "s.png"))
    assert img.shape == (3 * 30 + 2, 3 * 30 + 2)  # 3x3 glyphs of 28 px with 2-px gaps
    vqaudio("sample", "--num", "9", "-o", tmp_path / "t.png", "--model", run_dir, "--label", "3", "--seed", "2")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "t.png")), img)
    # The recipe's prior.guidance (2) and prior.temperature (0.8) are the defaults: giving them
    # draws the same grid, giving 1 another.
    for option, default in (("--guidance", "2"), ("--temperature", "0.8")):
        for value, same in ((default, True), ("1", False)):
            out = tmp_path / f"{option[2:]}-{value}.png"
            vqaudio("sample", "--num", "9", "-o", out, "--model", run_dir, "--label", "3", "--seed", "2", option, value)
            assert np.array_equal(np.asarray(Image.open(out)), img) == same, (option, value)


def test_resynth_and_eval_a_glyph(run_dir, tmp_path):
    src = glyph(tmp_path / "glyph.png")
    p = vqaudio("resynth", src, "--model", run_dir)
    out = tmp_path / "glyph_resynth.png"
    assert str(out) in p.stdout and "PSNR" in p.stdout
    assert np.asarray(Image.open(out)).shape == (28, 28)
    p = vqaudio("eval", ROOT / "data" / "kmnist" / "kmnist-10k-imgs.npz", "--model", run_dir, "--json")
    summary = json.loads(p.stdout)
    assert summary["images"] == 10000 and 0 < summary["mse"] < 0.2
    assert 0 < summary["prior_bits_per_code"] < 2 * summary["log2_k"]
    # The prior models 2 of the 3 levels: 98 codes per 784-pixel glyph.
    assert summary["prior_bits_per_dim"] == pytest.approx(summary["prior_bits_per_code"] * 98 / 784)


def test_plain_autoencoder_baseline_trains_without_a_prior(tmp_path):
    out = tmp_path / "ae"
    vqaudio("train", ROOT / "recipes" / "kmnist_smoke.toml", "--out", out, "--set", "quantizer.kind=none",
            "--set", "train.steps=3")
    assert (out / "vqvae" / "config.json").is_file() and not (out / "prior").exists()
    p = vqaudio("eval", glyph(tmp_path / "g.png"), "--model", out, "--json")
    assert "mse" in json.loads(p.stdout) and "perplexity" not in json.loads(p.stdout)


@pytest.mark.parametrize("case", ["wrong_size", "rgb", "not_an_image", "missing", "sample_wav_name",
                                  "candidates", "smoothing", "end_silence"])
def test_bad_image_inputs_are_one_line_and_write_nothing(run_dir, tmp_path, case):
    if case == "wrong_size":
        args = ["resynth", glyph(tmp_path / "g.png", size=32)]
    elif case == "rgb":
        src = tmp_path / "g.png"
        Image.fromarray((np.random.default_rng(0).random((28, 28, 3)) * 255).astype(np.uint8)).save(src)
        args = ["resynth", src]
    elif case == "not_an_image":
        (tmp_path / "g.png").write_text("hello")
        args = ["resynth", tmp_path / "g.png"]
    elif case == "missing":
        args = ["resynth", tmp_path / "nope.png"]
    elif case == "candidates":  # best of N is for audio priors
        args = ["sample", "--candidates", "2", "-o", tmp_path / "s.png"]
    elif case == "smoothing":  # smoothing over time is for audio priors
        args = ["sample", "--smoothing", "3", "-o", tmp_path / "s.png"]
    elif case == "end_silence":  # ending a clip after its utterance is for audio priors
        args = ["sample", "--end-silence", "0.2", "-o", tmp_path / "s.png"]
    else:
        args = ["sample", "-o", tmp_path / "s.wav"]
    before = sorted(tmp_path.rglob("*"))
    p = vqaudio(*args, "--model", run_dir, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert sorted(tmp_path.rglob("*")) == before
