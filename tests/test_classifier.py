"""The code classifier and best-of-N sampling (vqaudio sample --candidates): the classifier
learns, its embeddings start from the code vectors, the candidates are the plain draws of
their seeds, and each clip keeps the candidate the classifier finds most likely its label."""

import pytest
import torch
import torch.nn.functional as F

from vqaudio.errors import VqaudioError
from vqaudio.generate import draw_codes
from vqaudio.priors.classifier import CodeClassifier
from vqaudio.priors.sampling import CANDIDATE_SEED_STRIDE, Controls, candidate_seeds, pick_clearest
from vqaudio.priors.wavenet import WaveNetPrior


def labelled_prior() -> WaveNetPrior:
    torch.manual_seed(1)
    prior = WaveNetPrior(24, levels=2, channels=16, cycles=2, layers_per_cycle=3, num_labels=4, null_label=True)
    with torch.no_grad():  # a zero head would make every draw uniform
        for head in prior.heads:
            torch.nn.init.normal_(head[-1].weight, std=0.5)
        for layer in prior.layers:
            torch.nn.init.normal_(layer.label.weight)
    return prior.eval()


def test_classifier_learns_which_code_a_sequence_holds_and_every_weight_trains():
    """Label = which of four 'word' codes (1-4) appears somewhere in a sequence of silence
    code 0: position and length must not matter (max and mean over time)."""
    torch.manual_seed(0)
    model = CodeClassifier(num_codes=8, levels=2, num_labels=4, channels=16, layers=2)

    def batch(n, frames):
        codes = torch.zeros(n, frames, 2, dtype=torch.long)
        labels = torch.randint(4, (n,))
        start = torch.randint(frames - 3, (n,))
        for i in range(n):
            codes[i, start[i]: start[i] + 3, 0] = labels[i] + 1
        return codes, labels

    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(150):
        codes, labels = batch(32, 20)
        loss = F.cross_entropy(model(codes), labels)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
    codes, labels = batch(200, 37)  # longer than in training
    assert (model(codes).argmax(-1) == labels).float().mean() > 0.95
    with pytest.raises(ValueError, match=r"codes must be \(B, T, 2\)"):
        model(codes[..., :1])


def test_classifier_embeddings_start_from_the_code_vectors():
    model = CodeClassifier(num_codes=8, levels=2, num_labels=3, channels=4, layers=1)
    books = [torch.randn(8, 4), torch.randn(8, 4)]
    model.embed_codebooks(books)
    for level, v in enumerate(books):
        rows = model.embed.weight[level * 8:(level + 1) * 8]
        torch.testing.assert_close(rows, v / v.square().mean().sqrt())
    wide = CodeClassifier(num_codes=8, levels=2, num_labels=3, channels=16, layers=1)
    wide.embed_codebooks([torch.randn(8, 4)] * 2)  # projected: D 4 -> 16 channels
    assert wide.embed.weight.square().mean().item() == pytest.approx(1.0, rel=1e-5)


def test_pick_clearest_takes_each_clips_most_likely_candidate_first_on_ties():
    codes = torch.arange(6).view(6, 1)  # 3 candidates x 2 clips, candidate-major
    log_probs = torch.log(torch.tensor([[0.2, 0.8], [0.5, 0.5],   # candidate 0 of clips 0, 1
                                        [0.9, 0.1], [0.5, 0.5],   # candidate 1
                                        [0.1, 0.9], [0.3, 0.7]]))  # candidate 2
    assert pick_clearest(codes, log_probs, torch.tensor([0, 1]), 3).flatten().tolist() == [2, 5]
    assert pick_clearest(codes, log_probs, torch.tensor([1, 0]), 3).flatten().tolist() == [4, 1]  # tie: the first


def test_best_of_n_keeps_the_candidate_the_classifier_finds_most_likely():
    """Candidates are the plain draws of seeds s + i + j·1,000,003 (candidate 0 = the plain
    draw); each clip keeps the one with the highest log p(its label) under the classifier;
    1 candidate is the plain draw; without labels or without a classifier it is refused."""
    prior, labels = labelled_prior(), torch.tensor([0, 3, 1])
    torch.manual_seed(2)
    classifier = CodeClassifier(num_codes=24, levels=2, num_labels=4, channels=8, layers=2).eval()
    assert candidate_seeds(5, 3, 2) == [5, 6, 7, 5 + CANDIDATE_SEED_STRIDE, 6 + CANDIDATE_SEED_STRIDE,
                                        7 + CANDIDATE_SEED_STRIDE]
    plain = prior.generate(3, 20, Controls(seed=5), labels)
    assert torch.equal(draw_codes(prior, 3, 20, Controls(seed=5, candidates=1), labels, classifier), plain)
    cands = [prior.generate(3, 20, Controls(seed=5 + j * CANDIDATE_SEED_STRIDE), labels) for j in range(4)]
    assert torch.equal(cands[0], plain) and not torch.equal(cands[1], plain)
    with torch.no_grad():
        scores = torch.stack([classifier(c).log_softmax(-1)[torch.arange(3), labels] for c in cands])  # (4, 3)
    expected = torch.stack([cands[int(j)][i] for i, j in enumerate(scores.argmax(0))])
    best = draw_codes(prior, 3, 20, Controls(seed=5, candidates=4), labels, classifier)
    assert torch.equal(best, expected)
    assert scores.argmax(0).tolist() != [0, 0, 0]  # the test picks some other candidate
    with pytest.raises(VqaudioError, match="needs the code classifier"):
        draw_codes(prior, 3, 20, Controls(candidates=2), labels, None)
    unlabelled = WaveNetPrior(24, levels=2, channels=8, cycles=1, layers_per_cycle=2)
    with pytest.raises(VqaudioError, match="needs a label-conditioned prior"):
        draw_codes(unlabelled, 2, 10, Controls(candidates=2), None, classifier)
    with pytest.raises(VqaudioError, match="--candidates must be 1 or more"):
        Controls(candidates=0).check()


def test_classifier_stage_needs_labels_and_an_audio_recipe(tmp_path):
    from pathlib import Path

    from vqaudio.config import Recipe, load_recipe
    from vqaudio.stages import audio_classifier_stage
    from vqaudio.train import train_recipe

    with pytest.raises(VqaudioError, match="prior has none: set prior.conditional = true"):
        audio_classifier_stage(Recipe(), tmp_path)  # Recipe(): an unconditional prior
    image = load_recipe(Path(__file__).parents[1] / "recipes" / "kmnist_smoke.toml")
    with pytest.raises(VqaudioError, match="serves audio recipes only"):
        train_recipe(image, tmp_path / "run", stage="classifier")
    assert not (tmp_path / "run").exists()
