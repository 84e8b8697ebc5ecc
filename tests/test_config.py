from pathlib import Path

import pytest

from vqaudio.config import load_recipe
from vqaudio.errors import VqaudioError

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_loads(path):
    r = load_recipe(path)
    assert r.name == path.stem
    if r.kind == "image":
        assert r.resolve(r.data.path).is_file()
    else:
        for folder in r.data.folders:
            assert r.resolve(folder).is_dir()


def test_the_pretrained_codecs_validation_speakers_are_never_trained_on():
    """speech-large's split (the one the pretrained codec's figures come from) is by speaker:
    no voice is in both halves, and the validation half has voices of all three corpora."""
    from vqaudio.stages import audio_splits

    def speaker(path: Path) -> str:  # FSDD {digit}_{speaker}_{i}.wav, LibriSpeech {speaker}-..., speechocean762 {speaker}_...
        if path.suffix == ".wav":
            return "fsdd:" + path.name.split("_")[1]
        return path.parent.name + ":" + path.name.split("-" if "-" in path.name else "_")[0]

    train, val = audio_splits(load_recipe(Path(__file__).parents[1] / "recipes" / "speech-large.toml"))
    heard, held_out = {speaker(p) for p in train}, {speaker(p) for p in val}
    assert not heard & held_out
    assert "fsdd:yweweler" in held_out
    corpora = {s.split(":")[0] for s in held_out}
    assert corpora == {"fsdd", "librispeech", "speechocean762"}
    assert len(held_out) >= 50 and len(heard) >= 450


@pytest.mark.parametrize("name", ["speech", "speech-large", "kmnist"])
def test_default_recipes_name_every_setting(name):
    import tomllib
    from dataclasses import fields, is_dataclass

    from vqaudio.config import RECIPE_KINDS

    raw = tomllib.loads((Path(__file__).parents[1] / "recipes" / f"{name}.toml").read_text())
    cls = RECIPE_KINDS[raw.get("kind", "audio")]
    for section in fields(cls):
        value = getattr(cls(), section.name)
        if is_dataclass(value):
            assert set(raw[section.name]) == {f.name for f in fields(value)}, section.name
        elif section.name != "source":
            assert section.name in raw, section.name


def write(tmp_path, text):
    (tmp_path / "audio").mkdir(exist_ok=True)
    (tmp_path / "audio" / "a.wav").touch()  # validate() wants at least one audio file there
    p = tmp_path / "r.toml"
    p.write_text('name = "t"\n[data]\nfolders = ["audio"]\n' + text)
    return p


