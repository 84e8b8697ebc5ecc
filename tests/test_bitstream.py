"""The compact codes file (.vqc) and entropy coding with a prior: exact round trips, sizes
by the formula, and every damaged file refused with one line.

The codec is the shipped pretrained VQ-VAE (real codes of real audio); the entropy prior is a
small randomly initialised WaveNetPrior: exactness needs no trained prior."""

import dataclasses
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from test_cli import ROOT, vqaudio
from vqaudio import bitstream, entropy
from vqaudio.priors import fixed_point
from vqaudio.priors.wavenet import WaveNetPrior

FSDD = ROOT / "data" / "fsdd" / "3_yweweler_7.wav"
SPEECH = ROOT / "data" / "speech" / "librispeech" / "103-1240-0000.flac"


def random_prior(num_codes=512, levels=2, seed=0, frame_stack=1) -> WaveNetPrior:
    """A tiny prior with random (not zero) heads, so its tables are far from uniform."""
    torch.manual_seed(seed)
    prior = WaveNetPrior(num_codes, levels=levels, channels=8, cycles=1, layers_per_cycle=3,
                         frame_stack=frame_stack).eval()
    for head in prior.heads:
        torch.nn.init.normal_(head[-1].weight, std=1.0)
    return prior


def save_entropy_prior(model: Path, seed=0, vqvae_model_id=None, frame_stack=1) -> None:
    """``model/entropy_prior``: a random unconditional prior over ``model/vqvae``'s codes."""
    from vqaudio.build import audio_prior_config
    from vqaudio.checkpoint import read_config, save_model_dir
    from vqaudio.config import from_dict

    config = read_config(model / "vqvae")
    recipe = from_dict(config["recipe"], "config.json")
    recipe = dataclasses.replace(recipe, prior=dataclasses.replace(
        recipe.prior, channels=8, cycles=1, layers_per_cycle=3, conditional=False, frame_stack=frame_stack))
    prior = random_prior(config["num_codes"], recipe.prior.levels, seed, frame_stack)
    if vqvae_model_id:  # a prior of another VQ-VAE's codes (a decoder-only fine-tune names its codes apart)
        config = {**config, "model_id": vqvae_model_id, "codes_id": vqvae_model_id}
    save_model_dir(model / entropy.ENTROPY_PRIOR, prior, audio_prior_config(recipe, config, []))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The pretrained VQ-VAE (linked, not copied) with a random entropy prior beside it."""
    from vqaudio.codec import PRETRAINED

    folder = tmp_path_factory.mktemp("model") / "speech"
    folder.mkdir()
    (folder / "vqvae").symlink_to(PRETRAINED / "vqvae")
    save_entropy_prior(folder)
    return folder


# -- the coder ------------------------------------------------------------------------------------

@pytest.mark.parametrize("levels", [1, 2, 3])  # fewer, as many and more levels than the prior's 2
def test_entropy_round_trip_of_random_codes_is_exact(levels):
    prior = random_prior()
    codes = np.random.default_rng(levels).integers(0, 512, (120, levels))
    codes[0], codes[1] = 0, 511  # the ends of the table
    data = entropy.encode(prior, codes)
    np.testing.assert_array_equal(entropy.decode(prior, data, *codes.shape), codes)


def test_a_stream_ending_in_zero_bits_decodes():
    prior = random_prior()
    codes = np.zeros((60, 3), dtype=np.int64)  # level 3 is flat: code 0 costs nine 0 bits
    data = entropy.encode(prior, codes)
    np.testing.assert_array_equal(entropy.decode(prior, data, 60, 3), codes)


def test_codes_the_prior_expects_cost_fewer_bits_than_flat():
    prior = random_prior()
    codes = prior.generate(1, 200)[0].numpy()  # typical of the prior
    data = entropy.encode(prior, codes)
    np.testing.assert_array_equal(entropy.decode(prior, data, 200, 2), codes)
    assert len(data) * 8 < 0.97 * codes.size * 9


@pytest.mark.parametrize("symbols", [list(range(0, 512, 5)) * 3, [0] * 40 + [1] + [0] * 40],
                         ids=["spread", "mostly_zero_bits"])  # the second ends in zero bytes, dropped
def test_flat_tables_cost_log2_k_bits(symbols):
    enc, k = entropy.ArithmeticEncoder(), 512
    for s in symbols:
        enc.encode(s, s + 1, k)
    data = enc.finish()
    assert len(data) * 8 <= 9 * len(symbols) + 16
    if symbols[0]:
        assert len(data) * 8 >= 9 * len(symbols) - 8
    dec = entropy.ArithmeticDecoder(data)
    assert [dec.decode(np.arange(k + 1)) for _ in symbols] == symbols


@pytest.mark.parametrize("logits", ["uniform", "peaked", "huge"])
def test_frequencies_floor_one_and_a_fixed_total(logits):
    k, one = 512, fixed_point.ONE  # fixed-point logits: integers scaled by 2^12
    x = {"uniform": torch.zeros(k, dtype=torch.float64),
         "peaked": torch.arange(k, dtype=torch.float64) * one / 20,
         "huge": torch.full((k,), -fixed_point.LIMIT, dtype=torch.float64).index_fill(0, torch.tensor([3]), fixed_point.LIMIT)}[logits]
    f = fixed_point.frequencies(x, entropy.TOTAL)
    assert f.sum() == entropy.TOTAL and f.min() >= 1 and f.dtype == np.int64
    if logits == "uniform":
        assert f.max() - f.min() <= k  # 127 each; flooring's leftovers go to code 0
    if logits == "huge":
        assert f[3] == entropy.TOTAL - (k - 1)


def test_fixed_point_linear_is_exact_at_its_bounds_in_any_order():
    """The float64 matmul of fixed-point integers equals the int64 result, whatever the order
    of the sum, at the largest inputs and weights the recipes' prior shape allows (64
    channels, 14 layers, 2 levels: 128 inputs of up to 16 clamped values each)."""
    arith = fixed_point.FixedPoint(WaveNetPrior(512, levels=2, channels=64, cycles=2, layers_per_cycle=7))
    n, lim, wmax = 128, 16 * int(fixed_point.LIMIT), int(fixed_point.MAX_WEIGHT * fixed_point.ONE) - 1
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-lim, lim + 1, (1, n), generator=g)
    w = torch.randint(-wmax, wmax + 1, (n, 6), generator=g)
    x[0, :], w[:, 0] = lim, wmax  # column 0: every product at its largest, all of one sign (2^51)
    b = torch.randint(-2 ** 32, 2 ** 32, (6,), generator=g)
    exact = torch.div(b + x @ w, 1 << fixed_point.FRAC, rounding_mode="floor").clamp(-lim // 16, lim // 16)
    y = arith.linear(b.double().numpy(), x.double().numpy(), w.double().numpy())
    assert torch.equal(torch.from_numpy(y).long(), exact)
    order = torch.randperm(n, generator=g)
    np.testing.assert_array_equal(arith.linear(b.double().numpy(), x[:, order].double().numpy(),
                                               w[order].double().numpy()), y)
    with pytest.raises(ValueError, match="beyond 2\\^53"):  # a shape whose sums could pass 2^53
        fixed_point.FixedPoint(WaveNetPrior(16, levels=3, channels=1024, cycles=1, layers_per_cycle=1))


def test_fixed_point_tables_are_frozen():
    """Changing the lookup tables orphans every entropy-coded file: bump the format deliberately."""
    assert fixed_point.FINGERPRINT == 0xF554F6BE


def test_fixed_point_costs_next_to_nothing_and_ignores_threads():
    prior = random_prior()
    codes = prior.generate(1, 150)[0].numpy()
    with torch.no_grad():
        float_bits = prior.nll(torch.from_numpy(codes)[None]).item() / math.log(2) * codes.size
    data = entropy.encode(prior, codes)
    assert len(data) * 8 <= float_bits * 1.01 + 16
    torch.set_num_threads(2)
    try:
        assert entropy.encode(prior, codes) == data
    finally:
        torch.set_num_threads(1)


def test_a_prior_too_large_for_fixed_point_is_refused():
    from vqaudio.errors import VqaudioError

    prior = random_prior()
    with torch.no_grad():
        prior.post.weight[0, 0, 0] = 300.0
    with pytest.raises(VqaudioError, match="cannot be run in fixed point"):
        entropy.encode(prior, np.zeros((2, 2), dtype=np.int64))


# -- the file format --------------------------------------------------------------------------------

@pytest.mark.parametrize("num_codes", [2, 3, 512, 1000])
def test_bit_packing_round_trip(num_codes):
    codes = np.random.default_rng(num_codes).integers(0, num_codes, (37, 3))
    packed = bitstream.pack_codes(codes, num_codes)
    assert len(packed) == math.ceil(37 * 3 * bitstream.bits_per_code(num_codes) / 8)
    np.testing.assert_array_equal(bitstream.unpack_codes(packed, 37, 3, num_codes), codes)


def test_header_layout_is_fixed():
    assert bitstream.HEADER.size == 38 and bitstream.ENTROPY.size == 12 and bitstream.MAGIC == b"VQC\0"
    assert bitstream.plain_size(1761, 2, 512) == 38 + math.ceil(1761 * 2 * 9 / 8) + 4


def encode_in_process(model, src, dst, **kw):
    from vqaudio.resynth import encode_path

    return encode_path(src, dst, model, None, kw.pop("levels", 2), **kw)


def decoded(model, codes_file, tmp_path) -> np.ndarray:
    from vqaudio.resynth import decode_path

    out = tmp_path / f"{Path(codes_file).name}.wav"
    decode_path(codes_file, out, model)
    return sf.read(out, dtype="int16")[0]


def old_npz(path: Path, model: Path, codes, length: int, gain: float) -> Path:
    """A codes file exactly as 'vqaudio encode' wrote it before the .vqc format."""
    import json

    config = json.loads((model / "vqvae" / "config.json").read_text())
    meta = {"model_id": config["model_id"], "sample_rate": config["sample_rate"], "hop": config["hop"],
            "length": int(length), "num_codes": config["num_codes"], "gain": float(gain)}
    with open(path, "wb") as f:
        np.savez(f, codes=np.asarray(codes, dtype=np.int16), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return path


@pytest.mark.parametrize("src", [FSDD, SPEECH], ids=["digit", "sentence"])
def test_real_files_decode_identically_from_every_format(model, tmp_path, src):
    from vqaudio.codec import load_codec, load_codes

    codec = load_codec(model)
    wav, rate = sf.read(src, frames=3 * 8000 + 37)  # a real sentence's first 3 s: keeps the test fast
    src = tmp_path / f"in{src.suffix}"
    sf.write(src, wav, rate)
    plain = encode_in_process(model, src, tmp_path / "a.vqc")
    coded = encode_in_process(model, src, tmp_path / "e.vqc", fmt="vqc", entropy=True)
    npz = encode_in_process(model, src, tmp_path / "n.npz")
    codes, length, gain = load_codes(tmp_path / "a.vqc", codec)
    for other in ("e.vqc", "n.npz"):
        c, n, g = load_codes(tmp_path / other, codec)
        np.testing.assert_array_equal(c, codes)
        assert (n, g) == (length, gain)  # the gain exactly: float64 in both
    assert plain["bytes"] == bitstream.plain_size(codes.shape[0], 2, 512) == (tmp_path / "a.vqc").stat().st_size
    # nominal bitrate x duration (rounded up to whole frames) + header and checksum (42 bytes)
    assert plain["bytes"] * 8 <= codec.bitrate(2) * (length + codec.hop) / codec.sample_rate + 42 * 8 + 8
    assert coded["bytes"] == (tmp_path / "e.vqc").stat().st_size
    old = old_npz(tmp_path / "old.npz", model, codes, length, gain)
    reference = decoded(model, old, tmp_path)  # what decode gave before the .vqc format
    assert len(reference) == length
    for f in ("a.vqc", "e.vqc", "n.npz"):
        np.testing.assert_array_equal(decoded(model, tmp_path / f, tmp_path), reference)


def test_cli_encodes_with_entropy_and_decodes_exactly(model, tmp_path):
    p = vqaudio("encode", FSDD, "-o", tmp_path / "e.vqc", "--model", model, "--entropy", "--bitrate", "2.25")
    size = (tmp_path / "e.vqc").stat().st_size
    assert f"frames x 2 levels for 0.24 s, {size} bytes: " in p.stdout and "kb/s (nominal 2.25 kb/s)" in p.stdout
    vqaudio("decode", tmp_path / "e.vqc", "-o", tmp_path / "e.wav", "--model", model)
    encode_in_process(model, FSDD, tmp_path / "n.npz")
    np.testing.assert_array_equal(sf.read(tmp_path / "e.wav", dtype="int16")[0],
                                  decoded(model, tmp_path / "n.npz", tmp_path))


# -- refusals: one error line, exit 1, nothing written ------------------------------------------------

def run_cli(*args):
    from typer.testing import CliRunner

    from vqaudio.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def refused(tmp_path: Path, args, *says):
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_cli(*args)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.stderr)
    assert all(s in lines[0] for s in says), lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temporary file


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    """``data`` with bytes replaced at ``offset`` and a valid CRC32 again: only the field changes."""
    body = data[:offset] + new + data[offset + len(new): -4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.fixture(scope="module")
def coded_files(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("coded")
    encode_in_process(model, FSDD, folder / "a.vqc")
    encode_in_process(model, FSDD, folder / "e.vqc", entropy=True)
    return (folder / "a.vqc").read_bytes(), (folder / "e.vqc").read_bytes()


TABLES_AT = bitstream.HEADER.size + 8  # the entropy-coded file's fingerprint of the fixed-point tables

DAMAGE = {
    # name: (which file, how to damage its bytes, what the error line says)
    "empty": ("a", lambda d: b"", "not a vqaudio codes file"),
    "shorter_than_the_header": ("a", lambda d: d[:40], "truncated"),
    "truncated_payload": ("a", lambda d: d[:-9], "truncated"),
    "truncated_entropy_payload": ("e", lambda d: d[:-3], "truncated"),
    "one_byte_too_many": ("a", lambda d: d + b"\0", "longer than its header says"),
    "flipped_payload_byte": ("a", lambda d: d[:70] + bytes([d[70] ^ 0x10]) + d[71:], "checksum mismatch"),
    "flipped_entropy_byte": ("e", lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:], "checksum mismatch"),
    "flipped_header_byte": ("a", lambda d: d[:30] + bytes([d[30] ^ 1]) + d[31:], "checksum mismatch"),
    "wrong_version": ("a", lambda d: patched(d, 4, b"\x02"), "format version 2"),
    "wrong_model": ("a", lambda d: patched(d, 8, bytes(8)), "come from another model"),
    "wrong_levels": ("a", lambda d: patched(d, 6, b"\x09"), "levels"),
    "other_tables": ("e", lambda d: patched(d, TABLES_AT, bytes(4)), "other fixed-point tables",
                     "fingerprint 00000000", "encode without --entropy"),
    "zero_length": ("a", lambda d: patched(d, 22, bytes(4)), "0 samples"),
}


@pytest.mark.parametrize("name", DAMAGE)
def test_damaged_codes_file_is_one_error_line(model, coded_files, tmp_path, name):
    which, damage, *says = DAMAGE[name]
    data = coded_files[0] if which == "a" else coded_files[1]
    (tmp_path / "c.vqc").write_bytes(damage(data))
    refused(tmp_path, ["decode", tmp_path / "c.vqc", "-o", tmp_path / "out.wav", "--model", model], *says)


def test_entropy_codes_need_the_same_entropy_prior(model, coded_files, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "vqvae").symlink_to(model / "vqvae")
    (tmp_path / "e.vqc").write_bytes(coded_files[1])
    refused(tmp_path, ["decode", tmp_path / "e.vqc", "-o", tmp_path / "o.wav", "--model", other],
            "has no entropy prior", "encode without --entropy")
    save_entropy_prior(other, seed=1)
    refused(tmp_path, ["decode", tmp_path / "e.vqc", "-o", tmp_path / "o.wav", "--model", other],
            "another entropy prior", "--model")


def test_encode_refusals(model, tmp_path):
    src = FSDD
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "vqvae").symlink_to(model / "vqvae")
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.vqc", "--model", bare, "--entropy"],
            "has no entropy prior", "encode without --entropy")
    misfit = tmp_path / "misfit"
    misfit.mkdir()
    (misfit / "vqvae").symlink_to(model / "vqvae")
    save_entropy_prior(misfit, vqvae_model_id="0123456789abcdef")
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.vqc", "--model", misfit, "--entropy"],
            "another VQ-VAE", "retrain it")
    stacked = tmp_path / "stacked"
    stacked.mkdir()
    (stacked / "vqvae").symlink_to(model / "vqvae")
    save_entropy_prior(stacked, frame_stack=2)
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.vqc", "--model", stacked, "--entropy"],
            "steps 2 frames at a time", "prior.frame_stack = 1")
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.npz", "--model", model, "--entropy"],
            "--entropy needs the compact format")
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.bin", "--model", model], "end in .vqc")
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.vqc", "--model", model, "--format", "npz"], "end in .npz")
    refused(tmp_path, ["encode", src, "-o", tmp_path / "c.vqc", "--model", model, "--format", "zip"],
            "--format must be vqc or npz")
