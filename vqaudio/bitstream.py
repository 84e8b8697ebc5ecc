"""The compact codes file (``.vqc``): a fixed little-endian header, the codes, a CRC32.

Layout (all little-endian)::

    header   HEADER (56 bytes): magic b"VQC\\0", format version, flags, levels, prior levels,
             model id (8 bytes: the 16 hex digits of the VQ-VAE's model_id), entropy prior id
             (8 bytes, zeros when plain), sample rate, hop, num_codes, frames, original length
             in samples, input gain (float64, so decoding gives exactly the samples the .npz
             gave), payload bytes
    needs    entropy-coded files only: one length byte + ASCII text naming what exact decoding
             needs (see ``decoding_needs``)
    payload  plain: the codes row-major over (frames, levels), ceil(log2 K) bits each, most
             significant bit first, zero-padded to a whole byte; entropy-coded: the arithmetic
             coder's bits (vqaudio/entropy.py)
    crc32    zlib.crc32 of everything before it

So a plain file is exactly ``HEADER.size + 4 + ceil(frames · levels · bits / 8)`` bytes: the
nominal bitrate × duration plus 60 bytes. Readers check, in this order, the size, the magic,
the version, the payload length, the checksum, then the model: a damaged file is refused with
one message, never decoded into noise.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqaudio.errors import VqaudioError

MAGIC = b"VQC\0"
VERSION = 1
SUFFIX = ".vqc"
FLAG_ENTROPY = 1
HEADER = struct.Struct("<4sBBBB8s8sIIIIQdI")
CRC = struct.Struct("<I")
AGAIN = "the file is damaged; make it again with 'vqaudio encode'"


@dataclass(frozen=True)
class Header:
    model_id: str  # 16 hex digits
    sample_rate: int
    hop: int
    num_codes: int
    frames: int
    levels: int
    length: int  # samples of the original audio at the model rate
    gain: float  # the input gain the codes were encoded with (decoding divides by it)
    prior_id: str = ""  # the entropy prior's model_id; "" = plain bit-packed codes
    prior_levels: int = 0  # levels the prior coded (the rest: uniform frequencies)
    needs: str = ""  # what exact entropy decoding needs (torch build, CPU); "" when plain

    @property
    def entropy(self) -> bool:
        return bool(self.prior_id)


def bits_per_code(num_codes: int) -> int:
    return max(1, math.ceil(math.log2(num_codes)))


def plain_size(frames: int, levels: int, num_codes: int) -> int:
    """Bytes of a plain .vqc file: header + bit-packed codes + checksum."""
    return HEADER.size + math.ceil(frames * levels * bits_per_code(num_codes) / 8) + CRC.size


def pack_codes(codes: np.ndarray, num_codes: int) -> bytes:
    """Codes (frames, levels) -> ceil(log2 K) bits each, row-major, MSB first, packed."""
    b = bits_per_code(num_codes)
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    bits = (flat[:, None] >> np.arange(b - 1, -1, -1)) & 1  # (N, b)
    return np.packbits(bits.astype(np.uint8).reshape(-1)).tobytes()


def unpack_codes(data: bytes, frames: int, levels: int, num_codes: int) -> np.ndarray:
    """Inverse of ``pack_codes``: (frames, levels) int64."""
    b, n = bits_per_code(num_codes), frames * levels
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n * b).reshape(n, b)
    return (bits.astype(np.int64) @ (1 << np.arange(b - 1, -1, -1))).reshape(frames, levels)


def to_bytes(header: Header, payload: bytes) -> bytes:
    """The whole file: header, needs (entropy only), payload, CRC32 of all before it."""
    try:
        model_id, prior_id = bytes.fromhex(header.model_id), bytes.fromhex(header.prior_id or "0" * 16)
        needs = header.needs.encode("ascii")
        head = HEADER.pack(MAGIC, VERSION, FLAG_ENTROPY if header.entropy else 0, header.levels,
                           header.prior_levels, model_id, prior_id, header.sample_rate, header.hop,
                           header.num_codes, header.frames, header.length, header.gain, len(payload))
    except (struct.error, ValueError) as e:  # a model id that is not 16 hex digits, a field too big
        raise VqaudioError(f"cannot write these codes as {SUFFIX} ({e}); use --format npz") from None
    if header.entropy:
        head += bytes([len(needs)]) + needs
    body = head + payload
    return body + CRC.pack(zlib.crc32(body))


def from_bytes(data: bytes, where: str) -> tuple[Header, bytes]:
    """(header, payload) of a .vqc file's bytes; VqaudioError naming ``where`` when it is
    truncated, damaged (checksum), of another format version or not a .vqc file."""
    if data[:4] != MAGIC:
        raise VqaudioError(f"{where}: not a vqaudio codes file; make it again with 'vqaudio encode'")
    if len(data) < 5 or data[4] != VERSION:
        version = data[4] if len(data) > 4 else "?"
        raise VqaudioError(f"{where}: codes file format version {version}, but this vqaudio reads "
                           f"version {VERSION}; decode it with the vqaudio that wrote it, or encode again")
    if len(data) < HEADER.size + CRC.size:
        raise VqaudioError(f"{where}: truncated ({len(data)} bytes, shorter than the header); {AGAIN}")
    (_, _, flags, levels, prior_levels, model_id, prior_id, rate, hop, num_codes, frames, length,
     gain, payload_bytes) = HEADER.unpack_from(data)
    offset, needs = HEADER.size, ""
    if flags & FLAG_ENTROPY:
        n = data[offset]
        needs = data[offset + 1: offset + 1 + n].decode("ascii", errors="replace")
        offset += 1 + n
    expected = offset + payload_bytes + CRC.size
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise VqaudioError(f"{where}: {what} ({len(data)} bytes, expected {expected}); {AGAIN}")
    (crc,) = CRC.unpack_from(data, expected - CRC.size)
    if crc != zlib.crc32(data[: expected - CRC.size]):
        raise VqaudioError(f"{where}: checksum mismatch (CRC32); {AGAIN}")
    header = Header(model_id.hex(), rate, hop, num_codes, frames, levels, length, gain,
                    prior_id.hex() if flags & FLAG_ENTROPY else "", prior_levels, needs)
    return header, data[offset: offset + payload_bytes]


def read_file(path: Path) -> tuple[Header, bytes]:
    return from_bytes(Path(path).read_bytes(), str(path))


def decoding_needs() -> str:
    """What makes the prior's float probabilities, hence the integer frequency tables,
    bit-identical between encoder and decoder: the torch build and the CPU kernels it
    dispatches to (the coder itself runs the prior on one thread, so the thread count is fixed)."""
    import platform

    import torch

    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
    return f"torch {torch.__version__} cpu {capability} {platform.machine()} threads 1"
