from pathlib import Path

import pytest

from vqaudio.config import load_recipe
from vqaudio.errors import VqaudioError

RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_loads(path):
    r = load_recipe(path)
    assert r.name == path.stem
    for folder in r.data.folders:
        assert r.resolve(folder).is_dir()


def test_speech_recipe_names_every_setting():
    import tomllib
    from dataclasses import fields

    from vqaudio.config import Recipe

    raw = tomllib.loads((Path(__file__).parents[1] / "recipes" / "speech.toml").read_text())
    for section in fields(Recipe):
        if section.name in ("name", "source"):
            continue
        expected = {f.name for f in fields(section.type if not isinstance(section.type, str)
                                          else getattr(Recipe(), section.name))}
        assert set(raw[section.name]) == expected, section.name


def write(tmp_path, text):
    (tmp_path / "audio").mkdir(exist_ok=True)
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
