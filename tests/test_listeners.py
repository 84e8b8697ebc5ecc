"""Listener models (vqaudio.listeners): DNSMOS and digit recognition on real FSDD recordings,
the one-line error without the eval extra, and ``vqaudio eval`` printing their figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from vqaudio import listeners
from vqaudio.errors import VqaudioError

ROOT = Path(__file__).parents[1]
FSDD = ROOT / "data" / "fsdd"
# Recognised as their digit with every lead-in from 0 to 1 s (checked by hand), two speakers.
RECOGNISED = ["0_theo_0.wav", "1_yweweler_0.wav", "2_yweweler_0.wav", "3_yweweler_0.wav",
              "7_yweweler_1.wav", "8_theo_0.wav", "9_theo_0.wav"]


def read(name: str) -> tuple[np.ndarray, int]:
    return sf.read(FSDD / name, dtype="float32")


def test_dnsmos_of_a_real_digit_is_plausible_and_beats_white_noise():
    wav, rate = read("7_yweweler_1.wav")
    speech = listeners.dnsmos(wav, rate)
    assert set(speech) == {"sig", "bak", "ovrl"}
    assert all(1 <= v <= 5 for v in speech.values()), speech
    noise = 0.1 * np.random.default_rng(0).standard_normal(len(wav))
    assert speech["ovrl"] > listeners.dnsmos(noise, rate)["ovrl"] + 0.5


def test_dnsmos_equals_speechmos_on_one_window():
    """Our loop over windows (without the P.808 model) gives speechmos' own numbers."""
    from speechmos import dnsmos as speechmos_dnsmos

    wav, rate = read("3_yweweler_0.wav")
    x = torch.from_numpy(listeners._to_listener_rate(wav, rate))
    theirs = speechmos_dnsmos.run(np.resize(x.numpy(), 144160), sr=16000)
    ours = listeners.dnsmos(x, 16000)  # a tensor at 16 kHz: no resampling
    for k in ("sig", "bak", "ovrl"):
        assert ours[k] == pytest.approx(float(theirs[f"{k}_mos"]), abs=1e-5)


@pytest.mark.parametrize("name", RECOGNISED)
def test_real_digits_are_recognised(name):
    wav, rate = read(name)
    assert listeners.recognise_digit(wav, rate) == listeners.DIGIT_WORDS[int(name[0])]


def test_recognition_accuracy_on_one_speakers_validation_digits():
    """Measured 82% (41 of 50) for yweweler's 50 validation recordings."""
    files = sorted(FSDD.glob("*_yweweler_[0-4].wav"))
    assert len(files) == 50
    hits = [listeners.recognise_digit(*read(f.name)) == listeners.DIGIT_WORDS[listeners.digit_label(f)]
            for f in files]
    assert np.mean(hits) >= 0.7


@pytest.mark.parametrize("clip", ["silence", "noise", "one_sample", "full_scale"])
def test_odd_clips_do_not_crash(clip):
    x = {"silence": np.zeros(4000), "noise": 0.3 * np.random.default_rng(1).standard_normal(4000),
         "one_sample": np.array([0.5]), "full_scale": np.sign(np.sin(np.arange(4000) / 3))}[clip]
    word = listeners.recognise_digit(x, 8000)
    assert word is None or word in listeners.DIGIT_WORDS
    if clip in ("silence", "one_sample"):
        assert all(np.isfinite(v) for v in listeners.dnsmos(x, 8000).values())
    with pytest.raises(ValueError, match="empty"):
        listeners.dnsmos(np.zeros(0), 8000)


def test_digit_label_comes_from_fsdd_file_names():
    assert listeners.digit_label("data/7_theo_3.wav") == 7
    assert listeners.digit_label("a_7_theo.wav") is None and listeners.digit_label("speech.wav") is None


