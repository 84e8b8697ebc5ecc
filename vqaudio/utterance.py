"""Where a drawn clip's first utterance ends, read from its codes as they are drawn.

A digit prior learns from crops of about a second (``prior.sequence_frames``): one word in
its silence. Asked for 2 s it often starts again after the word, and about one clip in five
says a second word or a burst of babble (bench/RESULTS.md, twenty-first session).
``vqaudio sample --end-silence S`` ends each clip with its first utterance: once S seconds
of quiet follow it, the rest of the clip is the codec's silence.

A frame is loud when its latent (the sum of its levels' code vectors) lies farther from the
silence frame's latent than ``LOUD_SHARE`` of the farthest any frame of the clip has been so
far. Running maxima make the rule causal: whether a clip has ended at frame t depends on
frames ≤ t only, so the draw can stop once every clip has ended, and the codes are the same
as those of a full draw cut afterwards.
"""

from __future__ import annotations

import numpy as np

# A frame at least this share of the clip's loudest latent distance so far is loud. On the
# pretrained prior's samples the end found this way lies a median 5 frames (40 ms) after the
# decoded waveform's last frame within 35 dB of its peak, and never 12 frames before it.
LOUD_SHARE = 0.3
# An utterance needs this many loud frames (0.1 s at 125 frames/s) before quiet can end it:
# the codec's few-frame clicks in silence are not words.
MIN_LOUD_SECONDS = 0.1


class UtteranceEnds:
    """Follows ``rows`` clips frame by frame (``update``); ``ended[b]`` is the first frame of
    clip b after its first utterance and the quiet that closed it (or -1 while it has not ended),
    and ``cut`` replaces every frame from there on with the silence codes."""

    def __init__(self, code_vectors: list[np.ndarray], silence: np.ndarray, rows: int,
                 quiet_frames: int, loud_frames: int):
        if quiet_frames < 1:
            raise ValueError(f"quiet_frames must be 1 or more, got {quiet_frames}")
        self.silence = np.asarray(silence)
        # each level's code vectors less the silence frame's: a frame's latent minus the
        # silence latent is then the sum of its rows
        self.vectors = [v - v[s] for v, s in zip(code_vectors, self.silence)]
        self.quiet_frames, self.loud_frames = quiet_frames, loud_frames
        self.peak = np.zeros(rows, np.float32)
        self.loud = np.zeros(rows, np.int64)  # loud frames so far
        self.quiet = np.zeros(rows, np.int64)  # quiet frames in a row, up to now
        self.ended = np.full(rows, -1, np.int64)
        self.t = 0

    def update(self, frame: np.ndarray) -> bool:
        """``frame`` (rows, L) int codes of frame t; True once every clip has ended."""
        distance = np.linalg.norm(sum(v[codes] for v, codes in zip(self.vectors, frame.T)), axis=1)
        np.maximum(self.peak, distance, out=self.peak)
        loud = (distance > LOUD_SHARE * self.peak) & (distance > 0)
        self.loud += loud
        self.quiet = np.where(loud, 0, self.quiet + 1)
        done = (self.ended < 0) & (self.loud >= self.loud_frames) & (self.quiet >= self.quiet_frames)
        self.ended[done] = self.t + 1
        self.t += 1
        return bool((self.ended >= 0).all())

    def cut(self, codes: np.ndarray) -> np.ndarray:
        """``codes`` (rows, T, L) with every frame from each clip's end on set to the silence
        codes (a copy)."""
        out = np.array(codes, copy=True)
        for row, end in zip(out, self.ended):
            if end >= 0:
                row[end:] = self.silence[: row.shape[1]]
        return out


def utterance_ends(codec, rows: int, seconds: float) -> UtteranceEnds:
    """An ``UtteranceEnds`` for ``rows`` clips of ``codec``'s codes that end after ``seconds`` of quiet."""
    fps = codec.config["frames_per_second"]
    return UtteranceEnds(codec.code_vectors, codec.silence_codes, rows,
                         quiet_frames=max(1, round(seconds * fps)), loud_frames=max(1, round(MIN_LOUD_SECONDS * fps)))
