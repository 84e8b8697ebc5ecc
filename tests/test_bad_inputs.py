"""The bad-input matrix (issue 6): every command (train, resynth, encode, decode, eval, sample,
and resynth on the image path), run as the real CLI in a subprocess, on input that is missing,
damaged, odd or hostile.

An error must exit with status 1 and print exactly one stderr line, ``error: ...``, saying what
is wrong and what to do (each case names substrings for both), with no traceback, and leave no
new or changed file in the case's folder (also the CLI's working folder, so default output
names are watched too). Input that is merely unusual (one sample, 96 kHz, 8- or 24-bit, six
channels, a full-scale square wave) must work: exit 0, complete output of the right length,
finite samples. An hour of audio is encoded in bounded memory.

Every CLI start costs about 3 s of CPU (importing torch), so a few further refusals (fixed
bugs: partial output, unclear messages) are checked in process, and the unusual inputs share
one ``resynth`` and one ``eval`` run. The smoke recipe is trained once per module; the other
models are built untrained in process (only their folders matter here).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from test_cli import ROOT, tone, vqaudio
from test_image_cli import glyph

RATE = 8000  # the smoke model's sample rate
PROC_WAV = Path("/proc/vqaudio-bad-inputs.wav")  # a folder nobody (not even root) can create files in


# -- models -----------------------------------------------------------------------------------

@dataclass
class Models:
    run: Path  # the smoke recipe, trained: vqvae/ and prior/
    other: Path  # an audio VQ-VAE folder with other shapes (model.channels = 4)
    image: Path  # an image run folder (vqvae/) for the image path


def _save_untrained(recipe: Path, folder: Path, overrides: list[str] = ()) -> Path:
    from vqaudio.build import audio_model_config, build_audio_vqvae, build_image_vqvae, image_model_config
    from vqaudio.checkpoint import save_model_dir
    from vqaudio.config import load_recipe

    r = load_recipe(recipe, list(overrides))
    if r.kind == "image":
        save_model_dir(folder, build_image_vqvae(r).eval(), image_model_config(r))
    else:
        save_model_dir(folder, build_audio_vqvae(r).eval(), audio_model_config(r))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    base = tmp_path_factory.mktemp("models")
    run = base / "smoke"
    p = vqaudio("train", ROOT / "recipes" / "smoke.toml", "--out", run)
    assert "trained smoke" in p.stdout
    other = _save_untrained(ROOT / "recipes" / "smoke.toml", base / "other", ["model.channels=4"])
    image = base / "image"
    _save_untrained(ROOT / "recipes" / "kmnist_smoke.toml", image / "vqvae")
    return Models(run, other, image)


# -- helpers ----------------------------------------------------------------------------------

def fail(*says: str) -> tuple[str, ...]:
    """The expected error: substrings of its one line (what is wrong, what to do)."""
    return says


@dataclass
class Ctx:
    tmp: Path
    models: Models

    @property
    def run(self) -> Path:
        return self.models.run

    def model_copy(self, name: str = "model") -> Path:
        """A copy of the trained VQ-VAE folder, to damage."""
        return Path(shutil.copytree(self.run / "vqvae", self.tmp / name))


def write_wav(path: Path, data, rate: int = RATE, subtype: str | None = None, fmt: str | None = None) -> Path:
    sf.write(path, np.asarray(data, dtype=np.float64), rate, subtype=subtype, format=fmt)
    return path


def write_codes(path: Path, model_dir: Path, codes, length: int, gain: float = 1.0) -> Path:
    """A codes file in the format of ``vqaudio.codec.save_codes``, with any content."""
    config = json.loads((model_dir / "config.json").read_text())
    meta = {"model_id": config["model_id"], "sample_rate": config["sample_rate"], "hop": config["hop"],
            "length": int(length), "num_codes": config["num_codes"], "gain": float(gain)}
    with open(path, "wb") as f:
        np.savez(f, codes=np.asarray(codes, dtype=np.int16),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return path


def check_wav(path: Path, frames: int, rate: int = RATE) -> None:
    """A complete mono WAV of ``frames`` samples at ``rate``, finite, within [-1, 1]."""
    info = sf.info(path)
    assert (info.frames, info.samplerate, info.channels) == (frames, rate, 1), info
    wav, _ = sf.read(path)
    assert len(wav) == frames and np.isfinite(wav).all() and np.abs(wav).max() <= 1.0


def recipe(c: Ctx, old: str = "", new: str = "", folders: list[Path] | None = None) -> Path:
    """The smoke recipe in the case folder (data path made absolute), with one text edit."""
    text = (ROOT / "recipes" / "smoke.toml").read_text()
    folders = folders or [ROOT / "data" / "fsdd"]
    text = text.replace('folders = ["../data/fsdd"]', f"folders = {json.dumps([str(f) for f in folders])}")
    if old:
        assert old in text
        text = text.replace(old, new)
    path = c.tmp / "r.toml"
    path.write_text(text)
    return path


def snapshot(folder: Path) -> dict[str, tuple | str]:
    """Every path under ``folder``: files with size and modification time, folders by name."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in folder.rglob("*")}


