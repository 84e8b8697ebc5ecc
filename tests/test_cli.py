"""The CLI end to end, in subprocesses, on a tiny trained model and generated audio."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT, vqaudio  # noqa: F401  (re-exported: other test files import them from here)


def tone(path, seconds=0.7, rate=8000, channels=1, fmt=None):
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
    sf.write(path, np.stack([wav] * channels, 1) if channels > 1 else wav, rate, format=fmt)
    return path


def test_help_lists_commands_without_importing_torch():
    p = subprocess.run([sys.executable, "-c",
                        "import sys; from vqaudio.cli import app; "
                        "assert 'torch' not in sys.modules, 'torch imported'"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = vqaudio("--help").stdout
    for command in ("train", "resynth", "sample", "encode", "decode", "eval"):
        assert command in out
    assert vqaudio("--version").stdout.startswith("vqaudio ")


def test_train_writes_model_checkpoints_and_tensorboard(run_dir):
    config = json.loads((run_dir / "vqvae" / "config.json").read_text())
    assert config["kind"] == "audio-vqvae" and config["hop"] == 64 and config["levels"] == 2
    assert (run_dir / "vqvae" / "weights.safetensors").is_file()
    assert len(list((run_dir / "checkpoints").glob("vqvae-step*"))) == 2  # keep_checkpoints
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"audio": 0, "images": 0}).Reload()
    tags = events.Tags()
    for scalar in ("vqvae/train/l1", "vqvae/train/stft", "vqvae/train/mel", "vqvae/train/perplexity",
                   "vqvae/train/codes_used", "vqvae/train/lr", "vqvae/val/si_snr_2lvl"):
        assert scalar in tags["scalars"], scalar
    assert any("audio" in t for t in tags["audio"])
    pictures = [events.Images(t)[-1] for t in tags["images"] if t.startswith("vqvae/spectrogram/")]
    assert pictures and all(p.width >= 600 and p.height >= 400 for p in pictures)  # two panels with axes
    assert _colourful(pictures[0].encoded_image_string)
    assert any("codes" in t for t in tags["histograms"])


def _colourful(png: bytes) -> bool:
    """A colour map, not grey: many pixels whose channels differ."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((rgb.max(-1) - rgb.min(-1)) > 60).mean()) > 0.3


@pytest.mark.parametrize("case", ["mono8k", "stereo44k", "flac", "odd_length"])
def test_resynth_any_input_keeps_length(run_dir, tmp_path, case):
    if case == "mono8k":
        src = tone(tmp_path / "in.wav")
    elif case == "stereo44k":
        src = tone(tmp_path / "in.wav", rate=44100, channels=2)
    elif case == "flac":
        src = tone(tmp_path / "in.flac", rate=16000, fmt="FLAC")
    else:
        src = tone(tmp_path / "in.wav", seconds=1001 / 8000)
    info = sf.info(src)
    out = tmp_path / "out.wav"
    p = vqaudio("resynth", src, "-o", out, "--model", run_dir, "--json")
    result = json.loads(p.stdout)
    assert result["levels"] == 2 and result["bitrate_kbps"] == pytest.approx(1.25)
    assert np.isfinite(result["si_snr_db"]) and result["mel_distance"] >= 0
    written = sf.info(out)
    assert written.samplerate == 8000 and written.channels == 1
    assert written.frames == round(info.frames * 8000 / info.samplerate)
    back = tmp_path / "back.wav"
    vqaudio("resynth", src, "-o", back, "--model", run_dir, "--input-rate", "--levels", "1")
    assert sf.info(back).samplerate == info.samplerate
    assert abs(sf.info(back).frames - info.frames) <= 1


def test_resynth_bitrate_picks_levels(run_dir, tmp_path):
    src = tone(tmp_path / "in.wav")
    p = vqaudio("resynth", src, "-o", tmp_path / "o.wav", "--model", run_dir, "--bitrate", "1.0", "--json")
    assert json.loads(p.stdout)["levels"] == 1  # 0.625 kb/s per level
    p = vqaudio("resynth", src, "-o", tmp_path / "o.wav", "--model", run_dir, "--bitrate", "0.5", check=False)
    assert p.returncode == 1 and "below this model's lowest bitrate" in p.stderr


