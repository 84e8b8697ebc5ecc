"""Reference codecs through their command-line tools: Codec2 and Opus, at 8 kHz.

One implementation for everything that compares vqaudio with them (``bench/codec_quality.py``
and ``vqaudio eval --report``):

* Codec2 (Debian package ``codec2``): ``c2enc MODE in.raw out.bit`` and ``c2dec MODE out.bit
  out.raw``, raw 16-bit 8 kHz mono in and out.
* Opus (Debian package ``opus-tools``): ``opusenc --bitrate KBPS in.wav out.opus`` (the
  encoder's default VBR) and ``opusdec --rate 8000 out.opus out.wav``.

A system is a function from a float signal at 8 kHz to the decoded one (``(T,) -> (T',)``:
Codec2 delays and pads its output, so compare through ``align``). ``missing`` says in one line
which tools are not installed and how to install them.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

SAMPLE_RATE = 8000  # Codec2 codes 8 kHz only; Opus is run at the same rate for the comparison
MAX_LAG_MS = 40.0  # the largest codec delay ``align`` looks for
TOOLS = {"codec2": ("c2enc", "c2dec"), "opus-tools": ("opusenc", "opusdec")}  # Debian package -> tools

System = Callable[[np.ndarray], np.ndarray]


def missing(package: str) -> str:
    """Why ``package``'s tools (``TOOLS``) cannot run, or "" when they all are on PATH."""
    absent = [t for t in TOOLS[package] if shutil.which(t) is None]
    if not absent:
        return ""
    return f"{' and '.join(absent)} not found; install the Debian package: apt-get install -y {package}"


def to_int16(wav: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32768), -32768, 32767).astype("<i2")


def _run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {r.returncode}: {r.stderr.strip()[-500:]}")


def codec2_system(mode: int, tmp: Path) -> System:
    """Codec2 at ``mode`` bits/s (e.g. 2400, 1300); its files live in the folder ``tmp``."""
    def run(wav: np.ndarray) -> np.ndarray:
        raw, bit, dec = tmp / "c2_in.raw", tmp / "c2.bit", tmp / "c2_out.raw"
        to_int16(wav).tofile(raw)
        _run(["c2enc", str(mode), str(raw), str(bit)])
        _run(["c2dec", str(mode), str(bit), str(dec)])
        return np.fromfile(dec, dtype="<i2").astype(np.float64) / 32768
    return run


def opus_system(kbps: float, tmp: Path, payload_bits: list[int] | None = None) -> System:
    """Opus at ``kbps`` (nominal, VBR); each file's audio payload in bits is appended to
    ``payload_bits`` when given (see ``ogg_audio_payload_bytes``)."""
    def run(wav: np.ndarray) -> np.ndarray:
        src, enc, dec = tmp / "opus_in.wav", tmp / "opus.opus", tmp / "opus_out.wav"
        sf.write(src, to_int16(wav), SAMPLE_RATE, subtype="PCM_16")
        _run(["opusenc", "--quiet", "--bitrate", f"{kbps:g}", str(src), str(enc)])
        _run(["opusdec", "--quiet", "--rate", str(SAMPLE_RATE), str(enc), str(dec)])
        if payload_bits is not None:
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


def align(ref: np.ndarray, est: np.ndarray, max_lag: int) -> tuple[np.ndarray, int]:
    """``est`` shifted by the lag in [-max_lag, max_lag] that maximizes the cross-correlation
    sum_n est[n + lag] * ref[n], then trimmed or zero-padded at the end to ``len(ref)``.

    Returns (aligned, lag); a positive lag means ``est`` was late (a codec delay)."""
    ref = np.asarray(ref, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if est.size == 0 or ref.size == 0:
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
