import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqaudio.errors import VqaudioError
from vqaudio.priors.pixelcnn import GatedPixelCNN
from vqaudio.priors.sampling import Controls, reference_sample

H = W = 7
K = 16


def random_head(model: GatedPixelCNN) -> GatedPixelCNN:
    # The zero-initialised head makes every logit 0 and would hide any leak.
    torch.nn.init.normal_(model.head[-1].weight)
    torch.nn.init.normal_(model.head[-1].bias)
    return model.eval()


def prior(kernel=3, num_labels=0, layers=4, seed=0, null_label=False) -> GatedPixelCNN:
    torch.manual_seed(seed)
    return random_head(GatedPixelCNN(K, channels=16, layers=layers, kernel=kernel, num_labels=num_labels,
                                     null_label=null_label))


def flat_logits(model, codes, labels=None):
    with torch.no_grad():
        return model(codes, labels).reshape(len(codes), H * W, K)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("i", [0, 1, 6, 7, 8, 24, 41, 47, 48])
def test_logits_depend_only_on_earlier_positions(kernel, i):
    model = prior(kernel)
    codes = torch.randint(K, (2, H, W))
    changed = codes.clone().view(2, -1)
    changed[:, i:] = (changed[:, i:] + torch.randint(1, K, changed[:, i:].shape)) % K  # all differ
    before, after = flat_logits(model, codes), flat_logits(model, changed.view(2, H, W))
    assert_close(after[:, : i + 1], before[:, : i + 1])  # positions <= i unmoved
    if i < H * W - 1:
        assert not torch.allclose(after[:, i + 1:], before[:, i + 1:])  # so the test can fail


@pytest.mark.parametrize("r, c, dc", [(1, 0, 1), (1, 5, 1), (3, 3, 1), (6, 5, 1), (1, 0, 2), (4, 2, 4)])
def test_no_blind_spot_up_right_is_seen(r, c, dc):
    # Stacked masked convs see (r-1, c+1) but never (r-1, c+2) or further right: the blind
    # spot (arXiv:1606.05328 §2.2). The vertical stack widens by kernel // 2 per layer instead.
    model = prior(kernel=3, layers=4)
    codes = torch.randint(K, (1, H, W))
    changed = codes.clone()
    changed[0, r - 1, c + dc] = (codes[0, r - 1, c + dc] + 1) % K
    with torch.no_grad():
        assert not torch.allclose(model(codes)[0, r, c], model(changed)[0, r, c])


def test_first_row_and_column_see_the_right_context():
    model = prior()
    codes = torch.randint(K, (1, H, W))
    with torch.no_grad():
        base = model(codes)
        # Position (0, 0) sees nothing: its logits are the same for every grid.
        assert_close(model(torch.randint(K, (1, H, W)))[0, 0, 0], base[0, 0, 0])
        # (0, c) sees the first row up to c - 1; (r, 0) sees all rows above, up to the far right.
        left = codes.clone()
        left[0, 0, 2] = (left[0, 0, 2] + 1) % K
        assert not torch.allclose(model(left)[0, 0, 3], base[0, 0, 3])
        assert_close(model(left)[0, 0, 2], base[0, 0, 2])
        above = codes.clone()
        above[0, 2, 4] = (above[0, 2, 4] + 1) % K
        assert not torch.allclose(model(above)[0, 3, 0], base[0, 3, 0])
        assert_close(model(above)[0, 2, :4], base[0, 2, :4])


def test_every_position_sees_exactly_the_positions_before_it():
    # Default depth (8 layers, kernel 3) covers the whole 7x7 grid: changing the code at j
    # moves the logits at every position after j and at none up to j.
    # Float64: the far corners' influence at init is ~1e-6, too near float32 rounding.
    torch.manual_seed(0)
    model = random_head(GatedPixelCNN(K, channels=16)).double()
    codes = torch.randint(K, (1, H, W))
    changed = codes.repeat(H * W, 1, 1).view(H * W, H * W)
    changed.diagonal().add_(1).remainder_(K)  # grid j differs from codes at position j only
    base = flat_logits(model, codes)[0]  # (N, K)
    moved = (flat_logits(model, changed.view(-1, H, W)) - base).abs().amax(-1) > 1e-12  # (j, i)
    assert torch.equal(moved, torch.ones(H * W, H * W, dtype=torch.bool).triu(1))


