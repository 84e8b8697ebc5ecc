"""Reading and writing audio files: soundfile for I/O, soxr for resampling, float32 mono.

Every failure a user can cause (a wrong path, a damaged or non-audio file, a missing output
folder) becomes one ``VqaudioError`` line naming the file, what is wrong and what to do.

Formats: anything libsndfile reads. The libsndfile bundled with soundfile here is 1.2.2, which
reads and writes MP3 (MP3 support arrived in libsndfile 1.1.0), so ``.mp3`` works without
ffmpeg. Resampling uses soxr at "HQ" quality, the library (and the quality) behind
``librosa.resample``'s default; it is installed with librosa. Its streaming mode makes
``read_audio_blocks`` give exactly the samples ``read_audio`` gives, with no clicks at block
edges.
"""

from __future__ import annotations

import numbers
import os
import struct
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr

from vqaudio.atomic import atomic_path, check_output_path
from vqaudio.errors import VqaudioError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

_RESAMPLE_QUALITY = "HQ"  # = librosa.resample(res_type="soxr_hq"), librosa's default
_READ_FRAMES = 1 << 16  # file frames per read in read_audio_blocks: bounds memory


def read_audio(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``path`` to mono float32 and, when ``sample_rate`` is given and differs from the
    file's rate, resample it.

    Returns ``(wav, rate)``: ``wav`` of shape ``(T,)`` (channels averaged), ``rate`` the rate
    of ``wav`` (``sample_rate`` when given, else the file's). Resampling gives
    ``round(T_file * sample_rate / file_rate)`` samples.

    Raises ``VqaudioError`` for a missing path, a folder, a file that is not audio or is
    damaged or truncated, a file with no samples, and NaN/Inf samples.
    """
    path = _check_file(path)
    _check_rate(sample_rate)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError) as e:
        raise _unreadable(path, e) from e
    wav = _mono(data, path)
    if wav.size == 0:
        raise VqaudioError(f"{path} has no samples (an empty or truncated file); remove it or export it again")
    if sample_rate is not None and sample_rate != rate:
        wav = resample(wav, rate, sample_rate)
        rate = int(sample_rate)
    return wav, int(rate)


def resample(wav: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 ``wav`` at ``rate`` resampled to ``target`` (soxr, HQ): float32,
    ``round(len(wav) * target / rate)`` samples."""
    return soxr.resample(wav, rate, target, quality=_RESAMPLE_QUALITY).astype(np.float32, copy=False)


def audio_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(frames, sample_rate, channels)`` of an audio file, read from its header without
    decoding it. For MP3 the frame count can be an estimate. Same errors as ``read_audio``,
    except that an empty file reports 0 frames instead of raising."""
    path = _check_file(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError) as e:
        raise _unreadable(path, e) from e
    return int(info.frames), int(info.samplerate), int(info.channels)


def read_audio_blocks(
    path: str | os.PathLike,
    block_frames: int,
    overlap_frames: int = 0,
    sample_rate: int | None = None,
) -> Iterator[np.ndarray]:
    """Stream a file of any length as mono float32 blocks, in memory bounded by the block size.

    ``block_frames`` and ``overlap_frames`` count samples at the output rate (``sample_rate``
    when given, else the file's). Block k starts at sample ``k * (block_frames -
    overlap_frames)`` and holds ``block_frames`` samples, except the last, which may be
    shorter; consecutive blocks share ``overlap_frames`` samples, and the last block always
    holds at least one sample not in the one before. So the whole signal is
    ``blocks[0]`` followed by ``blocks[k][overlap_frames:]`` for k >= 1.

    Resampling is done once over the whole stream (soxr keeps its filter state between reads),
    not block by block, so the samples equal ``read_audio(path, sample_rate)[0]`` and there
    are no clicks at block edges. Callers that process blocks independently (a model with a
    receptive field) should still overlap them and cross-fade or discard the edges.
    """
    path = _check_file(path)
    _check_rate(sample_rate)
    if not (isinstance(block_frames, numbers.Integral) and isinstance(overlap_frames, numbers.Integral)) or not (
        0 <= overlap_frames < block_frames
    ):
        raise VqaudioError(
            f"blocks need 0 <= overlap_frames < block_frames, got block_frames={block_frames}, "
            f"overlap_frames={overlap_frames}"
        )
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError) as e:
        raise _unreadable(path, e) from e
    # Errors above are raised at the call; the generator below raises while iterating.
    return _blocks(f, path, int(block_frames), int(overlap_frames), None if sample_rate is None else int(sample_rate))


def _blocks(
    f: sf.SoundFile, path: Path, block_frames: int, overlap_frames: int, sample_rate: int | None
) -> Iterator[np.ndarray]:
    hop = block_frames - overlap_frames
    with f:
        stream = None
        if sample_rate is not None and sample_rate != f.samplerate:
            stream = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality=_RESAMPLE_QUALITY)
        buf = np.zeros(0, dtype=np.float32)  # output samples not yet emitted (incl. overlap)
        emitted = False
        while True:
            try:
                data = f.read(_READ_FRAMES, dtype="float32", always_2d=True)  # (<=_READ_FRAMES, C)
            except (sf.SoundFileError, RuntimeError) as e:
                raise _unreadable(path, e) from e
            done = len(data) == 0
            chunk = _mono(data, path)
            if stream is not None:
                chunk = stream.resample_chunk(chunk, last=done)  # last=True flushes the filter
            buf = np.concatenate([buf, chunk])
            while len(buf) >= block_frames:
                yield buf[:block_frames].copy()
                emitted = True
                buf = buf[hop:]
            if done:
                break
        # After a yield, buf starts with overlap_frames samples the previous block already holds.
        if len(buf) > (overlap_frames if emitted else 0):
            yield buf.copy()
        elif not emitted:
            raise VqaudioError(f"{path} has no samples (an empty or truncated file); remove it or export it again")


def write_audio(path: str | os.PathLike, wav, sample_rate: int) -> None:
    """Write ``wav`` as a 16-bit PCM WAV file, atomically: the target either keeps its old
    content or gets the whole new file, never a partial one.

    ``wav``: a numpy array or torch tensor of shape ``(T,)`` or ``(C, T)`` (leading axes of
    size 1 are dropped, so ``(1, 1, T)`` works); values are clipped to [-1, 1].
    """
    path = Path(path)
    if path.suffix.lower() != ".wav":
        raise VqaudioError(f"cannot write {path}: audio is written as 16-bit WAV, so name the file *.wav")
    _check_rate(sample_rate)
    if sample_rate is None:
        raise VqaudioError(f"cannot write {path}: a sample rate is required")
    if hasattr(wav, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    while wav.ndim > 1 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.ndim not in (1, 2) or wav.shape[-1] == 0:
        raise VqaudioError(f"cannot write {path}: expected a waveform of shape (T,) or (C, T), got {wav.shape}")
    if not np.isfinite(wav).all():
        raise VqaudioError(f"refusing to write {path}: the waveform contains NaN or Inf samples")
    data = np.clip(wav, -1.0, 1.0)
    if data.ndim == 2:
        data = data.T  # (C, T) -> (T, C), soundfile's layout
    check_output_path(path)
    try:
        with atomic_path(path) as tmp:
            sf.write(str(tmp), data, int(sample_rate), subtype="PCM_16", format="WAV")
    except OSError as e:
        raise VqaudioError(f"cannot write {path}: {e.strerror or e}; check the folder is writable") from e
    except (sf.SoundFileError, RuntimeError) as e:
        raise VqaudioError(f"cannot write {path}: {_reason(e)}") from e


def list_audio_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Audio files (by extension, any case) under each folder in ``paths``, recursively, plus
    any files named directly (kept whatever their extension). Hidden files and folders (names
    starting with ".", such as macOS "._x.wav" files or unfinished atomic writes) are skipped
    in folders. Returns sorted paths without duplicates.

    Raises ``VqaudioError`` if a path does not exist or nothing is found.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise VqaudioError("no audio paths given; pass one or more files or folders")
    found: dict[Path, Path] = {}  # resolved -> as given, so a file reached twice is kept once
    for root in paths:
        if root.is_file():
            found.setdefault(root.resolve(), root)
        elif root.is_dir():
            for p in root.rglob("*"):
                rel = p.relative_to(root).parts
                if p.suffix.lower() in AUDIO_EXTENSIONS and not any(s.startswith(".") for s in rel) and p.is_file():
                    found.setdefault(p.resolve(), p)
        else:
            raise VqaudioError(f"audio path {root} does not exist; check the path")
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise VqaudioError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {where}; "
                           "put audio files there or check the path")
    return sorted(found.values(), key=str)


# --- helpers -------------------------------------------------------------------------------


def _check_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise VqaudioError(f"audio file {path} does not exist; check the path")
    if path.is_dir():
        raise VqaudioError(f"{path} is a folder, not an audio file; name a file inside it")
    if path.is_file() and path.stat().st_size == 0:
        raise VqaudioError(f"{path} is empty (0 bytes); export or copy it again")
    truncated = _wav_truncation(path)
    if truncated:
        raise VqaudioError(f"{path} is a truncated WAV file ({truncated}); export or copy it again")
    return path


def _check_rate(sample_rate: int | None) -> None:
    if sample_rate is None:
        return
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral) or sample_rate <= 0:
        raise VqaudioError(f"sample rate must be a positive integer in Hz, got {sample_rate!r}")


def _mono(data: np.ndarray, path: Path) -> np.ndarray:
    """(T, C) -> (T,) by averaging channels; refuse NaN/Inf, which would poison training."""
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wav).all():
        raise VqaudioError(f"{path} contains NaN or Inf samples; fix or remove the file")
    return np.ascontiguousarray(wav, dtype=np.float32)


def _reason(e: Exception) -> str:
    reason = getattr(e, "error_string", None) or str(e)
    return " ".join(reason.split()).rstrip(".")  # one line


def _unreadable(path: Path, e: Exception) -> VqaudioError:
    return VqaudioError(
        f"cannot read {path} as audio ({_reason(e)}); check it is an undamaged "
        f"{'/'.join(AUDIO_EXTENSIONS)} file"
    )


def _wav_truncation(path: Path) -> str | None:
    """For a RIFF/WAVE file, compare the data size its header declares with the bytes present.

    libsndfile silently reads whatever is there, so a half-copied WAV would otherwise load as
    a shorter sound. Streaming writers that never patched the header (size 0 or 0xFFFFFFFF)
    are not flagged. Returns a short description, or None when the file looks whole.
    """
    if path.suffix.lower() != ".wav":
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None  # not RIFF (RF64, or not a WAV at all): soundfile will judge it
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None  # no data chunk: soundfile reports that itself
                cid, n = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    present = size - f.tell()
                    if n not in (0, 0xFFFFFFFF) and n > present:
                        return f"header declares {n} bytes of samples, {present} present"
                    return None
                f.seek(n + (n & 1), os.SEEK_CUR)  # chunks are padded to even sizes
    except OSError:
        return None  # unreadable for other reasons: let soundfile produce the error