def test_resynth_folder_to_folder(run_dir, tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    tone(tmp_path / "in" / "a.wav")
    tone(tmp_path / "in" / "sub" / "b.wav")
    p = vqaudio("resynth", tmp_path / "in", "-o", tmp_path / "out", "--model", run_dir)
    assert (tmp_path / "out" / "a.wav").is_file() and (tmp_path / "out" / "sub" / "b.wav").is_file()
    assert "SI-SNR" in p.stdout


def test_encode_decode_round_trip(run_dir, tmp_path):
    src = tone(tmp_path / "in.wav", seconds=0.9)
    codes = tmp_path / "c.npz"
    vqaudio("encode", src, "-o", codes, "--model", run_dir, "--levels", "1")
    with np.load(codes) as data:
        assert data["codes"].shape == (-(-7200 // 64), 1)
    out = tmp_path / "d.wav"
    vqaudio("decode", codes, "-o", out, "--model", run_dir)
    direct = tmp_path / "r.wav"
    vqaudio("resynth", src, "-o", direct, "--model", run_dir, "--levels", "1")
    a, b = sf.read(out), sf.read(direct)
    assert len(a[0]) == 7200
    np.testing.assert_allclose(a[0], b[0], atol=2 / 32768)


def test_eval_reports_quality(run_dir, tmp_path):
    tone(tmp_path / "a.wav")
    tone(tmp_path / "b.wav", seconds=0.4)
    summary = json.loads(vqaudio("eval", tmp_path, "--model", run_dir, "--json").stdout)
    assert summary["files"] == 2 and 0 < summary["codes_used_share_level1"] <= 1
    assert summary["bitrate_kbps"] == pytest.approx(1.25) and summary["perplexity_level1"] >= 1
    assert np.isfinite(summary["si_snr"]) and summary["mel_distance"] >= 0
    assert "stoi" in summary  # pystoi is in the dev extra


def _no_new_files(folder, before):
    return sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("case", [
    "missing", "empty", "not_audio", "directory", "nan", "truncated", "out_is_input",
    "missing_out_dir", "bad_model", "wrong_kind_model", "bad_levels",
])
def test_resynth_bad_inputs_one_line_no_output(run_dir, tmp_path, case):
    src, out, model = tmp_path / "in.wav", tmp_path / "out.wav", run_dir
    if case == "empty":
        sf.write(src, np.zeros(0), 8000)
    elif case == "not_audio":
        src.write_text("hello, I am not audio")
    elif case == "directory":
        src = tmp_path / "folder.wav"
        src.mkdir()
    elif case == "nan":
        sf.write(src, np.full(800, np.nan), 8000, subtype="FLOAT")
    elif case == "truncated":
        tone(src)
        src.write_bytes(src.read_bytes()[: 3000])
    elif case == "out_is_input":
        tone(src)
        out = src
    elif case == "missing_out_dir":
        tone(src)
        out = tmp_path / "nowhere" / "out.wav"
    elif case == "bad_model":
        tone(src)
        model = tmp_path / "nomodel"
    elif case == "wrong_kind_model":
        tone(src)
        model = tmp_path / "m"
        model.mkdir()
        (model / "config.json").write_text('{"kind": "pixelcnn-prior"}')
    elif case == "bad_levels":
        tone(src)
    before = sorted(p.name for p in tmp_path.iterdir())
    extra = ["--levels", "9"] if case == "bad_levels" else []
    p = vqaudio("resynth", src, "-o", out, "--model", model, *extra, check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    assert _no_new_files(tmp_path, before)
    if case == "out_is_input":
        assert sf.info(src).frames > 0  # the input is untouched


def test_decode_with_another_model_is_an_error(run_dir, tmp_path):
    src = tone(tmp_path / "in.wav")
    vqaudio("encode", src, "-o", tmp_path / "c.npz", "--model", run_dir)
    other = tmp_path / "other"
    vqaudio("train", ROOT / "recipes" / "smoke.toml", "--out", other, "--set", "train.steps=2",
            "--set", "train.seed=1", "--stage", "vqvae")
    p = vqaudio("decode", tmp_path / "c.npz", "-o", tmp_path / "d.wav", "--model", other, check=False)
    assert p.returncode == 1 and "another model" in p.stderr
    assert not (tmp_path / "d.wav").exists()
    codes = tmp_path / "bad.npz"
    codes.write_bytes(b"not a zip")
    p = vqaudio("decode", codes, "-o", tmp_path / "d.wav", "--model", run_dir, check=False)
    assert p.returncode == 1 and "not a vqaudio codes file" in p.stderr


def test_train_bad_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text((ROOT / "recipes" / "smoke.toml").read_text().replace("lr = ", "lrate = "))
    p = vqaudio("train", recipe, check=False)
    assert p.returncode == 1
    assert "unknown key 'train.lrate' (did you mean 'lr'?)" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_train_writes_the_prior_its_code_cache_and_logs(run_dir):
    config = json.loads((run_dir / "prior" / "config.json").read_text())
    vqvae = json.loads((run_dir / "vqvae" / "config.json").read_text())
    assert config["kind"] == "audio-prior" and config["vqvae_model_id"] == vqvae["model_id"]
    assert config["levels"] == 2 and len(config["labels"]) > 1
    assert (run_dir / "codes-train.npz").is_file() and (run_dir / "codes-val.npz").is_file()
    assert len(list((run_dir / "checkpoints").glob("prior-step*"))) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"audio": 0, "images": 0}).Reload()
    tags = events.Tags()
    for scalar in ("prior/train/bits_per_code", "prior/val/bits_per_code", "prior/val/unigram_entropy_bits"):
        assert scalar in tags["scalars"], scalar
    samples = [t for t in tags["audio"] if t.startswith("prior/samples/")]
    assert samples
    for tag in samples:  # each sampled clip has its spectrogram, at every validation
        pictures = events.Images(tag.replace("/samples/", "/samples_spectrogram/"))
        assert len(pictures) == len(events.Audio(tag)) and pictures[-1].width >= 600


def test_prior_stage_alone_reuses_the_vqvae_and_its_code_cache(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cache = (run / "codes-train.npz").stat().st_mtime_ns
    vqvae_id = json.loads((run / "vqvae" / "config.json").read_text())["model_id"]
    vqaudio("train", ROOT / "recipes" / "smoke.toml", "--out", run, "--stage", "prior",
            "--set", "prior_train.steps=3")
    assert (run / "codes-train.npz").stat().st_mtime_ns == cache  # encoded once, reused
    assert json.loads((run / "vqvae" / "config.json").read_text())["model_id"] == vqvae_id
    p = vqaudio("train", ROOT / "recipes" / "smoke.toml", "--out", tmp_path / "empty", "--stage", "prior",
                check=False)
    assert p.returncode == 1 and "no trained VQ-VAE" in p.stderr and "--stage vqvae" in p.stderr


def test_sample_writes_wavs_of_the_exact_duration(run_dir, tmp_path):
    p = vqaudio("sample", "--model", run_dir, "--seconds", "0.77", "--num", "3", "-o", tmp_path / "s.wav",
                "--label", "3", "--seed", "4", "--top-k", "8", "--temperature", "0.9")
    paths = [tmp_path / f"s-{i}.wav" for i in (1, 2, 3)]
    assert p.stdout.split() and all(str(path) in p.stdout for path in paths)
    assert "label 3" in p.stdout
    waves = []
    for path in paths:
        info = sf.info(path)
        assert info.samplerate == 8000 and info.frames == round(0.77 * 8000) and info.channels == 1
        wav, _ = sf.read(path)
        assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
        waves.append(wav)
    again = tmp_path / "again.wav"
    vqaudio("sample", "--model", run_dir, "--seconds", "0.77", "--num", "1", "-o", again, "--label", "3",
            "--seed", "4", "--top-k", "8", "--temperature", "0.9")
    np.testing.assert_array_equal(sf.read(again)[0], waves[0])  # same seed, same first clip
    vqaudio("sample", "--model", run_dir, "--seconds", "0.77", "-o", again, "--label", "3", "--seed", "6",
            "--top-k", "8", "--temperature", "0.9")
    np.testing.assert_array_equal(sf.read(again)[0], waves[2])  # clip i of seed S = clip of seed S+i
    # --smoothing 3: the same codes, their low band decoded from the latent low-passed
    vqaudio("sample", "--model", run_dir, "--seconds", "0.77", "-o", again, "--label", "3", "--seed", "4",
            "--top-k", "8", "--temperature", "0.9", "--smoothing", "3")
    import torch

    from vqaudio.generate import generate_clips, load_audio_run
    from vqaudio.priors.sampling import Controls, with_prior_defaults

    codec, prior, config = load_audio_run(run_dir / "vqvae", run_dir / "prior")
    controls = with_prior_defaults(Controls(seed=4, top_k=8, temperature=0.9, smoothing=3), config)
    expected = generate_clips(codec, prior, config, 0.77, 1, controls, torch.tensor([3]))[0]
    np.testing.assert_allclose(sf.read(again)[0], expected, atol=1e-4)
    assert np.abs(expected - waves[0]).max() > 3e-4  # more than the 16-bit rounding allclose forgives
    # --end-silence: the CLI passes it on to the draw (vqaudio/utterance.py; tests/test_utterance.py)
    vqaudio("sample", "--model", run_dir, "--seconds", "0.77", "-o", again, "--label", "3", "--seed", "4",
            "--top-k", "8", "--temperature", "0.9", "--end-silence", "0.05")
    controls = with_prior_defaults(Controls(seed=4, top_k=8, temperature=0.9, end_silence=0.05), config)
    expected = generate_clips(codec, prior, config, 0.77, 1, controls, torch.tensor([3]))[0]
    np.testing.assert_allclose(sf.read(again)[0], expected, atol=1e-4)
    vqaudio("sample", "--model", run_dir / "prior", "-o", tmp_path / "one.wav", "--seconds", "0.5")
    assert sf.info(tmp_path / "one.wav").frames == 4000


def test_classifier_stage_then_best_of_n_keeps_one_of_its_candidates(run_dir, tmp_path):
    """--stage classifier trains run/classifier on the run's cached prior codes (the encoding
    is not redone); --candidates 3 then gives one of the three plain draws of seeds S,
    S + 1,000,003 and S + 2,000,006 (which one: tests/test_classifier.py)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cache = (run / "codes-train.npz").stat().st_mtime_ns
    p = vqaudio("train", ROOT / "recipes" / "smoke.toml", "--out", run, "--stage", "classifier",
                "--set", "prior_train.steps=5")
    assert "trained smoke" in p.stdout and (run / "codes-train.npz").stat().st_mtime_ns == cache
    config = json.loads((run / "classifier" / "config.json").read_text())
    assert config["kind"] == "audio-classifier" and config["labels"] == [str(d) for d in range(10)]
    common = ["--model", run, "--seconds", "0.5", "--label", "3", "--temperature", "1.5"]
    vqaudio("sample", *common, "--seed", "4", "--candidates", "3", "-o", tmp_path / "best.wav")
    plain = []
    for j in (0, 1, 2):
        vqaudio("sample", *common, "--seed", str(4 + j * 1_000_003), "-o", tmp_path / f"c{j}.wav")
        plain.append(sf.read(tmp_path / f"c{j}.wav")[0])
    best = sf.read(tmp_path / "best.wav")[0]
    assert any(np.array_equal(best, p) for p in plain)
    assert not np.array_equal(plain[0], plain[1])  # three different candidates


@pytest.mark.parametrize("case", ["no_prior", "unknown_label", "zero_seconds", "negative_seconds",
                                  "missing_model", "bad_top_p", "missing_folder", "not_wav", "bad_guidance",
                                  "unguidable", "no_candidates", "no_classifier", "even_smoothing",
                                  "negative_end_silence"])
def test_sample_bad_inputs_are_one_line_and_write_nothing(run_dir, tmp_path, case):
    import shutil

    out = tmp_path / "s.wav"
    args = {"no_prior": ["--model", run_dir / "vqvae"], "unknown_label": ["--label", "11"],
            "zero_seconds": ["--seconds", "0"], "negative_seconds": ["--seconds", "-2"],
            "missing_model": ["--model", tmp_path / "nowhere"], "bad_top_p": ["--top-p", "1.5"],
            "missing_folder": ["-o", tmp_path / "no" / "s.wav"], "not_wav": ["-o", tmp_path / "s.mp3"],
            "bad_guidance": ["--guidance", "-1"], "unguidable": ["--guidance", "2", "--label", "3"],
            "no_candidates": ["--candidates", "0"], "no_classifier": ["--candidates", "2", "--label", "3"],
            "even_smoothing": ["--smoothing", "4"], "negative_end_silence": ["--end-silence", "-0.1"]}[case]
    if case == "no_prior":
        shutil.copytree(run_dir / "vqvae", tmp_path / "run" / "vqvae")
        args = ["--model", tmp_path / "run"]
    if "--model" not in args:
        args += ["--model", run_dir]
    if "-o" not in args:
        args += ["-o", out]
    before = sorted(tmp_path.rglob("*"))
    p = vqaudio("sample", *args, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    expected = {"no_prior": "has no prior", "unknown_label": "not a label this prior was trained with",
                "zero_seconds": "--seconds must be positive", "negative_seconds": "--seconds must be positive",
                "missing_model": "no such folder", "bad_top_p": "--top-p",
                "missing_folder": "does not exist", "not_wav": "ending in .wav",
                "bad_guidance": "--guidance must be 0 or more", "unguidable": "trained without prior.label_dropout",
                "no_candidates": "--candidates must be 1 or more",
                "no_classifier": "needs the code classifier that ranks the candidates",
                "even_smoothing": "--smoothing must be an odd number of frames",
                "negative_end_silence": "--end-silence must be 0 (off) or a number of seconds"}[case]
    assert expected in lines[0]
    assert sorted(tmp_path.rglob("*")) == before


def test_pretrained_model_ships_and_works_without_training(tmp_path):
    pretrained = ROOT / "vqaudio" / "pretrained" / "speech"
    notice = (pretrained / "README.md").read_text()
    assert "CC BY-SA 4.0" in notice and "Free Spoken Digit Dataset" in notice
    p = vqaudio("sample", "--seconds", "2", "--label", "7", "-o", tmp_path / "seven.wav", cwd=tmp_path)
    assert sf.info(tmp_path / "seven.wav").frames == 16000 and "label 7" in p.stdout
    src = tone(tmp_path / "in.wav")
    vqaudio("resynth", src, cwd=tmp_path)
    assert sf.info(tmp_path / "in_resynth.wav").frames == sf.info(src).frames


@pytest.mark.parametrize("args", [
    ["train", "recipes/speech.toml", "--workers", "abc"], ["resynth", "in.wav", "--levels", "two"],
    ["sample", "--seconds", "abc"], ["encode", "in.wav", "-o", "c.npz", "--levels", "x"],
    ["decode", "c.npz", "-o", "out.wav", "--bogus"], ["eval", "in.wav", "--levels", "1.5"],
    ["train"]])
def test_usage_errors_are_one_line(tmp_path, args):
    """An option of the wrong type (or unknown, or a missing argument) on any command: one
    ``error:`` line naming it and the command's --help, a non-zero exit, nothing written."""
    p = vqaudio(*args, cwd=tmp_path, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ") and f"'vqaudio {args[0]} --help'" in lines[0]
    assert not p.stdout and not list(tmp_path.iterdir())


def test_resynth_of_a_one_sample_file_says_na_not_nan(tmp_path):
    """SI-SNR and the mel distance of a too-short input are the reason, printed and in JSON."""
    sf.write(tmp_path / "one.wav", np.array([0.5]), 8000)
    p = vqaudio("resynth", tmp_path / "one.wav", "-o", tmp_path / "out.wav")
    assert "nan" not in p.stdout.lower()
    assert "SI-SNR n/a: input shorter than 2 samples" in p.stdout
    assert "mel distance n/a: input shorter than 64 ms" in p.stdout
    result = json.loads(vqaudio("resynth", tmp_path / "one.wav", "-o", tmp_path / "out2.wav", "--json").stdout)
    assert result["si_snr_db"] == "n/a: input shorter than 2 samples"
    assert sf.info(tmp_path / "out2.wav").frames == 1


def test_sample_lets_idle_torch_threads_sleep_unless_told_otherwise(monkeypatch):
    from vqaudio.cli import passive_omp_threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    passive_omp_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # an explicit setting wins
    passive_omp_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