def test_labels_condition_every_position_and_keep_causality():
    model = prior(num_labels=10)
    codes = torch.randint(K, (2, H, W))
    a, b = torch.tensor([1, 2]), torch.tensor([3, 4])
    with torch.no_grad():
        la, lb = model(codes, a), model(codes, b)
    assert not torch.isclose(la, lb).all(-1).any()  # every position moves with the label
    changed = codes.clone().view(2, -1)
    changed[:, 20:] = (changed[:, 20:] + 1) % K
    after = flat_logits(model, changed.view(2, H, W), a)
    assert_close(after[:, :21], flat_logits(model, codes, a)[:, :21])


def test_label_errors():
    conditional, plain = prior(num_labels=10), prior()
    with pytest.raises(VqaudioError, match="class-conditional"):
        conditional.sample(2)
    with pytest.raises(VqaudioError, match="out of range"):
        conditional.sample(2, labels=10)
    with pytest.raises(VqaudioError, match="without labels"):
        plain.sample(2, labels=1)


def test_loss_at_init_is_log_k():
    model = GatedPixelCNN(K, channels=16, layers=2)
    codes = torch.randint(K, (4, H, W))
    loss = F.cross_entropy(model(codes).reshape(-1, K), codes.reshape(-1))
    assert_close(loss, torch.tensor(math.log(K)))


def test_overfits_one_batch():
    torch.manual_seed(0)
    model = GatedPixelCNN(K, channels=32, layers=5)
    codes = torch.randint(K, (8, H, W))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(codes).reshape(-1, K), codes.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # From log 16 = 2.77 towards the floor log(8) / 49 = 0.042: only (0, 0) has no context
    # to tell the 8 grids apart by (about 0.046 after 150 steps).
    assert loss.item() < 0.2, loss.item()


@pytest.mark.parametrize("num_labels", [0, 10])
def test_sampling_is_seeded_and_equals_the_reference_loop(num_labels):
    model = prior(num_labels=num_labels)
    labels = torch.arange(6) if num_labels else None
    draw = lambda seed, **kw: model.sample(6, (H, W), Controls(seed=seed, **kw), labels)  # noqa: E731
    first = draw(1)
    assert first.shape == (6, H, W) and first.dtype == torch.long
    assert torch.equal(draw(1), first)
    assert not torch.equal(draw(2), first)
    # The row-cached loop makes the same draws as the plain full-recompute loop.
    for kw in ({}, {"top_k": 3}, {"top_p": 0.8, "temperature": 0.7}):
        ref = reference_sample(lambda c: model(c, labels), (H, W), 6, Controls(seed=3, **kw))
        assert torch.equal(draw(3, **kw), ref)


def test_guided_sampling_equals_the_reference_loop_on_guided_logits():
    """Classifier-free guidance: the row-cached loop, running every grid with its label and
    with the null label (label 10), draws what the full-recompute loop draws from the logits
    u + g (c - u); g = 1 is plain conditioning, and other g change the draws."""
    model = prior(num_labels=10, null_label=True)
    with torch.no_grad():  # a null label as different from the others as they are from each other
        torch.nn.init.normal_(model.layers[0].cond.weight)
    labels, null = torch.arange(6), torch.full((6,), 10)
    plain = model.sample(6, (H, W), Controls(seed=3), labels)
    assert torch.equal(model.sample(6, (H, W), Controls(seed=3, guidance=1.0), labels), plain)
    for g in (0.0, 2.5):
        guided_logits = lambda c: model(c, null) + g * (model(c, labels) - model(c, null))  # noqa: E731
        ref = reference_sample(guided_logits, (H, W), 6, Controls(seed=3))
        drawn = model.sample(6, (H, W), Controls(seed=3, guidance=g), labels)
        assert torch.equal(drawn, ref) and not torch.equal(drawn, plain)


def test_guidance_needs_a_prior_with_a_null_label():
    with pytest.raises(VqaudioError, match="trained without prior.label_dropout"):
        prior(num_labels=10).sample(2, (H, W), Controls(guidance=2.0), torch.arange(2))
    with pytest.raises(VqaudioError, match="--guidance needs a label-conditioned prior"):
        prior().sample(2, (H, W), Controls(guidance=2.0))


def test_temperature_zero_is_greedy():
    model = prior()
    codes = torch.zeros(3, H, W, dtype=torch.long)
    with torch.no_grad():
        for i in range(H * W):
            codes.view(3, -1)[:, i] = model(codes).reshape(3, H * W, K)[:, i].argmax(-1)
    assert torch.equal(model.sample(3, (H, W), Controls(temperature=0, seed=5)), codes)


def test_sampling_64_grids_is_fast():
    import time

    model = GatedPixelCNN(512, channels=64, layers=8)
    start = time.perf_counter()
    codes = model.sample(64, (H, W), Controls(seed=0))
    assert codes.shape == (64, H, W)
    assert time.perf_counter() - start < 10  # about 1 s on one thread; 7x that without row caching