def assert_one_error_line(p: subprocess.CompletedProcess, says) -> str:
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for part in says:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"
    return lines[0]


# -- the matrix: name -> function(ctx) -> (CLI arguments, what the error line says) ------------

CASES: dict[str, Callable] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def resynth(c: Ctx, src, out=None, *extra, model=None):
    return ["resynth", src, "-o", out or c.tmp / "out.wav", "--model", model or c.run, *extra]


# resynth: damaged and missing inputs

@case
def resynth_missing_input(c):
    return resynth(c, c.tmp / "missing.wav"), fail("missing.wav does not exist", "check the path")


@case
def resynth_empty_file(c):
    (c.tmp / "in.wav").write_bytes(b"")
    return resynth(c, c.tmp / "in.wav"), fail("in.wav is empty (0 bytes)", "export or copy it again")


@case
def resynth_truncated_wav(c):
    src = tone(c.tmp / "in.wav")
    src.write_bytes(src.read_bytes()[:3000])
    return resynth(c, src), fail("is a truncated WAV file", "export or copy it again")


@case
def resynth_text_file_named_wav(c):
    (c.tmp / "in.wav").write_text("hello, I am not audio\n")
    return resynth(c, c.tmp / "in.wav"), fail("cannot read", "as audio", "check it is an undamaged")


@case
def resynth_nan_samples(c):
    wav = np.full(800, 0.1)
    wav[400] = np.nan
    return resynth(c, write_wav(c.tmp / "in.wav", wav, subtype="FLOAT")), fail("NaN or Inf", "fix or remove the file")


@case
def resynth_zero_samples(c):
    return resynth(c, write_wav(c.tmp / "in.wav", np.zeros(0))), fail("has no samples", "export it again")


@case
def resynth_batch_with_one_truncated_file(c):
    (c.tmp / "in").mkdir()
    tone(c.tmp / "in" / "a.wav")
    bad = tone(c.tmp / "in" / "b.wav")
    bad.write_bytes(bad.read_bytes()[:3000])
    return (resynth(c, c.tmp / "in", c.tmp / "out"),  # nothing written, not even out/a.wav
            fail("b.wav is a truncated WAV file", "export or copy it again"))


# resynth: outputs that cannot or must not be written

@case
def resynth_output_folder_is_a_file(c):
    (c.tmp / "file.txt").write_text("a file, not a folder")
    return (resynth(c, tone(c.tmp / "in.wav"), c.tmp / "file.txt" / "out.wav"),
            fail("is a file, not a folder", "choose an output path inside a folder"))


@case
def resynth_output_in_proc(c):
    return resynth(c, tone(c.tmp / "in.wav"), PROC_WAV), fail("cannot write", "check the output folder is writable")


