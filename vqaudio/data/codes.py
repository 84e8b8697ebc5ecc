"""The prior's data: every audio file encoded once to codes, cached in the run directory.

Each file is padded with ``pad_seconds`` of silence on both sides before encoding, so the
prior learns that utterances start from and end in silence (and sampling can start from
nothing). Training batches are random crops of ``frames`` frames; shorter sequences are
padded with the codes of silence.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqaudio.atomic import atomic_path
from vqaudio.audio_io import read_audio
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

    def batch(self, index: list[int], frames: int, random_crop: bool,
              levels: int) -> tuple[Tensor, Tensor, Tensor]:
        """(codes (B, frames, levels), labels (B,), mask (B, frames) of real frames). With
        ``random_crop``, long sequences are cropped at offsets from torch's global RNG (saved in
        checkpoints); without, from the start."""
        out = np.broadcast_to(self.silence[:levels], (len(index), frames, levels)).copy()
        mask = np.zeros((len(index), frames), dtype=bool)
        for row, i in enumerate(index):
            seq = self.sequences[i][:, :levels]
            start = 0
            if len(seq) > frames and random_crop:
                start = int(torch.randint(0, len(seq) - frames + 1, ()))
            piece = seq[start: start + frames]
            out[row, : len(piece)] = piece
            mask[row, : len(piece)] = True
        return (torch.from_numpy(out), torch.from_numpy(self.labels[index]), torch.from_numpy(mask))

    def all_codes(self, levels: int) -> np.ndarray:
        return np.concatenate([s[:, :levels] for s in self.sequences])


def silence_codes(codec: Codec) -> np.ndarray:
    """The codes the VQ-VAE gives a silent frame far from any edge (levels,)."""
    frames = codec.encode(np.zeros(codec.hop * 64, dtype=np.float32), codec.max_levels)
    return frames[len(frames) // 2]


def _key(codec: Codec, files: list[Path], pad_seconds: float) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, codec.config["model_id"], pad_seconds]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def encode_files(codec: Codec, files: list[Path], labels: list[int], pad_seconds: float,
                 cache: Path | None = None) -> CodeSequences:
    """Codes of every file at all of the codec's levels, from ``cache`` when it was made
    by the same model from the same files (same paths, sizes and times), else encoded now
    and written there."""
    key = _key(codec, files, pad_seconds)
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                if str(data["key"]) == key:
                    lengths = data["lengths"]
                    seqs = np.split(data["codes"].astype(np.int64), np.cumsum(lengths)[:-1])
                    return CodeSequences(seqs, np.asarray(labels, dtype=np.int64), data["silence"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is simply rebuilt
    pad = np.zeros(round(pad_seconds * codec.sample_rate), dtype=np.float32)
    seqs = []
    for f in files:
        wav, _ = read_audio(f, codec.sample_rate)
        if wav.size == 0:
            raise VqaudioError(f"{f}: the file has no samples; remove it from the data folder")
        seqs.append(codec.encode(np.concatenate([pad, wav, pad]), codec.max_levels))
    silence = silence_codes(codec)
    if cache is not None:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, key=np.array(key), lengths=np.array([len(s) for s in seqs]),
                         codes=np.concatenate(seqs).astype(np.int32), silence=silence)
    return CodeSequences(seqs, np.asarray(labels, dtype=np.int64), silence)
