"""Using a trained audio VQ-VAE: resynthesis, encoding to a codes file, decoding one.

Long audio is processed in overlapping chunks (each chunk sees ``CONTEXT_SECONDS`` of
neighbouring audio on both sides, wider than the model's receptive field, and only its centre
is kept), so memory does not grow with duration and the result matches one-shot processing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqaudio.build import load_audio_vqvae
from vqaudio.data.audio import peak_gain
from vqaudio.errors import VqaudioError
from vqaudio.vqvae import VQVAE

CHUNK_SECONDS = 10.0
CONTEXT_SECONDS = 0.5
# decode(smoothing=N) keeps the smoothed decode below this and the plain one above: the first
# kilohertz holds the harmonics whose steadiness DNSMOS hears, the bands above the bursts and
# fricatives that tell the words apart (bench/RESULTS.md, twentieth session).
SMOOTHED_BELOW_HZ = 1000.0
PRETRAINED = Path(__file__).parent / "pretrained" / "speech"


@dataclass
class Codec:
    model: VQVAE
    config: dict
    path: Path
    _entropy: tuple | None = field(default=None, repr=False)  # (prior, config), loaded once

    @property
    def sample_rate(self) -> int:
        return self.config["sample_rate"]

    @property
    def hop(self) -> int:
        return self.config["hop"]

    @property
    def max_levels(self) -> int:
        return self.config["levels"]

    def bitrate(self, levels: int) -> float:
        """Bits per second at ``levels`` quantizer levels: frames/s × levels × log2 K."""
        return self.config["frames_per_second"] * levels * math.log2(self.config["num_codes"])

    def pick_levels(self, bitrate_kbps: float | None = None, levels: int | None = None) -> int:
        """``levels`` as given, or the most levels whose bitrate is at most ``bitrate_kbps``."""
        if bitrate_kbps is not None and levels is not None:
            raise VqaudioError("give either --bitrate or --levels, not both")
        if levels is not None:
            if not 1 <= levels <= self.max_levels:
                raise VqaudioError(f"--levels must be between 1 and {self.max_levels} for this model")
            return levels
        if bitrate_kbps is not None:
            fitting = [n for n in range(1, self.max_levels + 1) if self.bitrate(n) <= bitrate_kbps * 1000]
            if not fitting:
                raise VqaudioError(f"--bitrate {bitrate_kbps} kb/s is below this model's lowest "
                                   f"bitrate, {self.bitrate(1) / 1000:.3g} kb/s (1 level)")
            return fitting[-1]
        return self.max_levels

    def entropy_prior(self) -> tuple:
        """(prior, config) of the entropy prior beside this model (``entropy_prior/``), loaded
        on first use; VqaudioError when there is none or it does not fit."""
        if self._entropy is None:
            from vqaudio.entropy import load_entropy_prior

            self._entropy = load_entropy_prior(self)
        return self._entropy

    def gain(self, input_peak: float) -> float:
        """Input gain that matches the peak level the model was trained at (outputs are
        divided by it again)."""
        return peak_gain(input_peak, self.config.get("peak", 0.0))

    # -- array-level operations (mono float32 at the model rate) ------------------------------
    def chunk_samples(self) -> tuple[int, int]:
        """(kept samples per chunk, context samples on each side), both multiples of the hop:
        the one chunk geometry for arrays here and for files streamed in resynth.py."""
        hop, sr = self.hop, self.sample_rate
        return (round(CHUNK_SECONDS * sr / hop) * hop, max(1, round(CONTEXT_SECONDS * sr / hop)) * hop)

    @functools.cached_property
    def code_vectors(self) -> list[np.ndarray]:
        """Each quantizer level's code vectors (K, D) float32."""
        k = self.config["num_codes"]
        with torch.no_grad():
            return [vq.lookup(torch.arange(k)).numpy() for vq in self.model.quantizer.levels]

    @functools.cached_property
    def silence_codes(self) -> np.ndarray:
        """The codes the VQ-VAE gives a silent frame far from any edge (levels,)."""
        frames = self.encode(np.zeros(self.hop * 64, dtype=np.float32), self.max_levels)
        return frames[len(frames) // 2]

    @torch.no_grad()
    def resynth(self, wav: np.ndarray, levels: int) -> np.ndarray:
        g = self.gain(float(np.abs(wav).max(initial=0)))
        x = torch.from_numpy(np.ascontiguousarray(wav * g, dtype=np.float32))
        fn = lambda seg: self.model(seg[None, None], levels=levels).x_hat[0, 0]
        return chunked(fn, x, *self.chunk_samples(), ratio=(1, 1)).numpy() / g

    @torch.no_grad()
    def encode(self, wav: np.ndarray, levels: int) -> np.ndarray:
        """Codes (frames, levels) int64 for a mono waveform (peak-normalised first)."""
        g = self.gain(float(np.abs(wav).max(initial=0)))
        x = torch.from_numpy(np.ascontiguousarray(wav * g, dtype=np.float32))
        fn = lambda seg: self.model.encode(seg[None, None], levels=levels)[0]
        return chunked(fn, x, *self.chunk_samples(), ratio=(1, self.hop)).numpy()

    @torch.no_grad()
    def decode(self, codes: np.ndarray, length: int, gain: float = 1.0, smoothing: int = 1) -> np.ndarray:
        """Waveform of ``length`` samples; ``gain`` is the one the codes were encoded with.
        ``smoothing`` > 1 (for codes a prior drew, never for an encoder's): below
        ``SMOOTHED_BELOW_HZ`` the decode of the latent low-passed over that many frames
        (``smooth_latent``), above it the plain decode."""
        c = torch.from_numpy(np.asarray(codes, dtype=np.int64))
        chunk, context = self.chunk_samples()

        def decoded(latent_filter):
            fn = lambda seg: self.model.decode(seg[None], latent_filter=latent_filter)[0, 0]
            return chunked(fn, c, chunk // self.hop, context // self.hop, ratio=(self.hop, 1))[:length]

        out = decoded(None)
        if smoothing != 1:
            smoothed = decoded(functools.partial(smooth_latent, frames=smoothing))
            out = out + band_below(smoothed - out, SMOOTHED_BELOW_HZ, self.sample_rate)
        return out.numpy() / gain


def smooth_latent(z: Tensor, frames: int) -> Tensor:
    """``z`` (B, D, T) low-passed over time: each frame the Hann-weighted mean of the ``frames``
    (odd) around it, the ends repeated outwards; a constant latent is unchanged.

    For codes a prior drew: averaging a few frames steadies the voice's harmonics, and DNSMOS
    of the pretrained prior's samples rises by a third of a point. It also blurs the bursts and
    fricatives and gives them harmonics, which costs 6 points of words heard as asked, so
    ``Codec.decode`` keeps the smoothed sound only below ``SMOOTHED_BELOW_HZ``. An encoder's
    codes lose 1.0-1.3 PESQ-nb when smoothed, though their latent moves as far from frame to
    frame (presumably the prior draws at random which way it moves, where an encoder follows
    one voice; bench/RESULTS.md, twentieth session)."""
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"smoothing needs an odd number of frames, got {frames}")
    if frames == 1:
        return z
    window = torch.hann_window(frames + 2, periodic=False, dtype=z.dtype)[1:-1]  # no zero ends
    window = (window / window.sum()).view(1, 1, -1)
    b, d, t = z.shape
    padded = F.pad(z.reshape(b * d, 1, t), (frames // 2, frames // 2), mode="replicate")
    return F.conv1d(padded, window).view(b, d, t)


def band_below(x: Tensor, hz: float, sample_rate: int) -> Tensor:
    """``x`` (T,) low-passed at ``hz``, zero-phase: a windowed-sinc FIR (Hamming, 6.25 ms each
    side, unit gain at 0 Hz) centred on each sample, zeros beyond the ends."""
    half = round(0.00625 * sample_rate)
    n = torch.arange(-half, half + 1, dtype=torch.float64)
    taps = torch.sinc(2 * hz / sample_rate * n) * torch.hamming_window(2 * half + 1, periodic=False, dtype=torch.float64)
    taps = (taps / taps.sum()).to(x.dtype)
    return F.conv1d(x.view(1, 1, -1), taps.view(1, 1, -1), padding=half).view(-1)


def chunked(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int, context: int,
            ratio: tuple[int, int]) -> Tensor:
    """Apply ``fn`` along the first axis of ``x`` in chunks with ``context`` on both sides.

    ``fn`` maps n input steps to n·ratio[0]/ratio[1] output steps (rounded up). Chunk and
    context are multiples of ratio[1], so chunk borders fall on whole output steps.
    """
    up, down = ratio
    n = x.shape[0]
    pieces = []
    for start in range(0, max(n, 1), chunk):
        lo, hi = max(0, start - context), min(n, start + chunk + context)
        y = fn(x[lo:hi])
        keep = min(chunk, n - start)
        a = (start - lo) * up // down
        pieces.append(y[a: a + -(-keep * up // down)])
    return torch.cat(pieces)


# -- model directories ------------------------------------------------------------------------

def resolve_model_dir(model: str | Path | None) -> Path:
    """A model folder, a training run folder (its ``vqvae/``), or None for the default: the
    pretrained model shipped in the package."""
    if model is None:
        if (PRETRAINED / "vqvae" / "config.json").is_file():
            return PRETRAINED / "vqvae"
        raise VqaudioError("no model given and no pretrained model is installed; train one with "
                           "'vqaudio train recipes/speech.toml' and pass --model runs/speech")
    path = Path(model)
    if (path / "vqvae" / "config.json").is_file():
        return path / "vqvae"
    return path


def load_codec(model: str | Path | None) -> Codec:
    path = resolve_model_dir(model)
    net, config = load_audio_vqvae(path)
    return Codec(net, config, path)


# -- codes files --------------------------------------------------------------------------------

FORMATS = ("vqc", "npz")  # the compact bitstream (vqaudio/bitstream.py), the older .npz


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise VqaudioError(f"--format must be {' or '.join(FORMATS)}, not {fmt!r}")
    return fmt


def save_codes(path: Path, codec: Codec, codes: np.ndarray, length: int, gain: float,
               fmt: str = "vqc", entropy_prior: tuple | None = None) -> int:
    """Write the codes and what decoding needs (model id, rate, hop, length, the input gain
    to undo after decoding) as ``fmt``: "vqc", bit-packed, or arithmetic-coded with
    ``entropy_prior`` = (prior, its config) from ``entropy.load_entropy_prior``; or "npz".
    Returns the bytes written."""
    from vqaudio.atomic import write_bytes_atomic

    if check_format(fmt) == "npz":
        if entropy_prior is not None:
            raise VqaudioError("--entropy needs the compact format; leave out --format npz")
        data = _npz_bytes(codec, codes, length, gain)
    else:
        data = _vqc_bytes(codec, codes, length, gain, entropy_prior)
    write_bytes_atomic(path, data)
    return len(data)


def _npz_bytes(codec: Codec, codes: np.ndarray, length: int, gain: float) -> bytes:
    import io

    meta = {"model_id": codec.config["model_id"], "sample_rate": codec.sample_rate,
            "hop": codec.hop, "length": int(length), "num_codes": codec.config["num_codes"],
            "gain": float(gain)}
    f = io.BytesIO()
    np.savez(f, codes=codes.astype(np.int16 if codec.config["num_codes"] <= 32767 else np.int32),
             meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return f.getvalue()


def _vqc_bytes(codec: Codec, codes: np.ndarray, length: int, gain: float, entropy_prior: tuple | None) -> bytes:
    from vqaudio import bitstream

    header = bitstream.Header(codec.config["model_id"], codec.sample_rate, codec.hop, codes.shape[1],
                              int(length), float(gain))
    if codes.shape[0] != header.frames:  # the reader counts ceil(length / hop) frames
        raise VqaudioError(f"{codes.shape[0]} frames of codes for {length} samples: expected {header.frames}")
    if entropy_prior is None:
        return bitstream.to_bytes(header, bitstream.pack_codes(codes, codec.config["num_codes"]))
    from vqaudio import entropy as coder
    from vqaudio.priors.fixed_point import FINGERPRINT

    prior, config = entropy_prior
    header = dataclasses.replace(header, prior_id=config["model_id"], prior_levels=min(codes.shape[1], prior.levels),
                                 tables=FINGERPRINT)
    return bitstream.to_bytes(header, coder.encode(prior, codes))


def load_codes(path: Path, codec: Codec) -> tuple[np.ndarray, int, float]:
    """Codes (frames, levels), the original length and the input gain of a codes file of
    either format (told apart by the first bytes, not the name); checks they belong to
    ``codec``."""
    from vqaudio import bitstream

    path = Path(path)
    if path.is_dir():
        raise VqaudioError(f"{path} is a folder, not a codes file; pass the .npz file or {bitstream.SUFFIX} "
                           "file made by 'vqaudio encode'")
    if not path.is_file():
        raise VqaudioError(f"{path}: no such codes file; make one with 'vqaudio encode IN -o {path.name}'")
    with open(path, "rb") as f:
        magic = f.read(len(bitstream.MAGIC))
    if magic == bitstream.MAGIC:
        codes, meta = _read_vqc(path, codec)
    else:
        codes, meta = _read_npz(path)
    return _checked(path, codec, codes, meta)


def _read_vqc(path: Path, codec: Codec) -> tuple[np.ndarray, dict]:
    from vqaudio import bitstream

    header, payload = bitstream.read_file(path)
    _check_model(path, codec, header.model_id)
    meta = {"model_id": header.model_id, "length": header.length, "gain": header.gain}
    again = "the file is damaged; make it again with 'vqaudio encode'"
    k = codec.config["num_codes"]
    if (header.sample_rate, header.hop) != (codec.sample_rate, codec.hop):
        raise VqaudioError(f"{path}: header says {header.sample_rate} Hz, hop {header.hop}, but the model has "
                           f"{codec.sample_rate} Hz, hop {codec.hop}; {again}")
    if not 1 <= header.levels <= codec.max_levels:
        raise VqaudioError(f"{path}: header says {header.levels} levels, expected 1..{codec.max_levels}; {again}")
    if not header.entropy:
        if bitstream.plain_size(header.frames, header.levels, k) != bitstream.HEADER.size + len(payload) + bitstream.CRC.size:
            raise VqaudioError(f"{path}: {len(payload)} bytes of codes do not hold {header.frames} x "
                               f"{header.levels} codes; {again}")
        return bitstream.unpack_codes(payload, header.frames, header.levels, k), meta
    from vqaudio.priors.fixed_point import FINGERPRINT

    prior, config = codec.entropy_prior()
    if config["model_id"] != header.prior_id:
        raise VqaudioError(f"{path}: entropy-coded with another entropy prior (id {header.prior_id}, "
                           f"this model's is {config['model_id']}); decode with the model folder that "
                           "encoded it (--model)")
    if header.tables != FINGERPRINT:
        raise VqaudioError(f"{path}: entropy-coded with other fixed-point tables (fingerprint {header.tables:08x}, "
                           f"this vqaudio's are {FINGERPRINT:08x}); decode with the vqaudio version that "
                           "encoded it, or encode without --entropy")
    from vqaudio import entropy as coder

    return coder.decode(prior, payload, header.frames, header.levels), meta


def _read_npz(path: Path) -> tuple[np.ndarray, dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            codes, meta = data["codes"], json.loads(data["meta"].tobytes().decode())
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError,
            UnicodeDecodeError, AttributeError) as e:
        # EOFError: an empty file; BadZipFile: a truncated or damaged .npz (a zip archive).
        raise VqaudioError(f"{path}: not a vqaudio codes file, or a damaged one ({type(e).__name__}); "
                           "make it again with 'vqaudio encode'") from None
    return codes, meta


def _check_model(path: Path, codec: Codec, model_id) -> None:
    if model_id != codec.config["model_id"]:
        raise VqaudioError(f"{path}: these codes come from another model (id {model_id}, "
                           f"this model is {codec.config['model_id']}); decode with the model that "
                           "encoded them (--model)")


def _checked(path: Path, codec: Codec, codes: np.ndarray, meta: dict) -> tuple[np.ndarray, int, float]:
    """The checks both formats share: model, shape, range, length, gain."""
    _check_model(path, codec, meta.get("model_id"))
    again = "the file is damaged; make it again with 'vqaudio encode'"
    if (codes.ndim != 2 or not 1 <= codes.shape[1] <= codec.max_levels
            or not np.issubdtype(codes.dtype, np.integer)):
        raise VqaudioError(f"{path}: codes are {codes.dtype} of shape {codes.shape}, expected integers of "
                           f"shape (frames, 1..{codec.max_levels}); {again}")
    if codes.size and (codes.min() < 0 or codes.max() >= codec.config["num_codes"]):
        raise VqaudioError(f"{path}: codes out of range 0..{codec.config['num_codes'] - 1} "
                           f"(found {codes.min()}..{codes.max()}); {again}")
    length = meta.get("length", 0)
    if (isinstance(length, bool) or not isinstance(length, int)
            or not 0 < length <= codes.shape[0] * codec.hop):
        raise VqaudioError(f"{path}: stored length {length!r} does not match {codes.shape[0]} frames; {again}")
    gain = meta.get("gain", 1.0)
    if isinstance(gain, bool) or not (isinstance(gain, (int, float)) and 0 < gain < float("inf")):
        raise VqaudioError(f"{path}: stored gain {gain!r} is invalid; {again}")
    return codes.astype(np.int64), length, float(gain)

