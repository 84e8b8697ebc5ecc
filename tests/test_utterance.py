"""Ending a drawn clip with its first utterance (vqaudio/utterance.py): where the rule says a
clip ends, what it keeps, and that a draw stopped there equals the full draw cut afterwards."""

import numpy as np
import pytest
import torch

from vqaudio.priors.sampling import Controls
from vqaudio.priors.wavenet import WaveNetPrior
from vqaudio.utterance import UtteranceEnds

# Two levels of 3 codes in 2-D: code 0 of each level is the silence frame's; code 1 lies 10
# away from it at level 0, code 2 at 1 (a tenth of a word's distance: quiet).
VECTORS = [np.array([[0.0, 0.0], [10.0, 0.0], [1.0, 0.0]], np.float32),
           np.array([[0.0, 0.0], [0.0, 0.5], [0.0, 0.2]], np.float32)]
SILENCE = np.array([0, 0])


def frames_of(*runs: tuple[int, int]) -> np.ndarray:
    """(T, 2) codes: (level-0 code, how many frames) runs; level 1 follows level 0."""
    return np.concatenate([np.full((n, 2), code) for code, n in runs])


def follow(rows: np.ndarray, quiet: int = 4, loud: int = 3) -> UtteranceEnds:
    ends = UtteranceEnds(VECTORS, SILENCE, len(rows), quiet_frames=quiet, loud_frames=loud)
    for t in range(rows.shape[1]):
        ends.update(rows[:, t])
    return ends


def test_a_clip_ends_after_its_first_utterance_and_the_quiet_that_closes_it():
    word_word = frames_of((0, 2), (1, 5), (2, 4), (1, 5), (0, 4))  # a second word after 4 quiet frames
    short_gap = frames_of((0, 2), (1, 5), (0, 3), (1, 5), (0, 5))  # 3 quiet frames: one utterance
    click = frames_of((1, 2), (0, 6), (1, 4), (0, 4), (0, 4))  # a 2-frame click does not count
    endless = frames_of((0, 2), (1, 18))
    rows = np.stack([word_word, short_gap, click, endless])
    ends = follow(rows)
    assert ends.ended.tolist() == [11, 19, 16, -1]
    cut = ends.cut(rows)
    assert (cut[0, 11:] == SILENCE).all() and np.array_equal(cut[0, :11], rows[0, :11])  # the second word is gone
    assert np.array_equal(cut[1], rows[1]) and np.array_equal(cut[3], rows[3])  # nothing after, or no end
    assert np.array_equal(cut[2, :16], rows[2, :16]) and (cut[2, 16:] == SILENCE).all()
    assert (rows[0, 11:] != SILENCE).any()  # cut made a copy


def test_quiet_is_relative_to_the_clips_loudest_frame_so_far():
    """Code 2 (distance 1.02) is loud in a clip that has been no louder, quiet after code 1 (10.01)."""
    soft_then_loud = frames_of((2, 5), (0, 4), (1, 3), (0, 4))
    ends = follow(soft_then_loud[None], quiet=4, loud=3)
    assert ends.ended.tolist() == [9]  # the soft utterance ends first
    loud_then_soft = frames_of((1, 5), (2, 6))
    ends = follow(loud_then_soft[None], quiet=4, loud=3)
    assert ends.ended.tolist() == [9]  # after a loud word, code 2 is quiet


def test_update_says_when_every_clip_has_ended():
    rows = np.stack([frames_of((1, 3), (0, 9)), frames_of((0, 4), (1, 3), (0, 5))])
    ends = UtteranceEnds(VECTORS, SILENCE, 2, quiet_frames=4, loud_frames=3)
    said = [ends.update(rows[:, t]) for t in range(12)]
    assert said.index(True) == 10 and ends.ended.tolist() == [7, 11]
    with pytest.raises(ValueError, match="quiet_frames"):
        UtteranceEnds(VECTORS, SILENCE, 1, quiet_frames=0, loud_frames=1)


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_a_draw_stopped_when_every_clip_has_ended_equals_the_full_draw_cut(frame_stack):
    """``generate(until=...)`` stops once ``until`` says so; the frames it drew are the full
    draw's (the rule is causal), so cutting either gives the same codes."""
    torch.manual_seed(0)
    prior = WaveNetPrior(3, levels=2, channels=16, cycles=1, layers_per_cycle=3, frame_stack=frame_stack).eval()
    with torch.no_grad():  # silence (code 0) far more likely than a word, so clips end early
        for head in prior.heads:
            head[-1].weight.zero_()
            head[-1].bias.copy_(torch.tensor([2.5, 0.0, -1.0]))
    controls = Controls(seed=3)
    full = prior.generate(4, 200, controls).numpy()
    ends_full = UtteranceEnds(VECTORS, SILENCE, 4, quiet_frames=6, loud_frames=2)
    for t in range(200):
        ends_full.update(full[:, t])
    ends = UtteranceEnds(VECTORS, SILENCE, 4, quiet_frames=6, loud_frames=2)
    heard = []
    stopped = prior.generate(4, 200, controls, until=ends.update, progress=heard.append).numpy()
    assert heard[-1] == 200  # the progress bar ends full: the frames not drawn are decided
    assert (ends.ended >= 0).all() and ends.t < 200  # the draw stopped early
    assert not stopped[:, ends.t:].any()  # frames not drawn are left 0
    np.testing.assert_array_equal(ends.ended, ends_full.ended)
    np.testing.assert_array_equal(ends.cut(stopped), ends_full.cut(full))
    np.testing.assert_array_equal(stopped[:, : ends.t], full[:, : ends.t])
