import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vqaudio.quantizer import ResidualVQ, VectorQuantizer, kmeans


def three_code_vq(kind="ema", **kw):
    vq = VectorQuantizer(dim=2, num_codes=3, kind=kind, **kw)
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 10.0]])
    vq.codebook.data.copy_(codebook)
    if kind == "ema":
        vq.embed_sum.copy_(codebook)  # sums = codebook * sizes (sizes start at one)
    return vq


def test_nearest_codes_on_hand_made_codebook():
    vq = three_code_vq().eval()
    z = torch.tensor([[0.1, 0.2], [0.9, -0.3], [0.2, 7.0], [0.6, 0.0], [-5.0, 0.0]])
    q = vq(z)
    assert q.codes.tolist() == [0, 1, 2, 1, 0]
    assert_close(q.z_q, vq.codebook[q.codes])
    assert q.used.item() == 3


def test_nearest_is_accurate_far_from_origin():
    # Expanded distances lose precision when data sit far from the origin; centring fixes it.
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=8, num_codes=64).eval()
    vq.codebook.copy_(torch.randn(64, 8) + 100.0)
    z = torch.randn(2000, 8) + 100.0
    exact = torch.cdist(z.double(), vq.codebook.double()).argmin(1)
    assert (vq(z).codes == exact).float().mean() > 0.999


@pytest.mark.parametrize("shape", [(4, 5, 6), (2, 3, 4, 6), (7, 6)], ids=["1d", "2d", "global"])
def test_any_leading_shape(shape):
    vq = VectorQuantizer(dim=6, num_codes=16).eval()
    z = torch.randn(shape)
    q = vq(z)
    assert q.z_q.shape == z.shape
    assert q.codes.shape == shape[:-1] and q.codes.dtype == torch.long
    flat = vq(z.reshape(-1, 6)).codes
    assert torch.equal(q.codes.reshape(-1), flat)


@pytest.mark.parametrize("kind", ["ema", "gradient"])
@pytest.mark.parametrize("options", [{}, {"cosine": True}, {"code_dim": 3}], ids=["plain", "cosine", "projected"])
def test_lookup_equals_forward_value(kind, options):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=6, num_codes=16, kind=kind, **options)
    q = vq(torch.randn(3, 5, 6))
    assert_close(vq.lookup(q.codes), q.z_q)


@pytest.mark.parametrize("kind", ["ema", "gradient"])
def test_straight_through_gradient_reaches_input(kind):
    vq = VectorQuantizer(dim=4, num_codes=8, kind=kind)
    z = torch.randn(10, 4, requires_grad=True)
    q = vq(z)
    weights = torch.randn(10, 4)
    (q.z_q * weights).sum().backward()
    # The straight-through estimator copies the output gradient to the input unchanged.
    assert_close(z.grad, weights)


def test_ema_step_equals_formula():
    decay, eps = 0.9, 1e-5
    vq = three_code_vq(decay=decay, eps=eps).train()
    z = torch.tensor([[0.2, 0.0], [0.0, 0.4], [1.2, 0.2], [0.0, 9.0]])
    codes = torch.tensor([0, 0, 1, 2])
    old_sum = vq.embed_sum.clone()
    q = vq(z)
    assert q.codes.tolist() == codes.tolist()
    counts = torch.tensor([2.0, 1.0, 1.0])
    sums = torch.stack([z[:2].sum(0), z[2], z[3]])
    size = decay * torch.ones(3) + (1 - decay) * counts
    embed_sum = decay * old_sum + (1 - decay) * sums
    n = size.sum()
    smoothed = (size + eps) / (n + 3 * eps) * n
    assert_close(vq.cluster_size, size)
    assert_close(vq.embed_sum, embed_sum)
    assert_close(vq.codebook, embed_sum / smoothed[:, None])


