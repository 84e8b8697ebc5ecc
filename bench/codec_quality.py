"""Speech quality of vqaudio against Codec2 and Opus on the FSDD validation recordings.

Run by hand (not a test):

    python bench/codec_quality.py --model runs/speech            # all 250 validation files
    python bench/codec_quality.py --model /tmp/runs/smoke --limit 10

Systems:

* vqaudio at every quantizer level count of the model (1 .. levels), bitrate from
  ``codec.bitrate(levels)``; the reconstruction is clipped to [-1, 1] and rounded to 16 bits,
  as the CLI writes it.
* Codec2 (Debian package ``codec2``): ``c2enc MODE in.raw out.bit`` and ``c2dec MODE out.bit
  out.raw`` at modes 2400 and 1300, raw 16-bit 8 kHz mono in and out.
* Opus (Debian package ``opus-tools``): ``opusenc --bitrate 6 in.wav out.opus`` (the encoder's
  default VBR) and ``opusdec --rate 8000 out.opus out.wav``.

A system whose tools are missing is reported and skipped; the others are still scored.

Every decoded signal goes through the same ``align`` routine before scoring: the lag that
maximizes the cross-correlation with the reference within +-40 ms is removed (Codec2 delays
its output), then the signal is trimmed or zero-padded to the reference's length. Scores are
``vqaudio.metrics.quality_report`` (PESQ-nb, STOI, mel distance, SI-SNR) at 8 kHz, averaged
over files. PESQ and STOI are averaged over the files they can score, and the table says how
many when that is not all: pystoi cannot score recordings with less than 384 ms of speech
(over half of FSDD's validation files), see ``STOI_UNDEFINED``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 8000  # Codec2 and the FSDD recordings are 8 kHz; everything is scored at 8 kHz
VAL_REGEX = r"_[0-4]\.wav$"
MAX_LAG_MS = 40.0
CODEC2_MODES = (2400, 1300)
OPUS_KBPS = 6
METRICS = ("pesq", "stoi", "mel_distance", "si_snr")
# pystoi returns exactly 1e-5 (with a RuntimeWarning) when fewer than 30 frames of 384 ms
# remain after removing silent frames of the reference: over half of the FSDD validation
# files are that short. Such values are left out of the mean (the table says how many files
# were scored); the set depends on the reference only, so it is the same for every system.
STOI_UNDEFINED = 1e-5


# -- alignment ------------------------------------------------------------------------------

def align(ref: np.ndarray, est: np.ndarray, max_lag: int) -> tuple[np.ndarray, int]:
    """``est`` shifted by the lag in [-max_lag, max_lag] that maximizes the cross-correlation
    sum_n est[n + lag] * ref[n], then trimmed or zero-padded at the end to ``len(ref)``.

    Returns (aligned, lag); a positive lag means ``est`` was late (a codec delay)."""
    ref = np.asarray(ref, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if est.size == 0:
        return np.zeros_like(ref), 0
    n = 1 << math.ceil(math.log2(ref.size + est.size))
    # corr[k] = sum_n est[n + k] ref[n]; negative k wrap around to the end of the buffer.
    corr = np.fft.irfft(np.fft.rfft(est, n) * np.conj(np.fft.rfft(ref, n)), n)
    lags = np.arange(-max_lag, max_lag + 1)
    lag = int(lags[np.argmax(corr[lags % n])])
    shifted = est[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag), est])
    out = np.zeros_like(ref)
    m = min(ref.size, shifted.size)
    out[:m] = shifted[:m]
    return out, lag


# -- systems --------------------------------------------------------------------------------

def to_int16(wav: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32768), -32768, 32767).astype("<i2")


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}: {r.stderr.strip()[-500:]}")


def codec2_system(mode: int, tmp: Path) -> Callable[[np.ndarray], np.ndarray]:
    def run(wav: np.ndarray) -> np.ndarray:
        raw, bit, dec = tmp / "c2_in.raw", tmp / "c2.bit", tmp / "c2_out.raw"
        to_int16(wav).tofile(raw)
        _run(["c2enc", str(mode), str(raw), str(bit)])
        _run(["c2dec", str(mode), str(bit), str(dec)])
        return np.fromfile(dec, dtype="<i2").astype(np.float64) / 32768
    return run


def opus_system(kbps: float, tmp: Path, payload_bits: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    def run(wav: np.ndarray) -> np.ndarray:
        src, enc, dec = tmp / "opus_in.wav", tmp / "opus.opus", tmp / "opus_out.wav"
        sf.write(src, to_int16(wav), SAMPLE_RATE, subtype="PCM_16")
        _run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", str(src), str(enc)])
        _run(["opusdec", "--quiet", "--rate", str(SAMPLE_RATE), str(enc), str(dec)])
        payload_bits.append(8 * ogg_audio_payload_bytes(enc.read_bytes()))
        out, rate = sf.read(dec, dtype="float64", always_2d=True)
        if rate != SAMPLE_RATE:
            raise RuntimeError(f"opusdec wrote {rate} Hz, expected {SAMPLE_RATE}")
        return out.mean(axis=1)
    return run


def ogg_audio_payload_bytes(data: bytes) -> int:
    """Bytes of Opus audio packets in an Ogg Opus file: all packet data except the two header
    packets (OpusHead, OpusTags), without Ogg page overhead."""
    pos, packets, current = 0, [], 0
    while pos + 27 <= len(data):
        if data[pos:pos + 4] != b"OggS":
            raise ValueError("not an Ogg stream")
        nseg = data[pos + 26]
        lacing = data[pos + 27: pos + 27 + nseg]
        for v in lacing:
            current += v
            if v < 255:  # a packet ends here
                packets.append(current)
                current = 0
        pos += 27 + nseg + sum(lacing)
    return sum(packets[2:])


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
    scores: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    lags: list[int] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    note: str = ""


def build_systems(codec, tmp: Path, opus_bits: list[int]) -> list[System]:
    systems = [System(f"vqaudio {n} level{'s' if n > 1 else ''}", codec.bitrate(n) / 1000,
                      vqaudio_system(codec, n)) for n in range(1, codec.max_levels + 1)]
    missing = [t for t in ("c2enc", "c2dec") if shutil.which(t) is None]
    for mode in CODEC2_MODES:
        why = (f"{' and '.join(missing)} not found; install the Debian package: "
               "apt-get install -y codec2") if missing else ""
        systems.append(System(f"Codec2 {mode}", mode / 1000,
                              None if why else codec2_system(mode, tmp), missing=why))
    missing = [t for t in ("opusenc", "opusdec") if shutil.which(t) is None]
    why = (f"{' and '.join(missing)} not found; install the Debian package: "
           "apt-get install -y opus-tools") if missing else ""
    systems.append(System(f"Opus {OPUS_KBPS}k", OPUS_KBPS,
                          None if why else opus_system(OPUS_KBPS, tmp, opus_bits), missing=why))
    return systems


# -- main -----------------------------------------------------------------------------------

def validation_files(data: Path, val_regex: str, limit: int) -> list[Path]:
    from vqaudio.audio_io import list_audio_files
    from vqaudio.data.audio import split_files

    _, val = split_files(list_audio_files([data]), val_regex, 0.1)
    if limit and limit < len(val):
        # Evenly spread over the sorted list, so a small limit still covers digits and speakers.
        val = [val[int(i * len(val) / limit)] for i in range(limit)]
    return val


def mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def fmt(v: float, digits: int) -> str:
    return "n/a" if v != v else f"{v:.{digits}f}"


def table(systems: list[System], n_files: int) -> str:
    lines = ["| system | bitrate (kb/s) | PESQ-nb | STOI | mel distance | SI-SNR (dB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for s in systems:
        if s.run is None or s.error:
            lines.append(f"| {s.name} | {s.kbps:.3g} | not run | | | |")
            continue
        pesq, stoi = fmt(mean(s.scores["pesq"]), 2), fmt(mean(s.scores["stoi"]), 3)
        if len(s.scores["pesq"]) < n_files:
            pesq += f" ({len(s.scores['pesq'])}/{n_files} files)"
        if len(s.scores["stoi"]) < n_files:
            stoi += f" ({len(s.scores['stoi'])}/{n_files} files)"
        lines.append(f"| {s.name} | {s.kbps:.3g} | {pesq} | {stoi} | "
                     f"{fmt(mean(s.scores['mel_distance']), 3)} | {fmt(mean(s.scores['si_snr']), 2)} |")
    return "\n".join(lines)


def goal_lines(systems: list[System]) -> list[str]:
    """The vqaudio row a user gets for a bitrate budget (most levels within it) against the
    baseline at that budget."""
    by_name = {s.name: s for s in systems if s.run is not None and not s.error}
    ours = [s for s in systems if s.name.startswith("vqaudio") and s.name in by_name]
    out = []
    for budget, base_name, metrics in ((2.4, "Codec2 2400", ("pesq", "mel_distance")),
                                       (OPUS_KBPS, f"Opus {OPUS_KBPS}k", ("pesq", "mel_distance"))):
        fit = [s for s in ours if s.kbps <= budget + 1e-9]
        base = by_name.get(base_name)
        if not fit or base is None:
            out.append(f"- <= {budget:g} kb/s vs {base_name}: cannot compare "
                       f"({'no vqaudio level fits' if not fit else base_name + ' was not run'})")
            continue
        s = fit[-1]
        parts = []
        for m in metrics:
            a, b = mean(s.scores[m]), mean(base.scores[m])
            better = a > b if m != "mel_distance" else a < b
            parts.append(f"{m} {a:.3f} vs {b:.3f} ({'better' if better else 'NOT better'})")
        out.append(f"- {s.name} ({s.kbps:.3g} kb/s) vs {base_name}: " + "; ".join(parts))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder or training run folder (default: the pretrained model)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "fsdd", help="FSDD folder")
    p.add_argument("--val-regex", default=VAL_REGEX,
                   help=f"validation file names (default {VAL_REGEX!r}: FSDD's own test split)")
    p.add_argument("--limit", type=int, default=0,
                   help="score only N validation files, evenly spread (0 = all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)

    import torch

    from vqaudio.audio_io import read_audio
    from vqaudio.codec import load_codec
    from vqaudio.errors import VqaudioError
    from vqaudio.metrics import quality_report

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Not enough STFT frames", category=RuntimeWarning)
    try:
        codec = load_codec(args.model)
        files = validation_files(args.data, args.val_regex, args.limit)
    except VqaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    max_lag = round(MAX_LAG_MS * SAMPLE_RATE / 1000)
    opus_bits: list[int] = []
    seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="codec_quality_") as tmpdir:
        systems = build_systems(codec, Path(tmpdir), opus_bits)
        for s in systems:
            if s.missing:
                print(f"warning: {s.name} skipped: {s.missing}", file=sys.stderr)
        print(f"scoring {len(files)} files from {args.data} with model {codec.path}", file=sys.stderr)
        for i, f in enumerate(files):
            ref, _ = read_audio(f, SAMPLE_RATE)
            ref = ref.astype(np.float64)
            seconds += ref.size / SAMPLE_RATE
            for s in systems:
                if s.run is None or s.error:
                    continue
                t0 = time.perf_counter()
                try:
                    est = s.run(ref)
                except Exception as e:  # a broken tool: report it, keep scoring the others
                    s.error = f"{f.name}: {type(e).__name__}: {e}"
                    print(f"warning: {s.name} failed and is left out: {s.error}", file=sys.stderr)
                    continue
                s.seconds += time.perf_counter() - t0
                est, lag = align(ref, est, max_lag)
                s.lags.append(lag)
                for k, v in quality_report(ref, est, SAMPLE_RATE).items():
                    if k == "stoi" and v <= STOI_UNDEFINED:
                        continue  # pystoi's "too short to score" value, not a score
                    s.scores[k].append(v)
            if (i + 1) % 25 == 0 or i + 1 == len(files):
                print(f"  {i + 1}/{len(files)} files", file=sys.stderr)

    for s in systems:
        if s.lags:
            lags = np.array(s.lags)
            s.note = (f"lag removed by align: median {np.median(lags) / SAMPLE_RATE * 1000:.1f} ms "
                      f"(min {lags.min() / SAMPLE_RATE * 1000:.1f}, max {lags.max() / SAMPLE_RATE * 1000:.1f})")
    print(f"Codec quality on {len(files)} FSDD validation files ({seconds:.0f} s of speech, "
          f"8 kHz), model {codec.path} (id {codec.config.get('model_id')}); "
          f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
          f"{datetime.date.today()}\n")
    print(table(systems, len(files)))
    print()
    if opus_bits:
        print(f"Opus payload bitrate (audio packets, no Ogg overhead): "
              f"{sum(opus_bits) / seconds / 1000:.2f} kb/s measured for the nominal {OPUS_KBPS} kb/s")
    for s in systems:
        if s.missing or s.error:
            print(f"{s.name}: not run: {s.missing or s.error}")
        elif s.note:
            print(f"{s.name}: {s.note}")
    print("\nGoals (the most vqaudio levels within the budget vs the baseline):")
    print("\n".join(goal_lines(systems)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
