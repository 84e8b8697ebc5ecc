"""The prior's data: every audio file encoded once to codes, cached in the run directory.

Each file is padded with ``pad_seconds`` of silence on both sides before encoding, so the
prior learns that utterances start from and end in silence (and sampling can start from
nothing). Training batches are random crops of ``frames`` frames; shorter sequences are
padded with the codes of silence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqaudio.atomic import atomic_path
from vqaudio.audio_io import read_audio, resample
from vqaudio.checkpoint import codes_id
from vqaudio.codec import Codec
from vqaudio.errors import VqaudioError

CACHE_VERSION = 1


@dataclass
class CodeSequences:
    sequences: list[np.ndarray]  # each (T_i, levels) int64
    labels: np.ndarray  # (N,) int64 indices into the label vocabulary (zeros if unlabelled)
    silence: np.ndarray  # (levels,) the codes of a silent frame

    def __len__(self) -> int:
        return len(self.sequences)

    def crop(self, i: int, frames: int, levels: int,
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(codes (frames, levels), mask (frames,) of real frames) of sequence i: from a random
        offset drawn from ``generator`` when given and the sequence is longer, else from its
        start; short sequences are padded with the codes of silence."""
        seq = self.sequences[i][:, :levels]
        start = 0
        if len(seq) > frames and generator is not None:
            start = int(torch.randint(0, len(seq) - frames + 1, (), generator=generator))
        piece = seq[start: start + frames]
        out = np.broadcast_to(self.silence[:levels], (frames, levels)).copy()
        out[: len(piece)] = piece
        mask = np.zeros(frames, dtype=bool)
        mask[: len(piece)] = True
        return torch.from_numpy(out), torch.from_numpy(mask)

    def batch(self, index: list[int], frames: int, levels: int) -> tuple[Tensor, Tensor, Tensor]:
        """(codes (B, frames, levels), labels (B,), mask (B, frames)) from the sequences' starts."""
        crops = [self.crop(i, frames, levels) for i in index]
        return (torch.stack([c for c, _ in crops]), torch.from_numpy(self.labels[index]),
                torch.stack([m for _, m in crops]))

    def whole_batches(self, levels: int, size: int = 64):
        """Every sequence whole, ``size`` at a time: ``batch`` padded to the longest sequence
        (the mask marks the real frames), for validation."""
        longest = max(len(s) for s in self.sequences)
        for start in range(0, len(self), size):
            yield self.batch(list(range(start, min(start + size, len(self)))), longest, levels)

    def all_codes(self, levels: int) -> np.ndarray:
        return np.concatenate([s[:, :levels] for s in self.sequences])


class CodeCrops(Dataset):
    """Training items ``(codes (frames, levels), label, mask)`` by key ``(sequence, crop_seed)``:
    a random crop of each sequence, drawn from the key's seed (see data/batches.py)."""

    def __init__(self, sequences: CodeSequences, frames: int, levels: int):
        self.sequences, self.frames, self.levels = sequences, frames, levels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        i, seed = key
        codes, mask = self.sequences.crop(i, self.frames, self.levels, torch.Generator().manual_seed(seed))
        return codes, torch.tensor(self.sequences.labels[i]), mask




def _key(codec: Codec, files: list[Path], pad_seconds: float, speeds: Sequence[float]) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, codes_id(codec.config), pad_seconds, list(speeds)]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def change_speed(wav: np.ndarray, speed: float, sample_rate: int) -> np.ndarray:
    """``wav`` played ``speed`` times faster: read as if recorded at speed x the rate and
    resampled back, so tempo and pitch scale together (speed perturbation, Ko et al. 2015)."""
    if speed == 1:
        return wav
    return resample(wav, round(sample_rate * speed), sample_rate)


def encode_files(codec: Codec, files: list[Path], labels: list[int], pad_seconds: float,
                 cache: Path | None = None, speeds: Sequence[float] = (1.0,)) -> CodeSequences:
    """Codes of every file at all of the codec's levels, from ``cache`` when it was made
    by the same model from the same files (same paths, sizes and times), else encoded now
    and written there. With ``speeds``, every file once per speed (``change_speed``): the
    sequences are file by file, each file's speeds in order, the labels repeated."""
    key = _key(codec, files, pad_seconds, speeds)
    labels = np.repeat(np.asarray(labels, dtype=np.int64), len(speeds))
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                if str(data["key"]) == key:
                    lengths = data["lengths"]
                    seqs = np.split(data["codes"].astype(np.int64), np.cumsum(lengths)[:-1])
                    return CodeSequences(seqs, labels, data["silence"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is simply rebuilt
    pad = np.zeros(round(pad_seconds * codec.sample_rate), dtype=np.float32)
    seqs = []
    for f in files:
        wav, _ = read_audio(f, codec.sample_rate)
        if wav.size == 0:
            raise VqaudioError(f"{f}: the file has no samples; remove it from the data folder")
        for speed in speeds:
            seqs.append(codec.encode(np.concatenate([pad, change_speed(wav, speed, codec.sample_rate), pad]),
                                     codec.max_levels))
    silence = codec.silence_codes
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, key=np.array(key), lengths=np.array([len(s) for s in seqs]),
                         codes=np.concatenate(seqs).astype(np.int32), silence=silence)
    return CodeSequences(seqs, labels, silence)