@case
def resynth_output_is_the_input(c):
    src = tone(c.tmp / "in.wav")
    return resynth(c, src, src), fail("would overwrite the input", "choose another -o")


# model folders (spread over the commands that load them)

@case
def resynth_model_without_config(c):
    m = c.model_copy()
    (m / "config.json").unlink()
    return resynth(c, tone(c.tmp / "in.wav"), model=m), fail("config.json is missing", "not a vqaudio model folder")


@case
def encode_model_without_weights(c):
    m = c.model_copy()
    (m / "weights.safetensors").unlink()
    return (["encode", tone(c.tmp / "in.wav"), "-o", c.tmp / "c.npz", "--model", m],
            fail("weights.safetensors is missing", "re-train or re-copy the model"))


@case
def decode_model_with_weights_of_another_model(c):
    m = c.model_copy()
    shutil.copy(c.models.other / "weights.safetensors", m / "weights.safetensors")
    codes = write_codes(c.tmp / "c.npz", c.run / "vqvae", np.zeros((10, 2)), 640)
    return (["decode", codes, "-o", c.tmp / "out.wav", "--model", m],
            fail("weights do not match its config.json", "mixes files of different models"))


@case
def eval_model_with_corrupt_config(c):
    m = c.model_copy()
    (m / "config.json").write_text('{"kind": "audio-vqvae", "hop": ')
    return (["eval", tone(c.tmp / "in.wav"), "--model", m],
            fail("config.json is corrupt", "re-train or re-copy the model"))


# encode

@case
def encode_folder_as_input(c):
    (c.tmp / "in.wav").mkdir()
    return (["encode", c.tmp / "in.wav", "-o", c.tmp / "c.npz", "--model", c.run],
            fail("is a folder, not an audio file", "name a file inside it"))


@case
def encode_inf_samples(c):
    wav = np.full(800, 0.1)
    wav[10] = np.inf
    src = write_wav(c.tmp / "in.wav", wav, subtype="FLOAT")
    return ["encode", src, "-o", c.tmp / "c.npz", "--model", c.run], fail("NaN or Inf", "fix or remove the file")


@case
def encode_output_is_the_input(c):
    src = tone(c.tmp / "in.npz", fmt="WAV")  # a WAV file named .npz: soundfile reads it
    return ["encode", src, "-o", src, "--model", c.run], fail("would overwrite the input", "choose another -o")


# decode

def decode(c: Ctx, codes, out=None):
    return ["decode", codes, "-o", out or c.tmp / "out.wav", "--model", c.run]


@case
def decode_codes_not_a_zip(c):
    (c.tmp / "c.npz").write_bytes(b"not a zip archive at all")
    return decode(c, c.tmp / "c.npz"), fail("not a vqaudio codes file", "make it again with 'vqaudio encode'")


@case
def decode_truncated_codes_file(c):
    codes = write_codes(c.tmp / "c.npz", c.run / "vqvae", np.zeros((50, 2)), 3200)
    codes.write_bytes(codes.read_bytes()[:200])
    return decode(c, codes), fail("not a vqaudio codes file", "make it again with 'vqaudio encode'")


@case
def decode_codes_of_another_model(c):
    codes = write_codes(c.tmp / "c.npz", c.models.other, np.zeros((10, 2)), 640)
    return decode(c, codes), fail("come from another model", "decode with the model that encoded them")


@case
def decode_codes_out_of_range(c):
    k = json.loads((c.run / "vqvae" / "config.json").read_text())["num_codes"]
    codes = np.zeros((10, 2))
    codes[3, 1] = k  # one past the last code
    codes = write_codes(c.tmp / "c.npz", c.run / "vqvae", codes, 640)
    return decode(c, codes), fail(f"codes out of range 0..{k - 1}", "make it again with 'vqaudio encode'")


# sample

def sample(c: Ctx, *extra, seconds="0.25", model=None, out=None):
    return ["sample", "--model", model or c.run, "-o", out or c.tmp / "s.wav", "--seconds", seconds, *extra]


