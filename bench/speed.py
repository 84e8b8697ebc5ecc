"""Resynthesis speed and memory of a vqaudio model on the CPU.

Run by hand (not a test):

    python bench/speed.py --model runs/speech
    python bench/speed.py --model /tmp/runs/smoke --seconds 10 --hours 0.01 --runs 3

Two measurements, printed as one markdown table:

(a) Throughput: ``Codec.resynth(wav, levels)`` (the library's chunked processing: 10-s chunks
    with 0.5 s of context on each side) on a ``--seconds`` signal made by concatenating FSDD
    recordings, with ``torch.set_num_threads(--threads)``, for 1 level and all levels. The model
    is loaded and warmed up first and not timed; the table gives the median of ``--runs``
    runs as a real-time factor (seconds of audio per second of compute).
(b) Peak memory: the ``vqaudio resynth`` command line on a ``--hours`` long 8 kHz WAV (FSDD
    recordings repeated, written in blocks so this script stays small), run in a fresh Python
    wrapper process that reports ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the peak
    resident memory of the CLI process, its only child. Also its wall time (process start,
    imports and model load included), the resulting real-time factor, and its CPU time (user +
    system, all threads; less sensitive than wall time to other processes on the machine). A
    ``--short-seconds`` input and ``python -c 'import torch'`` are run the same way, to show
    how much of the peak is the fixed cost of Python, torch and the model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent

# Runs a command and prints {"rc", "wall_s", "cpu_s", "maxrss_kb", "stdout", "stderr"} as JSON; its
# only child is the command, so RUSAGE_CHILDREN's ru_maxrss is the command's peak RSS (KiB).
WRAPPER = r"""
import json, resource, subprocess, sys, time
cmd = json.loads(sys.argv[1])
t0 = time.perf_counter()
r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t0
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": r.returncode, "wall_s": wall, "cpu_s": u.ru_utime + u.ru_stime,
                  "maxrss_kb": u.ru_maxrss,
                  "stdout": r.stdout[-4000:], "stderr": r.stderr[-4000:]}))
