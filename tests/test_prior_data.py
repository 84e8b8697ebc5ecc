"""[prior_data]: the prior may train on other files than the codec (e.g. the digit-conditioned
prior on FSDD alone, under a codec trained on more speech)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vqaudio.config import PriorDataConfig, from_dict, load_recipe
from vqaudio.errors import VqaudioError
from vqaudio.stages import audio_splits

ROOT = Path(__file__).parents[1]
SMOKE = ROOT / "recipes" / "smoke.toml"
FSDD = ROOT / "data" / "fsdd"


def unlabelled_folder(path: Path, n: int = 8) -> Path:
    """Noise files whose names hold no digit: label_regex '^(\\d)_' takes no label from them."""
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):  # noise_0 … noise_4 are validation files by val_regex '_[0-4]\.wav$'
        sf.write(path / f"noise_{i}.wav", (0.1 * rng.standard_normal(4000)).astype(np.float32), 8000)
    return path


def test_prior_stage_trains_on_prior_data_and_the_codec_on_data(tmp_path):
    import torch

    from vqaudio.build import audio_model_config, build_audio_prior, build_audio_vqvae
    from vqaudio.checkpoint import save_model_dir
    from vqaudio.stages import audio_prior_stage

    noise = unlabelled_folder(tmp_path / "noise")
    sets = [f"data.folders=['{noise}']", f"prior_data.folders=['{FSDD}']", "prior_data.max_files=8"]
    recipe = load_recipe(SMOKE, sets)
    assert recipe.prior.conditional and recipe.prior_files() is recipe.prior_data
    codec_train, codec_val = audio_splits(recipe)  # the VQ-VAE stage's files: [data]
    assert {f.parent for f in codec_train + codec_val} == {noise}
    run = tmp_path / "run"
    # An untrained VQ-VAE encodes as well as a trained one for this purpose.
    save_model_dir(run / "vqvae", build_audio_vqvae(recipe), audio_model_config(recipe))

    stage, crops = audio_prior_stage(recipe, run)
    train, val = audio_splits(recipe, recipe.prior_data)
    assert {f.parent for f in train + val} == {FSDD}
    assert len(crops.sequences) == len(train) == 8 and len(stage.val) == len(val) == 2
    assert set(stage.labels) <= set("0123456789") and len(stage.labels) > 1  # digits from FSDD names

    # prior.embed_from_codebook: the stage's prior starts its code embeddings from this codec's vectors.
    from_codebook, _ = audio_prior_stage(load_recipe(SMOKE, sets + ["prior.embed_from_codebook=true"]), run)
    quantizer = from_codebook.codec.model.quantizer
    expected = build_audio_prior(recipe, len(stage.labels))
    expected.embed_codebooks([vq.lookup(torch.arange(recipe.quantizer.num_codes)) for vq in quantizer.levels])
    assert torch.equal(from_codebook.model.embed.weight, expected.embed.weight)
    assert not torch.equal(stage.model.embed.weight[: recipe.quantizer.num_codes], expected.embed.weight[: recipe.quantizer.num_codes])

    # Without [prior_data] the prior takes [data]'s files, which carry no label.
    plain = load_recipe(SMOKE, sets[:1])
    with pytest.raises(VqaudioError, match="cannot take a label from file name 'noise_"):
        audio_prior_stage(plain, tmp_path / "run")


def test_empty_prior_data_folders_mean_the_data_files_and_split():
    recipe = load_recipe(SMOKE)
    assert recipe.prior_data.folders == [] and recipe.prior_files() is recipe.data
    assert audio_splits(recipe, recipe.prior_files()) == audio_splits(recipe)


def write(tmp_path: Path, text: str) -> Path:
    """A recipe whose [data] is valid and whose [prior_data] is ``text``."""
    from test_config import write as write_recipe

    (tmp_path / "empty").mkdir(exist_ok=True)
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    return write_recipe(tmp_path, "[prior_data]\n" + text)


@pytest.mark.parametrize("text, message", [
    ("folders = ['nowhere']\n", "'prior_data.folders' names 'nowhere', which does not exist"),
    ("folders = ['empty']\n", "'prior_data.folders' names 'empty', which holds no audio files"),
    ("folders = 'audio'\n", "'prior_data.folders' must be a list of str"),
    ("val_fraction = 1.5\n", "'prior_data.val_fraction' must be between 0 and 1, got 1.5"),
    ("max_files = -1\n", "'prior_data.max_files' must not be negative, got -1"),
    ("val_regex = '(['\n", "'prior_data.val_regex' is not a valid regular expression"),
    ("sample_rate = 16000\n", "unknown key 'prior_data.sample_rate'"),
])
def test_bad_prior_data_is_one_line_naming_file_section_and_key(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(VqaudioError) as e:
        load_recipe(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_bad_prior_data_folder_is_one_error_line_in_the_cli(tmp_path):
    p = write(tmp_path, "folders = ['nowhere']\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "vqaudio", "train", str(p), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ")
    assert "'prior_data.folders' names 'nowhere'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_an_empty_prior_split_names_the_section():
    recipe = load_recipe(SMOKE, [f"prior_data.folders=['{FSDD}']", "prior_data.val_regex='no such name'"])
    with pytest.raises(VqaudioError, match=r"\[prior_data\] the validation split is empty"):
        audio_splits(recipe, recipe.prior_files())


def test_recipes_saved_before_prior_data_still_load_and_resume():
    import json

    from vqaudio.build import load_audio_prior
    from vqaudio.run_checkpoints import recipe_differences

    pretrained = ROOT / "vqaudio" / "pretrained" / "speech" / "prior"
    stored = json.loads((pretrained / "config.json").read_text())["recipe"]
    stored.pop("prior_data", None)  # as saved before the section existed
    for key in ("decoder", "decoder_dim", "decoder_layers", "n_fft"):  # and before the Fourier head
        stored["model"].pop(key, None)
    old_recipe = from_dict(stored)
    assert old_recipe.prior_data == PriorDataConfig() and old_recipe.model.decoder == "conv"
    load_audio_prior(pretrained)  # the model folder still rebuilds itself

    current = load_recipe(SMOKE).to_dict()
    old = {k: v for k, v in current.items() if k != "prior_data"}  # an old checkpoint's recipe
    assert recipe_differences(old, current) == []
    changed = load_recipe(SMOKE, [f"prior_data.folders=['{FSDD}']"]).to_dict()
    assert recipe_differences(old, changed) == ["prior_data.folders"]


def test_change_speed_scales_tempo_and_pitch_together():
    from vqaudio.data.codes import change_speed

    sr = 8000
    tone = np.sin(2 * np.pi * 200 * np.arange(sr) / sr).astype(np.float32)  # 1 s at 200 Hz
    assert change_speed(tone, 1.0, sr) is tone
    for speed in (0.9, 1.1):
        fast = change_speed(tone, speed, sr)
        assert fast.dtype == np.float32 and abs(len(fast) - sr / speed) <= 1
        spectrum = np.abs(np.fft.rfft(fast * np.hanning(len(fast))))
        peak_hz = np.argmax(spectrum) * sr / len(fast)
        assert abs(peak_hz - 200 * speed) < 3, (speed, peak_hz)


def test_prior_train_speeds_add_perturbed_copies_of_training_files_only(tmp_path):
    from vqaudio.build import audio_model_config, build_audio_vqvae
    from vqaudio.checkpoint import save_model_dir
    from vqaudio.stages import audio_prior_stage

    sets = [f"data.folders=['{FSDD}']", "data.max_files=10"]
    plain = load_recipe(SMOKE, sets)
    perturbed = load_recipe(SMOKE, sets + ["prior.train_speeds=[0.9, 1.0, 1.1]"])
    run = tmp_path / "run"
    save_model_dir(run / "vqvae", build_audio_vqvae(plain), audio_model_config(plain))

    stage_1, crops_1 = audio_prior_stage(plain, run)
    stage_3, crops_3 = audio_prior_stage(perturbed, run)  # another key: the cache is rebuilt
    one, three = crops_1.sequences, crops_3.sequences
    assert len(three) == 3 * len(one) and len(stage_3.val) == len(stage_1.val)  # validation untouched
    np.testing.assert_array_equal(three.labels, np.repeat(one.labels, 3))
    pad = 2 * round(perturbed.prior.pad_seconds * 8000 / 64)  # frames of silence around each file
    for i, seq in enumerate(one.sequences):
        slow, same, fast = three.sequences[3 * i: 3 * i + 3]
        np.testing.assert_array_equal(same, seq)  # speed 1 is the file itself
        speech = len(seq) - pad
        assert abs((len(slow) - pad) - speech / 0.9) <= 2 and abs((len(fast) - pad) - speech / 1.1) <= 2
    # Read back from the cache: the same sequences and labels.
    _, crops_again = audio_prior_stage(perturbed, run)
    assert all(np.array_equal(a, b) for a, b in zip(crops_again.sequences.sequences, three.sequences))
    np.testing.assert_array_equal(crops_again.sequences.labels, three.labels)


@pytest.mark.parametrize("speeds", ["[]", "[0.3]", "[1.0, 2.5]"])
def test_bad_train_speeds_are_refused(speeds):
    with pytest.raises(VqaudioError, match="prior.train_speeds.*between 0.5 and 2"):
        load_recipe(SMOKE, [f"prior.train_speeds={speeds}"])