@case
def sample_zero_seconds(c):
    return sample(c, seconds="0"), fail("--seconds must be positive", "e.g. --seconds 2")


@case
def sample_negative_seconds(c):
    return sample(c, seconds="-1.5"), fail("--seconds must be positive", "e.g. --seconds 2")


@case
def sample_unknown_label(c):
    return sample(c, "--label", "eleven"), fail("not a label this prior was trained with", "choose one of")


@case
def sample_model_without_prior(c):
    shutil.copytree(c.run / "vqvae", c.tmp / "run" / "vqvae")
    return sample(c, model=c.tmp / "run"), fail("has no prior", "train one with")


# train (each with --out in the case folder: nothing may appear there)

def train(c: Ctx, recipe_path, *extra):
    return ["train", recipe_path, "--out", c.tmp / "run", *extra]


@case
def train_recipe_with_unknown_key(c):
    r = recipe(c, "\nlr = ", "\nlrate = ")
    return train(c, r), fail(str(r), "unknown key 'train.lrate'", "did you mean 'lr'?", "valid keys:")


@case
def train_missing_data_folder(c):
    r = recipe(c, folders=[c.tmp / "nowhere"])
    return train(c, r), fail(str(r), "'data.folders'", "does not exist", "paths are relative to the recipe file")


@case
def train_data_folder_without_audio(c):
    (c.tmp / "empty").mkdir()
    (c.tmp / "empty" / "README.txt").write_text("the audio went elsewhere")
    r = recipe(c, folders=[c.tmp / "empty"])
    return train(c, r), fail(str(r), "'data.folders'", "holds no audio files", "put audio files there or fix the path")


# the image path

def image_resynth(c: Ctx, *inputs, out=None):
    return ["resynth", *inputs, "-o", out or c.tmp / "out.png", "--model", c.models.image]


@case
def image_resynth_wrong_size(c):
    return image_resynth(c, glyph(c.tmp / "g.png", size=32)), fail("32x32", "resize it to 28x28")


@case
def image_resynth_rgb(c):
    src = c.tmp / "g.png"
    Image.fromarray((np.random.default_rng(0).random((28, 28, 3)) * 255).astype(np.uint8)).save(src)
    return image_resynth(c, src), fail("RGB", "convert it to grayscale")


@case
def image_resynth_text_file_named_png(c):
    (c.tmp / "g.png").write_text("hello, I am not an image\n")
    return image_resynth(c, c.tmp / "g.png"), fail("cannot read", "give an undamaged PNG or JPEG file")


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_and_writes_nothing(models, tmp_path, name):
    args, says = CASES[name](Ctx(tmp_path, models))
    before = snapshot(tmp_path)
    p = vqaudio(*args, cwd=tmp_path, check=False)
    print(f"\n{name}: exit {p.returncode}: {p.stderr.strip()}")  # shown with pytest -s
    assert_one_error_line(p, says)
    after = snapshot(tmp_path)
    assert after == before, "files changed: " + ", ".join(sorted(str(k) for k in set(after.items()) ^ set(before.items())))
    assert not PROC_WAV.exists()


# -- unusual input that must work: one resynth (folder -> folder) and one eval over them all ----