def test_ema_loss_is_commitment_only():
    vq = three_code_vq(beta=0.25).eval()
    z = torch.tensor([[0.2, 0.0], [1.0, 1.0]])
    q = vq(z)
    expected = 0.25 * F.mse_loss(z, torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert_close(q.loss, expected)


def test_gradient_kind_moves_codebook_toward_encodings():
    torch.manual_seed(0)
    vq = three_code_vq(kind="gradient")
    target = torch.tensor([[3.0, 0.5]]).repeat(16, 1)  # all nearest to code 1 = (1, 0)
    opt = torch.optim.SGD(vq.parameters(), lr=0.5)
    before = (vq.codebook[1] - target[0]).norm().item()
    for _ in range(20):
        opt.zero_grad()
        vq(target).loss.backward()
        opt.step()
    after = (vq.codebook[1] - target[0]).norm().item()
    assert after < 0.05 * before
    assert_close(vq.codebook[0], torch.tensor([0.0, 0.0]))  # unused codes get no gradient


def test_ema_kind_moves_codebook_toward_encodings():
    vq = three_code_vq(decay=0.5).train()
    target = torch.tensor([[3.0, 0.5]]).repeat(16, 1)
    for _ in range(30):
        vq(target)
    assert_close(vq.codebook[1], target[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["ema", "gradient"])
def test_dead_codes_are_restarted(kind):
    torch.manual_seed(0)
    vq = VectorQuantizer(dim=2, num_codes=16, kind=kind, restart_after=2).train()
    # Every code starts far from the data, so only one code wins at first.
    vq.codebook.data.copy_(torch.randn(16, 2) + 50.0)
    if kind == "ema":
        vq.embed_sum.copy_(vq.codebook)
    data = torch.randn(512, 2) * 3
    first = vq(data).used.item()
    for _ in range(5):
        q = vq(data)
    assert first <= 2
    assert q.used.item() >= 12
    # Restarted codes keep their new position: they sit among the data, not back at 50.
    assert vq.codebook.norm(dim=1).max() < 20


def test_kmeans_init_fits_clusters():
    torch.manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    data = (centres[:, None] + 0.1 * torch.randn(4, 100, 2)).reshape(-1, 2)
    vq = VectorQuantizer(dim=2, num_codes=4, kmeans_init=True, kmeans_iters=20).train()
    assert not vq.initialized
    q = vq(data)
    assert vq.initialized and q.used.item() == 4
    found = vq.codebook[torch.cdist(centres, vq.codebook).argmin(1)]
    assert_close(found, centres, atol=0.1, rtol=0)
    # Running sums stay consistent with the codebook: sums = codebook * sizes.
    assert_close(vq.embed_sum, vq.codebook * vq.cluster_size[:, None], atol=2.0, rtol=0.02)


def test_kmeans_more_codes_than_points():
    centroids, counts = kmeans(torch.randn(3, 2), 8)
    assert centroids.shape == (8, 2) and counts.sum() == 3


def test_cosine_lookup_uses_unit_vectors():
    vq = VectorQuantizer(dim=4, num_codes=8, cosine=True).eval()
    q = vq(torch.randn(20, 4) * 7)
    assert_close(q.z_q.norm(dim=-1), torch.ones(20))


def test_projection_quantizes_in_low_dimension():
    vq = VectorQuantizer(dim=16, num_codes=8, code_dim=4)
    assert vq.codebook.shape == (8, 4)
    z = torch.randn(5, 16, requires_grad=True)
    q = vq(z)
    assert q.z_q.shape == (5, 16)
    q.loss.backward()
    assert vq.project_in.weight.grad is not None and z.grad.abs().sum() > 0


def test_distances_in_float32_under_autocast():
    vq = VectorQuantizer(dim=8, num_codes=32).eval()
    z = torch.randn(4, 10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = vq(z.bfloat16())
    exact = torch.cdist(z.bfloat16().float().reshape(-1, 8), vq.codebook).argmin(1)
    assert torch.equal(q.codes.reshape(-1), exact)
    assert q.z_q.dtype == torch.bfloat16


def test_state_is_in_state_dict():
    vq = VectorQuantizer(dim=4, num_codes=8, restart_after=3, kmeans_init=True)
    keys = set(vq.state_dict())
    assert {"codebook", "cluster_size", "embed_sum", "initialized", "unused_steps"} <= keys


def test_invalid_options():
    with pytest.raises(ValueError, match="kind"):
        VectorQuantizer(4, 8, kind="fancy")
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(4, 1)
    with pytest.raises(ValueError, match="last axis"):
        VectorQuantizer(4, 8)(torch.randn(3, 5))


# -- residual VQ ---------------------------------------------------------------------------

def test_residual_error_falls_with_each_level():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=8, num_codes=16, num_levels=4, kmeans_init=True).train()
    data = torch.randn(2048, 8)
    for _ in range(10):
        rvq(data)
    rvq.eval()
    errors = [F.mse_loss(rvq(data, levels=n).z_q, data).item() for n in range(1, 5)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.6 * errors[0]


def test_residual_codes_have_level_axis_and_lookup_matches():
    rvq = ResidualVQ(dim=6, num_codes=16, num_levels=3).eval()
    z = torch.randn(2, 5, 6)
    q = rvq(z)
    assert q.codes.shape == (2, 5, 3)
    assert_close(rvq.lookup(q.codes), q.z_q)
    q2 = rvq(z, levels=2)
    assert q2.codes.shape == (2, 5, 2)
    assert torch.equal(q2.codes, q.codes[..., :2])
    assert_close(rvq.lookup(q2.codes), q2.z_q)
    assert rvq.bits_per_frame(2) == 8.0


def test_every_residual_level_loss_reaches_encoder():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, num_codes=8, num_levels=3).train()
    z = torch.randn(32, 4, requires_grad=True)
    residual = z
    for level in rvq.levels:
        q = level(residual)
        grad, = torch.autograd.grad(q.loss, z, retain_graph=True)
        assert grad.abs().sum() > 0
        residual = residual - q.z_q.detach()


def test_quantizer_dropout_varies_levels_in_training_only():
    torch.manual_seed(0)
    rvq = ResidualVQ(dim=4, num_codes=8, num_levels=4, dropout=True)
    seen = {rvq(torch.randn(8, 4)).codes.shape[-1] for _ in range(40)}
    assert seen == {1, 2, 3, 4}
    rvq.eval()
    assert rvq(torch.randn(8, 4)).codes.shape[-1] == 4