"""


def fsdd_files(data: Path) -> list[Path]:
    from vqaudio.audio_io import list_audio_files

    return list_audio_files([data])


def concat_speech(files: list[Path], seconds: float, rate: int) -> np.ndarray:
    """``seconds`` of audio: the files (at ``rate``) end to end, cycling if needed."""
    from vqaudio.audio_io import read_audio

    need, pieces, have, i = round(seconds * rate), [], 0, 0
    while have < need:
        wav, _ = read_audio(files[i % len(files)], rate)
        pieces.append(wav)
        have += wav.size
        i += 1
    return np.concatenate(pieces)[:need]


def write_long_wav(path: Path, files: list[Path], seconds: float, rate: int) -> float:
    """Write ``seconds`` of FSDD recordings, repeated, to a 16-bit WAV one file at a time."""
    from vqaudio.audio_io import read_audio

    need, have, i = round(seconds * rate), 0, 0
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV") as f:
        while have < need:
            wav, _ = read_audio(files[i % len(files)], rate)
            wav = wav[: need - have]
            f.write(wav)
            have += wav.size
            i += 1
    return have / rate


def throughput(codec, wav: np.ndarray, levels: int, runs: int) -> list[float]:
    codec.resynth(wav[: codec.sample_rate * 2], levels)  # warm-up (allocator, kernels)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        codec.resynth(wav, levels)
        times.append(time.perf_counter() - t0)
    return times


def run_cli(src: Path, dst: Path, model: str | None, levels: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "vqaudio", "resynth", str(src), "-o", str(dst),
           "--levels", str(levels), "--json"]
    if model is not None:
        cmd += ["--model", str(model)]
    out = run_wrapped(cmd, threads)
    out["result"] = json.loads(out["stdout"].strip().splitlines()[-1])
    return out


def run_wrapped(cmd: list[str], threads: int) -> dict:
    """Run ``cmd`` as the only child of a fresh wrapper process; its exit status, wall time
    and peak RSS."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(cmd)], capture_output=True,
                       text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"wrapper failed: {r.stderr.strip()[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if out["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {out['rc']}: {out['stderr'].strip()[-2000:]}")
    out["cmd"] = cmd
    return out


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in avg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="model folder or training run folder (default: the pretrained model)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "fsdd", help="FSDD folder")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seconds", type=float, default=60.0,
                   help="length of the throughput signal (default 60)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per setting (default 5)")
    p.add_argument("--hours", type=float, default=1.0,
                   help="length of the memory test input (default 1 hour; 0 skips it)")
    p.add_argument("--short-seconds", type=float, default=10.0,
                   help="length of the short CLI input for comparison (default 10; 0 skips it)")
    p.add_argument("--levels", type=int, default=0,
                   help="quantizer levels for the CLI runs (default: all)")
    p.add_argument("--tmpdir", type=Path, default=None,
                   help="where the temporary WAV files go (default: the system's temp folder)")
    args = p.parse_args(argv)

    import torch

    from vqaudio.codec import load_codec
    from vqaudio.errors import VqaudioError

    torch.set_num_threads(args.threads)
    try:
        codec = load_codec(args.model)
        files = fsdd_files(args.data)
    except VqaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    rate, top = codec.sample_rate, codec.max_levels
    cli_levels = args.levels or top
    rows = []

    # (a) throughput of Codec.resynth
    wav = concat_speech(files, args.seconds, rate)
    for levels in sorted({1, top}):
        print(f"timing Codec.resynth on {args.seconds:g} s, {levels} level(s), "
              f"{args.runs} runs ...", file=sys.stderr)
        times = throughput(codec, wav, levels, args.runs)
        med = statistics.median(times)
        rows.append([f"`Codec.resynth`, in process (median of {args.runs}; "
                     f"min {min(times):.2f} s, max {max(times):.2f} s)",
                     f"{args.seconds:g} s", f"{levels} ({codec.bitrate(levels) / 1000:.3g} kb/s)",
                     f"{med:.2f} s", f"{args.seconds / med:.0f}x", "-"])

    # (b) peak memory and wall time of the CLI, and of importing torch alone for comparison
    r = run_wrapped([sys.executable, "-c", "import torch"], args.threads)
    rows.append(["`python -c 'import torch'` alone, fresh process (the fixed cost)", "-", "-",
                 f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU", "-",
                 f"{r['maxrss_kb'] / 1024:.0f} MiB"])
    cli_cmds = []
    with tempfile.TemporaryDirectory(prefix="vqaudio_speed_", dir=args.tmpdir) as tmp:
        for seconds in [s for s in (args.short_seconds, args.hours * 3600) if s > 0]:
            src, dst = Path(tmp) / "input.wav", Path(tmp) / "output.wav"
            print(f"writing a {seconds:g}-s input WAV ...", file=sys.stderr)
            seconds = write_long_wav(src, files, seconds, rate)
            print(f"running vqaudio resynth on it ({cli_levels} levels) ...", file=sys.stderr)
            r = run_cli(src, dst, args.model, cli_levels, args.threads)
            out_frames, in_frames = sf.info(str(dst)).frames, sf.info(str(src)).frames
            if out_frames != in_frames:
                print(f"warning: output has {out_frames} samples, input {in_frames}", file=sys.stderr)
            cli_cmds.append(" ".join(str(c) for c in r["cmd"]))
            label = f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"
            rows.append([f"`vqaudio resynth` CLI, fresh process (wall time incl. start-up and "
                         f"model load; output SI-SNR {r['result']['si_snr_db']:.2f} dB)",
                         label, f"{cli_levels} ({codec.bitrate(cli_levels) / 1000:.3g} kb/s)",
                         f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU",
                         f"{seconds / r['wall_s']:.0f}x",
                         f"{r['maxrss_kb'] / 1024:.0f} MiB"])
            src.unlink()
            dst.unlink()

    print(f"Resynthesis speed and memory: model {codec.path} (id {codec.config.get('model_id')}); "
          f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, {platform.processor() or 'CPU'}; {datetime.date.today()}; "
          f"load average (1, 5, 15 min) {_load(load_before)} at the start, "
          f"{_load(os.getloadavg())} at the end (other busy processes slow every number)\n")
    print("| measurement | input | levels | time | real-time factor | peak RSS |")
    print("|---|---|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if cli_cmds:
        print("\nCLI runs (OMP_NUM_THREADS=%d, peak RSS = ru_maxrss of the CLI process):" % args.threads)
        for c in cli_cmds:
            print(f"    {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
