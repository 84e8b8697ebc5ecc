"""vqaudio train RECIPE --init MODEL: a new run starts from a model's weights (fine-tuning),
with a fresh optimizer and schedule; what does not fit is refused before any file is written."""

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from test_cli import ROOT, vqaudio
from vqaudio.config import load_recipe
from vqaudio.errors import VqaudioError
from vqaudio.train import train_recipe

SMOKE = ROOT / "recipes" / "smoke.toml"
KMNIST_SMOKE = ROOT / "recipes" / "kmnist_smoke.toml"
# One step that can hardly move anything: parameters by at most ~lr, the EMA codebook by
# 1e-6 of the way, no dead-code restarts. What comes out is what went in, if it went in.
STILL = ["train.steps=1", "train.lr=1e-9", "train.warmup_steps=0", "quantizer.decay=0.999999",
         "quantizer.restart_after=0", "prior_train.steps=1", "prior_train.lr=1e-9", "prior_train.warmup_steps=0"]


def weights(run: Path, stage: str) -> dict:
    return load_file(run / stage / "weights.safetensors")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A trained run (both stages) to start from. Another seed than the runs that start from it,
    so their own random initialisation is far from these weights."""
    out = tmp_path_factory.mktemp("base") / "run"
    sets = ["train.steps=4", "prior_train.steps=4", "train.seed=1", "prior_train.seed=1"]
    train_recipe(load_recipe(SMOKE, sets), out)
    return out


def test_init_starts_both_stages_from_the_weights_and_keeps_the_codebook(base, tmp_path):
    out = tmp_path / "ft"
    p = vqaudio("train", SMOKE, "--out", out, "--init", base, *[a for s in STILL for a in ("--set", s)])
    assert f"vqvae: starting from the weights of {base / 'vqvae'}" in p.stderr
    assert f"prior: starting from the weights of {base / 'prior'}" in p.stderr
    for stage in ("vqvae", "prior"):
        before, after = weights(base, stage), weights(out, stage)
        assert before.keys() == after.keys()
        for k in before:
            if before[k].is_floating_point():
                # 1e-3: the EMA sums move by 1e-6 of a batch's sums; a fresh model is 100x farther.
                torch.testing.assert_close(after[k], before[k], atol=1e-3, rtol=0, msg=k)
            else:
                assert torch.equal(after[k], before[k]), k
    # The loaded quantizer counts as initialised: k-means did not run again over its codebook
    # (it would have replaced the codebook by the centroids of the first batch).
    flags = [k for k in weights(out, "vqvae") if k.endswith("initialized")]
    assert flags and all(bool(weights(out, "vqvae")[k]) for k in flags)


def test_a_prior_that_does_not_fit_trains_from_scratch(base, tmp_path, capsys):
    recipe = load_recipe(SMOKE, ["prior.channels=8", *STILL])
    train_recipe(recipe, tmp_path / "ft", init=base)
    err = capsys.readouterr().err
    assert "vqvae: starting from the weights of" in err
    assert (f"prior: training from scratch: --init {base / 'prior'} does not fit this recipe "
            "(") in err and "has shape" in err


def test_a_misfit_prior_under_stage_prior_is_one_error_line_and_writes_nothing(base, tmp_path):
    """--stage prior trains the prior alone, so its --init weights are the point: a prior of
    another shape is refused, naming the first tensor that differs."""
    out = tmp_path / "ft"
    shutil.copytree(base / "vqvae", out / "vqvae")  # the run's own codec, whose codes the prior reads
    p = vqaudio("train", SMOKE, "--stage", "prior", "--out", out, "--init", base,
                "--set", "prior.channels=8", check=False)
    assert p.returncode == 1
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith(f"error: --init {base / 'prior'}: ")
    assert "has shape" in p.stderr and "in this recipe; fine-tune with the recipe" in p.stderr
    assert not (out / "tb").exists() and not (out / "prior").exists()


def test_an_unlabelled_prior_starts_a_labelled_one_with_zero_label_embeddings(base, tmp_path, capsys):
    """An unconditional prior (such as the entropy prior, trained on many more codes) starts the
    digit prior: every other weight comes from it, the label embeddings start at zero, so the
    new prior begins with its predictions for every label."""
    from vqaudio.build import audio_prior_config, build_audio_prior
    from vqaudio.checkpoint import read_config, save_model_dir

    unlabelled_recipe = load_recipe(SMOKE, ["prior.conditional=false", "prior.label_dropout=0"])
    torch.manual_seed(5)  # weights far from what the labelled recipe's own seed would draw
    unlabelled = build_audio_prior(unlabelled_recipe, 0)
    start = tmp_path / "start"
    shutil.copytree(base / "vqvae", start / "vqvae")
    save_model_dir(start / "prior", unlabelled, audio_prior_config(unlabelled_recipe, read_config(base / "vqvae"), []))

    train_recipe(load_recipe(SMOKE, STILL), tmp_path / "ft", init=start)
    assert (f"prior: starting from the weights of {start / 'prior'}, an unlabelled prior; the label "
            "embeddings start at zero") in capsys.readouterr().err
    before, after = unlabelled.state_dict(), weights(tmp_path / "ft", "prior")
    added = sorted(set(after) - set(before))
    assert added and all(k.endswith(".label.weight") for k in added)
    for k in added:  # one step at lr 1e-9 moves a weight by ~1e-9
        torch.testing.assert_close(after[k], torch.zeros_like(after[k]), atol=1e-6, rtol=0, msg=k)
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=1e-6, rtol=0, msg=k)


def test_a_misfit_vqvae_is_one_error_line_naming_the_tensor_and_writes_nothing(base, tmp_path):
    out = tmp_path / "ft"
    p = vqaudio("train", SMOKE, "--out", out, "--init", base, "--set", "model.latent_dim=8", check=False)
    assert p.returncode == 1
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith(f"error: --init {base / 'vqvae'}: ")
    assert "has shape (16, 32, 3) there but (8, 32, 3) in this recipe; fine-tune with the recipe" in p.stderr
    assert not out.exists()


@pytest.mark.parametrize("case, message", [
    ("resume", "--init and --resume do not go together"),
    ("missing", "--init: model {base}/nowhere: no such folder"),
    ("not a model", "--init: model {base}/tb: config.json is missing"),
    ("prior only", "--init {base}/prior: holds a prior but no VQ-VAE to start the vqvae stage from"),
    ("other rate", "--init {base}/vqvae: works at 8000 Hz, but this recipe at 16000 Hz (data.sample_rate)"),
    ("other kind", "--init {base}/vqvae: is an 'audio-vqvae' model, but this recipe trains an 'image-vqvae' model"),
])
def test_bad_init_is_refused_before_any_file_is_written(base, tmp_path, case, message):
    recipe, init, resume = load_recipe(SMOKE), base, False
    if case == "resume":
        resume = True
    elif case == "missing":
        init = base / "nowhere"
    elif case == "not a model":
        init = base / "tb"
    elif case == "prior only":
        init = base / "prior"
    elif case == "other rate":
        recipe = load_recipe(SMOKE, ["data.sample_rate=16000"])
    elif case == "other kind":
        recipe = load_recipe(KMNIST_SMOKE)
    out = tmp_path / "ft"
    with pytest.raises(VqaudioError) as e:
        train_recipe(recipe, out, resume=resume, init=init)
    assert message.format(base=base) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_decoder_only_fine_tune_keeps_every_code_and_trains_the_decoder(base, tmp_path):
    """train.decoder_only: the decoder learns (at a real learning rate), while the encoder and
    the codebooks (EMA sums, counts, restarts, k-means) stay bitwise as loaded, so the codes
    of every input, and any prior trained on them, stay valid."""
    out = tmp_path / "ft"
    recipe = load_recipe(SMOKE, ["train.decoder_only=true", "train.steps=3", "train.lr=1e-2",
                                 "train.warmup_steps=0", "quantizer.restart_after=1"])
    train_recipe(recipe, out, stage="vqvae", init=base / "vqvae")
    before, after = weights(base, "vqvae"), weights(out, "vqvae")
    kept = [k for k in before if not k.startswith("decoder.")]
    assert any(k.startswith("quantizer.") for k in kept) and any(k.startswith("encoder.") for k in kept)
    for k in kept:
        assert torch.equal(after[k], before[k]), k
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("decoder."))
    # A new model, with the codes of the old: the old model's prior samples through the new
    # decoder (a fine-tune that moved the encoder is refused the same prior).
    ft, base_config = json.loads((out / "vqvae" / "config.json").read_text()), json.loads((base / "vqvae" / "config.json").read_text())
    assert ft["model_id"] != base_config["model_id"] and ft["codes_id"] == base_config["model_id"]
    shutil.copytree(base / "prior", out / "prior")
    vqaudio("sample", "--model", out, "--seconds", "0.25", "--label", "3", "-o", tmp_path / "s.wav")
    assert sf.info(tmp_path / "s.wav").frames == 2000
    moved = tmp_path / "moved"
    train_recipe(load_recipe(SMOKE, ["train.steps=2"]), moved, stage="vqvae", init=base / "vqvae")
    shutil.copytree(base / "prior", moved / "prior")
    p = vqaudio("sample", "--model", moved, "--seconds", "0.25", "-o", tmp_path / "t.wav", check=False)
    assert p.returncode == 1 and "trained on the codes of another VQ-VAE" in p.stderr


def test_decoder_only_needs_trained_weights_to_keep(tmp_path):
    out = tmp_path / "ft"
    with pytest.raises(VqaudioError, match=r"train.decoder_only keeps the encoder and codebooks as they are, "
                                           r"so it needs trained ones: pass --init MODEL_DIR"):
        train_recipe(load_recipe(SMOKE, ["train.decoder_only=true"]), out)
    assert not out.exists()
    # Only the VQ-VAE stage has the setting; the prior's loop does not know it. Recipes and
    # models saved before carry it there as false, which still loads.
    with pytest.raises(VqaudioError, match="unknown key 'prior_train.decoder_only'"):
        load_recipe(SMOKE, ["prior_train.decoder_only=true"])
    assert not hasattr(load_recipe(SMOKE, ["prior_train.decoder_only=false"]).prior_train, "decoder_only")


def test_a_deeper_decoder_starts_from_a_shallower_one_with_the_same_output(tmp_path, capsys):
    """A recipe with more Fourier-decoder blocks than the init model: every tensor of the model
    is loaded, the added blocks start as identities (residual scale 0), so the grown codec's
    first output is the init model's, sample for sample; the codes stay the init model's."""
    from vqaudio.codec import load_codec

    fourier = ["model.decoder=fourier", "model.decoder_dim=16", "model.decoder_layers=2"]
    shallow = tmp_path / "shallow"
    train_recipe(load_recipe(SMOKE, [*fourier, "train.steps=3", "train.seed=1"]), shallow, stage="vqvae")
    grown = tmp_path / "grown"
    sets = [*fourier[:2], "model.decoder_layers=4", "train.decoder_only=true", *STILL]
    train_recipe(load_recipe(SMOKE, sets), grown, stage="vqvae", init=shallow / "vqvae")
    assert (f"vqvae: the decoder's blocks 2-3 are new and start as identities (residual scale 0); "
            f"the rest comes from {shallow / 'vqvae'}") in capsys.readouterr().err
    before, after = weights(shallow, "vqvae"), weights(grown, "vqvae")
    added = sorted(set(after) - set(before))
    assert {k.split(".")[2] for k in added} == {"2", "3"} and all(k.startswith("decoder.blocks.") for k in added)
    for k in (k for k in added if k.endswith(".gamma")):  # one step at lr 1e-9
        torch.testing.assert_close(after[k], torch.zeros_like(after[k]), atol=1e-6, rtol=0, msg=k)
    wav = torch.randn(4000, generator=torch.Generator().manual_seed(0)).numpy() * 0.3
    a, b = load_codec(shallow / "vqvae"), load_codec(grown / "vqvae")
    assert (a.encode(wav, 2) == b.encode(wav, 2)).all()
    torch.testing.assert_close(torch.from_numpy(b.resynth(wav, 2)), torch.from_numpy(a.resynth(wav, 2)), atol=1e-5, rtol=0)
    # A shallower decoder than the init model's is still a misfit, named.
    with pytest.raises(VqaudioError, match=r"decoder\.blocks\.[23]\.[a-z.]+ is there but not in this recipe's model"):
        train_recipe(load_recipe(SMOKE, [*fourier[:2], "model.decoder_layers=2"]), tmp_path / "less",
                     stage="vqvae", init=grown / "vqvae")
