"""Speech quality of vqaudio against Codec2 and Opus, measured by references and by listeners.

Run by hand (not a test):

    python bench/codec_quality.py                                # the pretrained model
    python bench/codec_quality.py --model runs/speech --max-files 10 --speaker theo

Two sets of validation recordings, scored in one run (8 kHz):

* sentences: read speech of the validation speakers of ``data/speech`` (``SPEECH_REGEX``:
  speechocean762 speakers whose number ends in 0, LibriSpeech speakers whose number ends in 7),
  ``--max-files`` of them evenly spread over the sorted list;
* digits: the FSDD validation recordings (indices 0–4, 50 files) of one speaker
  (``--speaker``, by default the one ``recipes/speech-large.toml`` holds out of training);
  ``--all-digits`` takes all 500 of that speaker's recordings instead (right only for a
  speaker the model never trained on): one clip is then 0.2 points of recognition, not 2.

Time: ``--max-files 40`` took 13 min on 2 cores shared with four training runs (11.6 s per
sentence and 6.2 s per digit for all rows, DNSMOS about 0.3–0.7 s of it per row): the default
of 20 sentences keeps a run near 9 min there; see bench/RESULTS.md.

Systems:

* original: the recording itself, the ceiling for the listener scores (DNSMOS, recognition).
* vqaudio at every quantizer level count of the model (1 .. levels), bitrate from
  ``codec.bitrate(levels)``; the reconstruction is clipped to [-1, 1] and rounded to 16 bits,
  as the CLI writes it.
* Codec2 (Debian package ``codec2``) at modes 2400 and 1300, and Opus (Debian package
  ``opus-tools``) at 6 kb/s: ``vqaudio.baselines`` runs their command-line tools (the same
  code ``vqaudio eval --report`` uses).

A system whose tools are missing is reported and skipped; the others are still scored.

Every decoded signal goes through the same ``align`` routine (``vqaudio.baselines``) before scoring: the lag that
maximizes the cross-correlation with the reference within +-40 ms is removed (Codec2 delays
its output), then the signal is trimmed or zero-padded to the reference's length. Scores are
``vqaudio.metrics.quality_report`` (PESQ-nb, STOI, mel distance, SI-SNR) against the
recording, and ``vqaudio.listeners`` (the eval extra): DNSMOS P.835 SIG/BAK/OVRL of the decoded
signal, and for the digits the share recognised as their digit by PocketSphinx. All are means
over files; PESQ and STOI over the files they can score, and the table says how many when that
is not all: pystoi cannot score clips with less than 384 ms of speech (over half of FSDD's
validation files): ``vqaudio.metrics.quality_report`` says "n/a" for those.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vqaudio.baselines import (MAX_LAG_MS, SAMPLE_RATE, align, codec2_system, missing, opus_system,
                               to_int16)

REPO = Path(__file__).resolve().parent.parent
# data/speech/README.md: the validation speakers, never seen in training
SPEECH_REGEX = r"^\d{3}0_|^\d*7-\d+-\d+\.flac$"
SPEAKER = "yweweler"  # the FSDD speaker recipes/speech-large.toml holds out
MAX_FILES = 20  # sentences scored by default (of 212): each costs about twice a digit
CODEC2_MODES = (2400, 1300)
OPUS_KBPS = 6
METRICS = ("pesq", "stoi", "mel_distance", "si_snr")
LISTENERS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "digits")
CORPORA = ("sentences", "digits")


# -- systems --------------------------------------------------------------------------------

def vqaudio_system(codec, levels: int) -> Callable[[np.ndarray], np.ndarray]:
    import soxr

    def run(wav: np.ndarray) -> np.ndarray:
        x = wav.astype(np.float32)
        if codec.sample_rate != SAMPLE_RATE:
            x = soxr.resample(x, SAMPLE_RATE, codec.sample_rate, quality="HQ")
        y = np.clip(codec.resynth(x, levels), -1, 1)
        if codec.sample_rate != SAMPLE_RATE:
            y = soxr.resample(y, codec.sample_rate, SAMPLE_RATE, quality="HQ")
        return to_int16(y).astype(np.float64) / 32768  # as written to a 16-bit WAV
    return run


@dataclass
class System:
    name: str
    kbps: float
    run: Callable[[np.ndarray], np.ndarray] | None
    missing: str = ""  # why it was not run
    reference: bool = False  # the recording itself: listener scores only
    # corpus -> metric -> one value per file
    scores: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {c: {m: [] for m in METRICS + LISTENERS} for c in CORPORA})
    lags: list[int] = field(default_factory=list)
    heard: list[tuple[int, str | None]] = field(default_factory=list)  # digits: (asked, word heard)
    error: str = ""
    seconds: float = 0.0
    note: str = ""


def build_systems(codec, tmp: Path, opus_bits: list[int], levels: list[int] | None = None,
                  baselines: bool = True) -> list[System]:
    systems = [System("original", SAMPLE_RATE * 16 / 1000, lambda wav: wav, reference=True)] if baselines else []
    systems += [System(f"vqaudio {n} level{'s' if n > 1 else ''}", codec.bitrate(n) / 1000,
                       vqaudio_system(codec, n)) for n in (levels or range(1, codec.max_levels + 1))]
    if not baselines:  # ablations: the model's rows alone
        return systems
    why = missing("codec2")
    for mode in CODEC2_MODES:
        systems.append(System(f"Codec2 {mode}", mode / 1000,
                              None if why else codec2_system(mode, tmp), missing=why))
    why = missing("opus-tools")
    systems.append(System(f"Opus {OPUS_KBPS}k", OPUS_KBPS,
                          None if why else opus_system(OPUS_KBPS, tmp, opus_bits), missing=why))
    return systems


# -- main -----------------------------------------------------------------------------------

def spread(files: list[Path], limit: int) -> list[Path]:
    """``limit`` files evenly spread over the sorted list (all with 0), so a small limit still
    covers both corpora and many speakers."""
    if limit and limit < len(files):
        files = [files[int(i * len(files) / limit)] for i in range(limit)]
    return files


def sentence_files(folder: Path, regex: str, limit: int) -> list[Path]:
    from vqaudio.audio_io import list_audio_files
    from vqaudio.data.audio import split_files

    _, val = split_files(sorted(list_audio_files([folder])), regex, 0.1)
    return spread(val, limit)


def digit_files(folder: Path, speaker: str, every_index: bool = False) -> list[Path]:
    from vqaudio.audio_io import list_audio_files
    from vqaudio.errors import VqaudioError

    index = r"\d+" if every_index else "[0-4]"
    pattern = re.compile(rf"^\d_{re.escape(speaker)}_{index}\.wav$")
    files = sorted(f for f in list_audio_files([folder]) if pattern.search(f.name))
    if not files:
        raise VqaudioError(f"{folder} has no validation recordings of speaker {speaker!r} "
                           f"(0_{speaker}_0.wav … 9_{speaker}_4.wav)")
    return files


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def fmt(v: float, digits: int) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def table(systems: list[System], corpus: str, n_files: int) -> str:
    digits = corpus == "digits"
    lines = ["| system | kb/s | PESQ-nb | STOI | mel distance | SI-SNR (dB) | DNSMOS SIG | BAK | OVRL |"
             + (" digits recognised |" if digits else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if digits else "")]
    for s in systems:
        kbps = f"{s.kbps:.3g}" + (" (PCM)" if s.reference else "")
        if s.run is None or s.error:
            lines.append(f"| {s.name} | {kbps} | not run | | | | | | |" + (" |" if digits else ""))
            continue
        sc = s.scores[corpus]
        if s.reference:
            cells = ["–"] * 4
        else:
            pesq, stoi = fmt(mean(sc["pesq"]), 2), fmt(mean(sc["stoi"]), 3)
            if len(sc["pesq"]) < n_files:
                pesq += f" ({len(sc['pesq'])}/{n_files})"
            if len(sc["stoi"]) < n_files:
                stoi += f" ({len(sc['stoi'])}/{n_files})"
            cells = [pesq, stoi, fmt(mean(sc["mel_distance"]), 3), fmt(mean(sc["si_snr"]), 2)]
        cells += [fmt(mean(sc[k]), 2) for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")]
        if digits:
            cells.append(fmt(100 * mean(sc["digits"]), 0) + " %")
        lines.append(f"| {s.name} | {kbps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_lines(systems: list[System], corpus: str) -> list[str]:
    """The vqaudio row a user gets for a bitrate budget (most levels within it) against the
    baseline at that budget."""
    by_name = {s.name: s for s in systems if s.run is not None and not s.error}
    ours = [s for s in systems if s.name.startswith("vqaudio") and s.name in by_name]
    metrics = ("pesq", "mel_distance", "dnsmos_ovrl") + (("digits",) if corpus == "digits" else ())
    out = []
    for budget, base_name in ((2.4, "Codec2 2400"), (OPUS_KBPS, f"Opus {OPUS_KBPS}k")):
        fit = [s for s in ours if s.kbps <= budget + 1e-9]
        base = by_name.get(base_name)
        if not fit or base is None:
            out.append(f"- <= {budget:g} kb/s vs {base_name}: cannot compare "
                       f"({'no vqaudio level fits' if not fit else base_name + ' was not run'})")
            continue
        s = fit[-1]
        parts = []
        for m in metrics:
            a, b = mean(s.scores[corpus][m]), mean(base.scores[corpus][m])
            better = a > b if m != "mel_distance" else a < b
            parts.append(f"{m} {a:.3f} vs {b:.3f} ({'better' if better else 'NOT better'})")
        out.append(f"- {s.name} ({s.kbps:.3g} kb/s) vs {base_name}: " + "; ".join(parts))
    return out


def score(s: System, corpus: str, path: Path, ref: np.ndarray, max_lag: int) -> None:
    """Run one system on one recording and append its scores."""
    from vqaudio.listeners import DIGIT_WORDS, digit_label, dnsmos, recognise_digit
    from vqaudio.metrics import is_value, quality_report

    est, lag = align(ref, s.run(ref), max_lag)
    sc = s.scores[corpus]
    if not s.reference:
        s.lags.append(lag)
        for k, v in quality_report(ref, est, SAMPLE_RATE).items():
            if not is_value(v):
                continue  # "n/a: ...": e.g. less than 384 ms of speech for STOI, not a score
            sc[k].append(v)
    for k, v in dnsmos(est, SAMPLE_RATE).items():
        sc[f"dnsmos_{k}"].append(v)
    if corpus == "digits":
        digit, word = digit_label(path), recognise_digit(est, SAMPLE_RATE)
        s.heard.append((digit, word))
        sc["digits"].append(float(word == DIGIT_WORDS[digit]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder or training run folder (default: the pretrained model)")
    p.add_argument("--speech", type=Path, default=REPO / "data" / "speech",
                   help="read-speech folder (default data/speech)")
    p.add_argument("--speech-regex", default=SPEECH_REGEX,
                   help=f"validation file names in --speech (default {SPEECH_REGEX!r})")
    p.add_argument("--max-files", type=int, default=MAX_FILES,
                   help=f"score N validation sentences, evenly spread (default {MAX_FILES}; 0 = all)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "fsdd", help="FSDD folder")
    p.add_argument("--speaker", default=SPEAKER,
                   help=f"FSDD speaker whose validation digits (indices 0-4) are scored "
                        f"(default {SPEAKER})")
    p.add_argument("--all-digits", action="store_true",
                   help="score all of the speaker's digit recordings (500 in FSDD), not only indices "
                        "0-4: only for a speaker held out of the model's training")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--levels", default="", help="comma-separated level counts to score (default all)")
    p.add_argument("--no-baselines", action="store_true",
                   help="score the model alone (no original, Codec2, Opus rows): for ablations")
    args = p.parse_args(argv)

    import torch

    from vqaudio.audio_io import read_audio
    from vqaudio.codec import load_codec
    from vqaudio.errors import VqaudioError
    from vqaudio.listeners import check_available, confusion_table

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Not enough STFT frames", category=RuntimeWarning)
    started = time.perf_counter()
    try:
        check_available()
        codec = load_codec(args.model)
        if not args.speech.is_dir():
            raise VqaudioError(f"{args.speech}: no such folder; pass --speech with the read-speech "
                               "corpus (data/speech)")
        corpora = {"sentences": sentence_files(args.speech, args.speech_regex, args.max_files),
                   "digits": digit_files(args.data, args.speaker, args.all_digits)}
    except VqaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    max_lag = round(MAX_LAG_MS * SAMPLE_RATE / 1000)
    opus_bits: list[int] = []
    seconds = {c: 0.0 for c in CORPORA}
    with tempfile.TemporaryDirectory(prefix="codec_quality_") as tmpdir:
        levels = [int(n) for n in args.levels.split(",") if n.strip()] or None
        systems = build_systems(codec, Path(tmpdir), opus_bits, levels, not args.no_baselines)
        for s in systems:
            if s.missing:
                print(f"warning: {s.name} skipped: {s.missing}", file=sys.stderr)
        print(f"scoring {len(corpora['sentences'])} sentences from {args.speech} and "
              f"{len(corpora['digits'])} digits of {args.speaker} with model {codec.path}",
              file=sys.stderr)
        for corpus, files in corpora.items():
            for i, f in enumerate(files):
                ref, _ = read_audio(f, SAMPLE_RATE)
                ref = ref.astype(np.float64)
                seconds[corpus] += ref.size / SAMPLE_RATE
                for s in systems:
                    if s.run is None or s.error:
                        continue
                    t0 = time.perf_counter()
                    try:
                        score(s, corpus, f, ref, max_lag)
                    except Exception as e:  # a broken tool: report it, keep scoring the others
                        s.error = f"{f.name}: {type(e).__name__}: {e}"
                        print(f"warning: {s.name} failed and is left out: {s.error}", file=sys.stderr)
                        continue
                    s.seconds += time.perf_counter() - t0
                if (i + 1) % 10 == 0 or i + 1 == len(files):
                    print(f"  {corpus}: {i + 1}/{len(files)} files, "
                          f"{time.perf_counter() - started:.0f} s", file=sys.stderr)

    for s in systems:
        if s.lags:
            lags = np.array(s.lags)
            s.note = (f"lag removed by align: median {np.median(lags) / SAMPLE_RATE * 1000:.1f} ms "
                      f"(min {lags.min() / SAMPLE_RATE * 1000:.1f}, max {lags.max() / SAMPLE_RATE * 1000:.1f})")
    n_s, n_d = len(corpora["sentences"]), len(corpora["digits"])
    print(f"Codec quality, model {codec.path} (id {codec.config.get('model_id')}); "
          f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{datetime.date.today()}, {time.perf_counter() - started:.0f} s in all\n")
    print(f"Sentences: {n_s} validation files of {args.speech} ({seconds['sentences']:.0f} s of "
          f"speech, 8 kHz)\n")
    print(table(systems, "sentences", n_s))
    print(f"\nDigits: the {n_d} FSDD validation recordings of {args.speaker} "
          f"({seconds['digits']:.0f} s, 8 kHz)\n")
    print(table(systems, "digits", n_d))
    print("\nDigits heard as said, per word (PocketSphinx, the ten digit words):\n")
    print(confusion_table([(s.name, s.heard) for s in systems if s.heard and not s.error]))
    print()
    if opus_bits:
        total = seconds["sentences"] + seconds["digits"]
        print(f"Opus payload bitrate (audio packets, no Ogg overhead): "
              f"{sum(opus_bits) / total / 1000:.2f} kb/s measured for the nominal {OPUS_KBPS} kb/s")
    for s in systems:
        if s.missing or s.error:
            print(f"{s.name}: not run: {s.missing or s.error}")
        elif s.note:
            print(f"{s.name}: {s.note}; {s.seconds:.0f} s to code and score")
        else:
            print(f"{s.name}: {s.seconds:.0f} s to score")
    for corpus in CORPORA:
        print(f"\nGoals on the {corpus} (the most vqaudio levels within the budget vs the baseline):")
        print("\n".join(goal_lines(systems, corpus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