def _tone_data(seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return 0.3 * np.sin(2 * np.pi * 300 * t)


SQUARE = np.where(np.arange(4000) // 20 % 2 == 0, 1.0, -1.0)  # 200 Hz at exactly +-1, full scale

# name -> (write the input file, samples expected in the 8 kHz output)
UNUSUAL = {
    "one_sample": (lambda path: write_wav(path, [0.5]), 1),
    "rate_96khz": (lambda path: tone(path, seconds=0.5, rate=96000), 4000),
    "pcm_8bit": (lambda path: write_wav(path, _tone_data(), subtype="PCM_U8"), 4000),
    "pcm_24bit": (lambda path: write_wav(path, _tone_data(), subtype="PCM_24"), 4000),
    "six_channels": (lambda path: tone(path, seconds=0.5, channels=6), 4000),
    "full_scale_square": (lambda path: write_wav(path, SQUARE, subtype="FLOAT"), 4000),
}


@pytest.fixture(scope="module")
def unusual(models, tmp_path_factory):
    """``vqaudio resynth in/ -o out/`` and ``vqaudio eval in/`` over every unusual input."""
    folder = tmp_path_factory.mktemp("unusual")
    (folder / "in").mkdir()
    for name, (write, _) in UNUSUAL.items():
        write(folder / "in" / f"{name}.wav")
    assert sf.info(folder / "in" / "pcm_8bit.wav").subtype == "PCM_U8"
    assert sf.info(folder / "in" / "six_channels.wav").channels == 6
    resynth_run = vqaudio("resynth", folder / "in", "-o", folder / "out", "--model", models.run, "--json",
                          cwd=folder, check=False)
    eval_run = vqaudio("eval", folder / "in", "--model", models.run, "--json", cwd=folder, check=False)
    return folder, resynth_run, eval_run


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_unusual_input_is_resynthesised(unusual, name):
    folder, p, _ = unusual
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    assert sorted(f.name for f in (folder / "out").iterdir()) == sorted(f"{n}.wav" for n in UNUSUAL)
    check_wav(folder / "out" / f"{name}.wav", UNUSUAL[name][1])
    result = next(json.loads(line) for line in p.stdout.splitlines() if f"{name}.wav" in line)
    assert result["levels"] == 2
    mel = result["mel_distance"]  # a number, or why not for a clip shorter than one mel frame
    assert mel.startswith("n/a: input shorter than") if isinstance(mel, str) else mel >= 0


def test_unusual_inputs_are_evaluated(unusual):
    _, _, p = unusual
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
    summary = json.loads(p.stdout)
    assert summary["files"] == len(UNUSUAL)
    assert all(np.isfinite(summary[k]) for k in ("si_snr", "mel_distance", "perplexity_level1"))


# -- more refusals, checked in process (the CLI prints any VqaudioError as the one line above) --

def _refusal(tmp_path: Path, call: Callable[[], object], *says: str) -> None:
    from vqaudio.errors import VqaudioError

    before = snapshot(tmp_path)
    with pytest.raises(VqaudioError) as e:
        call()
    message = str(e.value)
    assert "\n" not in message and all(part in message for part in says), message
    assert snapshot(tmp_path) == before


def test_damaged_codes_files_are_refused(models, tmp_path):
    from vqaudio.codec import load_codec, load_codes

    codec = load_codec(models.run)
    (tmp_path / "empty.npz").write_bytes(b"")
    _refusal(tmp_path, lambda: load_codes(tmp_path / "empty.npz", codec),
             "not a vqaudio codes file", "make it again with 'vqaudio encode'")
    (tmp_path / "folder.npz").mkdir()
    _refusal(tmp_path, lambda: load_codes(tmp_path / "folder.npz", codec), "is a folder", "pass the .npz file")
    for meta in (b"[1, 2]", b"\xff"):
        with open(tmp_path / "meta.npz", "wb") as f:
            np.savez(f, codes=np.zeros((2, 1), np.int16), meta=np.frombuffer(meta, np.uint8))
        _refusal(tmp_path, lambda: load_codes(tmp_path / "meta.npz", codec), "not a vqaudio codes file")


def test_encode_to_an_unwritable_folder_says_what_to_check(models, tmp_path):
    from vqaudio.resynth import encode_path

    src = tone(tmp_path / "in.wav")
    _refusal(tmp_path, lambda: encode_path(src, PROC_WAV.with_suffix(".npz"), models.run, None, None),
             "cannot write", "check the output folder is writable")
    (tmp_path / "file.txt").write_text("a file")
    _refusal(tmp_path, lambda: encode_path(src, tmp_path / "file.txt" / "c.npz", models.run, None, None),
             "is a file, not a folder", "choose an output path inside a folder")
    assert not PROC_WAV.with_suffix(".npz").exists()


def test_eval_of_a_folder_without_audio_says_what_to_do(models, tmp_path):
    from vqaudio.resynth import evaluate_paths

    (tmp_path / "in").mkdir()
    _refusal(tmp_path, lambda: evaluate_paths([tmp_path / "in"], models.run, None, None),
             "no audio files", "put audio files there or check the path")


def test_sample_refuses_before_writing_any_clip(models, tmp_path):
    from vqaudio.generate import sample as sample_
    from vqaudio.priors.sampling import Controls

    out = tmp_path / "s.wav"
    _refusal(tmp_path, lambda: sample_(models.run, 0.00001, 1, out, Controls(), None, False),
             "shorter than one sample", "ask for at least 0.000125 s")
    (tmp_path / "s-2.wav").mkdir()  # --num 2 writes s-1.wav, then s-2.wav: neither may be written
    _refusal(tmp_path, lambda: sample_(models.run, 0.25, 2, out, Controls(), None, False),
             "s-2.wav: is a folder", "give a file name")
    (tmp_path / "file.txt").write_text("a file")
    _refusal(tmp_path, lambda: sample_(models.run, 0.25, 1, tmp_path / "file.txt" / "s.wav", Controls(), None, False),
             "is a file, not a folder", "choose an output path inside a folder")


def test_image_resynth_reads_every_input_before_writing(models, tmp_path):
    from vqaudio.image_commands import resynth_images

    (tmp_path / "out").mkdir()
    (tmp_path / "b.png").write_text("not an image")
    inputs = [glyph(tmp_path / "a.png"), tmp_path / "b.png"]
    _refusal(tmp_path, lambda: list(resynth_images(inputs, tmp_path / "out", models.image)),
             "b.png as an image", "give an undamaged PNG or JPEG file")
    out = tmp_path / "a_resynth.png"
    results = list(resynth_images(inputs[:1], out, models.image))
    assert results[0]["output"] == str(out) and np.asarray(Image.open(out)).shape == (28, 28)


# -- an hour of audio in bounded memory ----------------------------------------------------------

# As in bench/speed.py: run a command as the only child of a fresh wrapper process, whose
# RUSAGE_CHILDREN ru_maxrss is then the command's peak resident memory (KiB).
WRAPPER = r"""
import json, resource, subprocess, sys, time
cmd = json.loads(sys.argv[1])
t0 = time.perf_counter()
r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t0
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "wall_s": wall, "maxrss_kb": u.ru_maxrss,
                  "stdout": r.stdout[-4000:], "stderr": r.stderr[-4000:]}))
"""
MAX_RSS_BYTES = 1.2e9


def test_encode_one_hour_in_bounded_memory(models, tmp_path):
    seconds, block = 3600, 60
    src = tmp_path / "hour.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(src, "w", samplerate=RATE, channels=1, subtype="PCM_16", format="WAV") as f:
        for _ in range(seconds // block):  # low noise, written a minute at a time
            f.write((rng.standard_normal(block * RATE) * 1e-3).astype(np.float32))
    out = tmp_path / "hour.npz"
    cmd = [sys.executable, "-m", "vqaudio", "encode", str(src), "-o", str(out), "--model", str(models.run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(cmd)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"vqaudio encode of 1 h at 8 kHz: {result['wall_s']:.1f} s wall, "
          f"peak RSS {result['maxrss_kb'] / 1024:.0f} MiB")
    assert result["rc"] == 0 and "Traceback" not in result["stderr"], result["stderr"]
    assert result["maxrss_kb"] * 1024 < MAX_RSS_BYTES, f"peak RSS {result['maxrss_kb'] / 1024:.0f} MiB"
    hop = json.loads((models.run / "vqvae" / "config.json").read_text())["hop"]
    with np.load(out) as d:
        assert d["codes"].shape == (math.ceil(seconds * RATE / hop), 2)
        assert json.loads(d["meta"].tobytes())["length"] == seconds * RATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hour.npz", "hour.wav"]
