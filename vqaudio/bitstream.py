"""The compact codes file (``.vqc``): a fixed little-endian header, the codes, a CRC32.

Layout (all little-endian)::

    header   HEADER (38 bytes): magic b"VQC\0", format version, flags (bit 0: entropy-coded),
             levels, levels the prior coded, model id (8 bytes: the 16 hex digits of the
             VQ-VAE's model_id), sample rate, hop, original length in samples (the frames
             are ceil(length / hop)), input gain (float64, so decoding gives exactly the
             samples the .npz gave), payload bytes
    entropy  entropy-coded files only (ENTROPY, 12 bytes): the entropy prior's model id and the
             fingerprint of the fixed-point tables the prior ran with (priors/fixed_point.py)
    payload  plain: the codes row-major over (frames, levels), ceil(log2 K) bits each, most
             significant bit first, zero-padded to a whole byte; entropy-coded: the arithmetic
             coder's bits (vqaudio/entropy.py)
    crc32    zlib.crc32 of everything before it

So a plain file is exactly ``42 + ceil(frames · levels · bits / 8)`` bytes: the nominal
bitrate × duration (in whole frames) plus 42 bytes; an entropy-coded one has 54 bytes of
overhead. Readers check, in this order, the magic, the version, the size, the checksum, then
(codec.py) the model: a damaged file is refused with one message, never decoded into noise.
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
HEADER = struct.Struct("<4sBBBB8sIHIdI")
ENTROPY = struct.Struct("<8sI")
CRC = struct.Struct("<I")
AGAIN = "the file is damaged; make it again with 'vqaudio encode'"


@dataclass(frozen=True)
class Header:
    model_id: str  # 16 hex digits
    sample_rate: int
    hop: int
    levels: int
    length: int  # samples of the original audio at the model rate
    gain: float  # the input gain the codes were encoded with (decoding divides by it)
    prior_id: str = ""  # the entropy prior's model_id; "" = plain bit-packed codes
    prior_levels: int = 0  # levels the prior coded (the rest: uniform frequencies)
    tables: int = 0  # fixed_point.FINGERPRINT of the encoder; 0 when plain

    @property
    def entropy(self) -> bool:
        return bool(self.prior_id)

    @property
    def frames(self) -> int:
        return -(-self.length // self.hop)


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
    """The whole file: header, entropy fields (entropy only), payload, CRC32 of all before it."""
    try:
        head = HEADER.pack(MAGIC, VERSION, FLAG_ENTROPY if header.entropy else 0, header.levels,
                           header.prior_levels, bytes.fromhex(header.model_id), header.sample_rate,
                           header.hop, header.length, header.gain, len(payload))
        if header.entropy:
            head += ENTROPY.pack(bytes.fromhex(header.prior_id), header.tables)
    except (struct.error, ValueError) as e:  # a model id that is not 16 hex digits, a field too big
        raise VqaudioError(f"cannot write these codes as {SUFFIX} ({e}); use --format npz") from None
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
    (_, _, flags, levels, prior_levels, model_id, rate, hop, length, gain,
     payload_bytes) = HEADER.unpack_from(data)
    offset = HEADER.size + (ENTROPY.size if flags & FLAG_ENTROPY else 0)
    expected = offset + payload_bytes + CRC.size
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise VqaudioError(f"{where}: {what} ({len(data)} bytes, expected {expected}); {AGAIN}")
    (crc,) = CRC.unpack_from(data, expected - CRC.size)
    if crc != zlib.crc32(data[: expected - CRC.size]):
        raise VqaudioError(f"{where}: checksum mismatch (CRC32); {AGAIN}")
    prior_id, tables = ENTROPY.unpack_from(data, HEADER.size) if flags & FLAG_ENTROPY else (b"", 0)
    header = Header(model_id.hex(), rate, hop, levels, length, gain, prior_id.hex(), prior_levels, tables)
    if header.hop == 0 or header.length == 0:
        raise VqaudioError(f"{where}: header says hop {hop}, {length} samples; {AGAIN}")
    return header, data[offset: offset + payload_bytes]


def read_file(path: Path) -> tuple[Header, bytes]:
    return from_bytes(Path(path).read_bytes(), str(path))