@pytest.mark.parametrize("text, message", [
    ("[train]\nlrr = 1.0\n", "unknown key 'train.lrr' (did you mean 'lr'?)"),
    ("[trian]\n", "unknown section or key 'trian' (did you mean 'train'?)"),
    ("[train]\nsteps = 'many'\n", "'train.steps' must be int"),
    ("[train]\nsteps = true\n", "'train.steps' must be int"),
    ("[train]\nlr = -1.0\n", "'train.lr' must be positive"),
    ("[model]\nstrides = [4, 4]\n", "'model.strides' multiply to 16, but model.hop is 64"),
    ("[quantizer]\nnum_codes = 1\n", "'quantizer.num_codes' must be at least 2"),
    ("[quantizer]\nkind = 'fancy'\n", "'quantizer.kind' must be 'ema' or 'gradient'"),
    ("[model]\nstrides = 4\n", "'model.strides' must be a list of int"),
    ("[prior]\nlevels = 9\n", "'prior.levels' is 9, but the VQ-VAE has only quantizer.levels = 5"),
    ("[prior]\nconditional = true\n", "'prior.conditional' is true but data.label_regex is empty"),
    ("[prior_train]\nsteps = 0\n", "'prior_train.steps' must be positive"),
    ("[prior]\nchanels = 8\n", "unknown key 'prior.chanels' (did you mean 'channels'?)"),
    ("[model]\ndecoder = 'wavenet'\n", "'model.decoder' must be 'conv' or 'fourier', got 'wavenet'"),
    ("[model]\ndecoder = 'fourier'\nn_fft = 96\n", "'model.n_fft' must be at least 2 x model.hop (128)"),
    ("[model]\ndecoder = 'fourier'\nn_fft = 129\n", "differ from the hop by an even number, got 129"),
    ("[model]\ndecoder_layers = 0\n", "'model.decoder_layers' must be positive"),
    ("[model]\npostfilter = 0.2\n", "'model.postfilter' filters the spectrum of the 'fourier' decoder"),
    ("[model]\ndecoder = 'fourier'\npostfilter_harmonic = -0.1\n", "'model.postfilter_harmonic' must not be negative"),
    ("[prior]\nframe_stack = 0\n", "'prior.frame_stack' must be positive"),
    ("[prior]\ntemperature = -0.5\n", "'prior.temperature' must be 0 or more"),
    ("[loss]\nfeature_matching = 2.0\n", "'loss.feature_matching' needs a discriminator"),
    ("[loss]\nadversarial = -1.0\n", "'loss.adversarial' must not be negative"),
    ("[loss]\nmfcc = -1.0\n", "'loss.mfcc' must not be negative"),
    ("[loss]\nphase = -1.0\n", "'loss.phase' must not be negative"),
    ("[loss]\nn_mels = [16, 32]\n", "'loss.n_mels' must give one mel count >= 1 per FFT size"),
    ("[loss]\nfft_sizes = [128, 256, 4]\n", "'loss.n_mels' must give one mel count >= 1 per FFT size >= 8"),
    ("[loss]\nn_mels = [16, 32, 640]\n", "'loss.n_mels' is too many for one FFT size: 640 mels with n_fft=512"),
    ("[prior]\nlabel_dropout = 0.1\n", "'prior.label_dropout' needs a label-conditioned prior"),
    ("[prior]\nlabel_dropout = 1.0\n", "'prior.label_dropout' must be at least 0 and below 1"),
    ("[prior]\nguidance = 2.0\n", "'prior.guidance' needs a prior trained with label dropout"),
    ("[prior]\ncandidates = 0\n", "'prior.candidates' must be 1 or more"),
    ("[prior]\ncandidates = 4\n", "'prior.candidates' keeps the candidate most clearly its label"),
    ("[prior]\nsmoothing = 4\n", "'prior.smoothing' must be an odd number of frames"),
    ("[prior]\nend_silence = -0.2\n", "'prior.end_silence' must be 0 (off) or a number of seconds"),
    ("[prior_train]\ndecoder_only = true\n", "unknown key 'prior_train.decoder_only'"),
])
def test_bad_recipes_name_file_section_and_key(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(VqaudioError) as e:
        load_recipe(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_missing_data_folder(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[data]\nfolders = ["nowhere"]\n')
    with pytest.raises(VqaudioError, match="'data.folders' names 'nowhere', which does not exist"):
        load_recipe(p)


def test_overrides(tmp_path):
    p = write(tmp_path, "")
    r = load_recipe(p, ["train.lr=3e-4", "model.strides=[2, 32]", "name=other", "quantizer.kind=gradient"])
    assert r.train.lr == 3e-4 and r.model.strides == [2, 32] and r.name == "other"
    assert r.quantizer.kind == "gradient"
    with pytest.raises(VqaudioError, match="unknown key 'train.nope'"):
        load_recipe(p, ["train.nope=1"])
    with pytest.raises(VqaudioError, match="expected section.key=value"):
        load_recipe(p, ["train.lr"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(VqaudioError, match="no such file"):
        load_recipe(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(VqaudioError, match="not valid TOML"):
        load_recipe(tmp_path / "bad.toml")


def write_image_recipe(tmp_path, text):
    import shutil

    shutil.copy(Path(__file__).parents[1] / "data" / "kmnist" / "kmnist-10k-labels.npz", tmp_path / "l.npz")
    (tmp_path / "i.npz").write_bytes(b"")
    p = tmp_path / "r.toml"
    p.write_text('name = "t"\nkind = "image"\n[data]\npath = "i.npz"\n' + text)
    return p


@pytest.mark.parametrize("text, message", [
    ("[quantizer]\nlevels = 0\n", "'quantizer.levels' must be positive"),
    ("[model]\nimage_size = 30\n", "'model.image_size' 30 is not divisible by 2^downsamples = 4"),
    ("[prior]\nkernel = 4\n", "'prior.kernel' must be odd"),
    ("[quantizer]\nlevels = 2\n[prior]\nlevels = 3\n", "'prior.levels' is 3, but the VQ-VAE has only quantizer.levels = 2"),
    ("[quantizer]\nkind = 'fancy'\n", "'quantizer.kind' must be 'ema' or 'gradient' or 'none'"),
    ("[model]\nstrides = [4]\n", "unknown key 'model.strides'"),
    ("[data2]\n", "unknown section or key 'data2' (did you mean 'data'?)"),
])
def test_bad_image_recipes(tmp_path, text, message):
    p = write_image_recipe(tmp_path, text)
    with pytest.raises(VqaudioError) as e:
        load_recipe(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_unknown_recipe_kind(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('kind = "video"\n')
    with pytest.raises(VqaudioError, match="'kind' must be one of audio, image"):
        load_recipe(p)


def test_readme_entropy_prior_command_loads():
    """The README's command that trains an entropy prior overrides the digit prior's recipe;
    its --set list must stay a valid recipe as the recipe gains settings."""
    import re
    import shlex

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"vqaudio train (recipes/speech-large\.toml) --stage prior --out \$RUN \\\n(.*?)\nrm -rf", readme, re.S)
    assert block, "the README no longer has the entropy prior's training command"
    words = shlex.split(block.group(2).replace("\\\n", " "))
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    recipe = load_recipe(Path(__file__).parents[1] / block.group(1), sets)
    assert not recipe.prior.conditional and recipe.prior.train_speeds == [0.9, 1.0, 1.1]
    assert len(recipe.prior_data.folders) == 3