def test_digit_confusions_count_per_digit_and_the_wrong_hearings():
    pairs = [(0, "zero"), (0, "two"), (0, "two"), (9, "five"), (9, None), (9, "nine"), (1, "one")]
    per_digit, wrong = listeners.digit_confusions(pairs)
    assert list(per_digit) == ["zero", "one", "nine"]  # digit order, only the digits asked
    assert per_digit == {"zero": (1, 3), "one": (1, 1), "nine": (1, 3)}
    assert wrong == [(("zero", "two"), 2), (("nine", "five"), 1), (("nine", "nothing"), 1)]
    table = listeners.confusion_table([("codec", pairs)]).splitlines()
    assert len(table) == 3 and table[0].count("|") == 13  # name, ten digits, the wrong hearings
    assert table[2] == "| codec | 1/3 | 1/1 |  |  |  |  |  |  |  | 1/3 | zero→two 2, nine→five 1, nine→nothing 1 |"


@pytest.fixture
def no_eval_extra(monkeypatch):
    """speechmos and pocketsphinx look uninstalled: importing them raises ImportError."""
    for name in ("speechmos", "speechmos.dnsmos", "pocketsphinx"):
        monkeypatch.setitem(sys.modules, name, None)
    listeners._dnsmos_model.cache_clear()
    listeners._digit_decoder.cache_clear()
    yield
    listeners._dnsmos_model.cache_clear()
    listeners._digit_decoder.cache_clear()


def test_missing_eval_extra_is_one_clear_line(no_eval_extra):
    wav, rate = read("0_theo_0.wav")
    for call, what in ((lambda: listeners.dnsmos(wav, rate), "DNSMOS"),
                       (lambda: listeners.recognise_digit(wav, rate), "Digit recognition")):
        with pytest.raises(VqaudioError) as e:
            call()
        assert str(e.value) == f"{what} needs the eval extra: pip install 'vqaudio[eval]'"
    from vqaudio.resynth import evaluate_paths

    with pytest.raises(VqaudioError, match="^DNSMOS needs the eval extra: pip install 'vqaudio.eval.'$"):
        evaluate_paths([FSDD / "0_theo_0.wav"], None, None, None)
    assert "dnsmos_ovrl" not in evaluate_paths([FSDD / "0_theo_0.wav"], None, None, 1, listeners=False)


HIDE_EVAL_EXTRA = ("import sys, runpy\n"
                   "for m in ('speechmos', 'speechmos.dnsmos', 'pocketsphinx'): sys.modules[m] = None\n")


@pytest.mark.parametrize("command", [
    f"sys.argv = ['vqaudio', 'eval', {str(FSDD / '0_theo_0.wav')!r}, '--levels', '1']\n"
    "runpy.run_module('vqaudio', run_name='__main__')",
    f"sys.argv = ['codec_quality.py', '--threads', '1', '--levels', '1', '--no-baselines', '--max-files', '1']\n"
    f"runpy.run_path({str(ROOT / 'bench' / 'codec_quality.py')!r}, run_name='__main__')",
], ids=["vqaudio eval", "bench/codec_quality.py"])
def test_a_command_without_the_eval_extra_says_so_in_one_line(command):
    """Both commands that listen, run as a user runs them, with the extra's modules unimportable."""
    p = subprocess.run([sys.executable, "-c", HIDE_EVAL_EXTRA + command], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, cwd=ROOT)
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stderr == "error: DNSMOS needs the eval extra: pip install 'vqaudio[eval]'\n"


def vqaudio(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "vqaudio", *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_eval_prints_dnsmos_and_digit_accuracy(tmp_path):
    """``vqaudio eval`` with the pretrained model on two labelled digits and one recording
    whose name carries no label: DNSMOS over all three, recognition over the two."""
    unlabelled = tmp_path / "speech.wav"
    unlabelled.write_bytes((FSDD / "5_yweweler_2.wav").read_bytes())
    text = vqaudio("eval", FSDD / "0_theo_0.wav", FSDD / "8_theo_0.wav", unlabelled, "--levels", "2")
    summary = dict(line.split(": ", 1) for line in text.strip().splitlines())  # "stoi: n/a: ..."
    assert summary["files"] == "3" and summary["digit_files"] == "2"
    assert all(1 <= float(summary[k]) <= 5 for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))
    assert float(summary["digit_accuracy_input"]) == 1.0  # both in RECOGNISED
    assert float(summary["digit_accuracy"]) in (0.0, 0.5, 1.0)
    summary = json.loads(vqaudio("eval", FSDD / "0_theo_0.wav", "--levels", "1", "--json", "--no-listeners"))
    assert "mel_distance" in summary and not any(k.startswith(("dnsmos", "digit")) for k in summary)
