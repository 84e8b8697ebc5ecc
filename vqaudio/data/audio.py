"""A folder of audio files -> mono, resampled, fixed-length segments (B, 1, T) for training.

For the bundled Free Spoken Digit Dataset (``data/fsdd``, files ``{digit}_{speaker}_{index}``):
``split_files(files, r"_[0-4]\\.wav$", ...)`` reproduces the dataset's own test split (indices
0-4) as validation, and ``label_of(path, r"^(\\d)_")`` gives the spoken digit.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqaudio.audio_io import read_audio
from vqaudio.errors import VqaudioError


def split_files(
    files: Sequence[str | os.PathLike], val_regex: str | None, val_fraction: float
) -> tuple[list[Path], list[Path]]:
    """Split files into ``(train, val)``, deterministically and keeping the input order.

    With ``val_regex``, a file is validation when ``re.search(val_regex, name)`` matches its
    file name (``val_fraction`` is then ignored). Without it, a file is validation when the
    CRC-32 of its name falls in the lowest ``val_fraction`` of the hash range: about that
    fraction of files, and a file's split never changes when others are added or removed.

    Raises ``VqaudioError`` if the regex is invalid or either split is empty.
    """
    files = [Path(f) for f in files]
    if val_regex is not None:
        try:
            pattern = re.compile(val_regex)
        except re.error as e:
            raise VqaudioError(f"val_regex {val_regex!r} is not a valid regular expression: {e}") from e
        is_val = [pattern.search(f.name) is not None for f in files]
        rule = f"val_regex {val_regex!r}"
    else:
        if not 0.0 < val_fraction < 1.0:
            raise VqaudioError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        threshold = val_fraction * 2**32
        is_val = [zlib.crc32(f.name.encode("utf-8")) < threshold for f in files]
        rule = f"val_fraction {val_fraction}"
    train = [f for f, v in zip(files, is_val) if not v]
    val = [f for f, v in zip(files, is_val) if v]
    for name, split in (("training", train), ("validation", val)):
        if not split:
            raise VqaudioError(
                f"the {name} split is empty: {rule} puts {len(val)} of {len(files)} files in validation; "
                f"change val_regex or val_fraction, or add files"
            )
    return train, val


def label_of(path: str | os.PathLike, label_regex: str) -> str:
    """The first group of ``re.search(label_regex, file name)``: for FSDD, ``^(\\d)_`` on
    ``3_theo_2.wav`` gives ``"3"``. Raises ``VqaudioError`` when the name does not match or
    the regex has no group."""
    name = Path(path).name
    try:
        match = re.search(label_regex, name)
    except re.error as e:
        raise VqaudioError(f"label_regex {label_regex!r} is not a valid regular expression: {e}") from e
    if match is None or not match.groups() or match.group(1) is None:
        raise VqaudioError(
            f"cannot take a label from file name {name!r}: label_regex {label_regex!r} must match it "
            f"and capture the label in its first group"
        )
    return match.group(1)


def peak_gain(file_peak: float, target: float) -> float:
    """The gain that brings a file's peak to ``target`` (1 for silence or target 0).

    Recordings differ in level by 20 dB and more (FSDD peaks near 0.05); the model is trained
    and run on peak-normalised audio, so waveform losses weigh every file alike."""
    return target / file_peak if target > 0 and file_peak > 1e-6 else 1.0


class AudioDataset(Dataset):
    """Fixed-length mono segments of audio files, all decoded once and kept in memory.

    ``dataset[i]`` is a ``(1, segment_samples)`` float32 tensor from file i: a uniformly random
    window when ``random_crop`` (drawn from torch's global RNG, so ``torch.manual_seed`` makes
    it reproducible), else the first ``segment_samples`` samples. ``dataset[(i, seed)]`` draws
    the window from ``seed`` instead (training batches, see data/batches.py). Files shorter
    than a segment are zero-padded at the end.

    ``peak`` > 0 scales each file so its largest sample is ``peak`` (see :func:`peak_gain`).

    Attributes: ``files`` (list of Path), ``waveforms`` (list of 1-D float32 tensors at
    ``sample_rate``), ``sample_rate``, ``segment_samples``, ``random_crop``.
    """

    def __init__(
        self, files: Sequence[str | os.PathLike], sample_rate: int, segment_samples: int, random_crop: bool,
        peak: float = 0.0,
    ) -> None:
        if not files:
            raise VqaudioError("the audio dataset has no files; check the data paths and the split")
        if isinstance(segment_samples, bool) or not isinstance(segment_samples, int) or segment_samples <= 0:
            raise VqaudioError(f"segment_samples must be a positive integer, got {segment_samples!r}")
        self.files = [Path(f) for f in files]
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.random_crop = random_crop
        self.waveforms = [torch.from_numpy(read_audio(f, sample_rate)[0]) for f in self.files]
        if peak > 0:  # scale every file to the same peak, as the codec does at inference
            self.waveforms = [w * peak_gain(w.abs().max().item(), peak) for w in self.waveforms]

    def __len__(self) -> int:
        return len(self.waveforms)

    def __getitem__(self, key: int | tuple[int, int]) -> Tensor:
        i, generator = key, None
        if isinstance(key, tuple):
            i, generator = key[0], torch.Generator().manual_seed(key[1])
        wav = self.waveforms[i]  # (T,)
        n = self.segment_samples
        extra = wav.numel() - n
        if extra > 0:
            start = int(torch.randint(0, extra + 1, (), generator=generator)) if self.random_crop else 0
            segment = wav[start : start + n].clone()  # a copy: callers may modify it in place
        else:
            segment = torch.nn.functional.pad(wav, (0, -extra))  # pad the end with zeros
        return segment.unsqueeze(0)  # (1, n)
