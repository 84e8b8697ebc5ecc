"""Codes files on disk: actual kb/s of .npz, .vqc and entropy-coded .vqc against the nominal
bitrate, and the speed of encoding and decoding them.

Run by hand (not a test):

    python bench/bitstream.py --entropy-prior runs/entropy-test/prior   # the pretrained codec
    python bench/bitstream.py --model runs/speech --max-files 5

The same validation recordings as bench/codec_quality.py (its file lists are reused): read
sentences of the validation speakers of ``data/speech`` (``--max-files`` of them, evenly
spread) and the FSDD validation digits of one held-out speaker. Each file is read once and
encoded once with the VQ-VAE (``Codec.encode``, as ``vqaudio encode``), then its codes are
written and read back in every format (``save_codes`` / ``load_codes``) and decoded
(``Codec.decode``); the model is loaded once, not per file:

* npz: the older format (``--format npz``);
* vqc: the codes bit-packed at log2 K bits (the default of ``vqaudio encode``);
* vqc+entropy: arithmetic-coded with the entropy prior (``--entropy``).

``--entropy-prior FOLDER`` places that prior as ``entropy_prior/`` in a temporary copy of the
model folder (the VQ-VAE linked, not copied); without it the model's own entropy prior is
used. The decoded samples of the three formats must be identical, bit for bit: the script
says so and exits 1 otherwise.

Reported per corpus: medians over files of actual kb/s (file bytes × 8 / duration, header
included) and real-time factors (wall time / audio duration; < 1 is faster than real time)
at ``--threads`` torch threads, encode = VQ-VAE encoding + writing the file, decode = reading
the file + VQ-VAE decoding; beside them the same in CPU seconds (``time.process_time``, all
threads) per second of audio, which other jobs on a shared machine disturb less;
and, over the whole corpus, total bytes / total seconds and the entropy coder's payload
bits per code (header excluded).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec_quality import MAX_FILES, REPO, SPEAKER, SPEECH_REGEX, digit_files, sentence_files  # noqa: E402

FORMATS = ("npz", "vqc", "vqc+entropy")


def code_file(codec, src: Path, tmp: Path, levels: int) -> dict[str, dict]:
    """Encode ``src`` once with the VQ-VAE, write and read its codes in every format, decode
    each: per format sizes, real-time factors and the decoded samples. The model is loaded
    once (``vqaudio encode`` also loads it per call: a fixed cost, left out here)."""
    from vqaudio.audio_io import read_audio
    from vqaudio.bitstream import read_file
    from vqaudio.codec import load_codes, save_codes

    wav, _ = read_audio(src, codec.sample_rate)
    seconds = len(wav) / codec.sample_rate
    t0, c0 = time.perf_counter(), time.process_time()
    gain = codec.gain(float(np.abs(wav).max(initial=0)))
    codes = codec.encode(wav, levels)
    vqvae_s, vqvae_cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {}
    for fmt in FORMATS:
        path = tmp / ("c.npz" if fmt == "npz" else "c.vqc")
        t0, c0 = time.perf_counter(), time.process_time()
        size = save_codes(path, codec, codes, len(wav), gain, fmt.split("+")[0],
                          codec.entropy_prior() if fmt == "vqc+entropy" else None)
        t1, c1 = time.perf_counter(), time.process_time()
        back, length, g = load_codes(path, codec)
        decoded = codec.decode(back, length, g)
        t2, c2 = time.perf_counter(), time.process_time()
        payload = len(read_file(path)[1]) if fmt != "npz" else size
        out[fmt] = {"kbps": size * 8 / seconds / 1000, "bytes": size, "payload": payload, "seconds": seconds,
                    "codes": codes.size, "nominal": codec.bitrate(levels) / 1000,
                    "encode_rtf": (vqvae_s + t1 - t0) / seconds, "decode_rtf": (t2 - t1) / seconds,
                    "encode_cpu": (vqvae_cpu + c1 - c0) / seconds, "decode_cpu": (c2 - c1) / seconds,
                    "wav": decoded.tobytes()}
    return out


def codec_with_prior(model: str | None, prior: Path | None, tmp: Path):
    """The codec of ``model``, from a temporary copy of its folder with ``prior`` as the
    entropy prior when one is given."""
    from vqaudio.codec import load_codec, resolve_model_dir
    from vqaudio.entropy import ENTROPY_PRIOR

    if prior is None:
        return load_codec(model)
    folder = tmp / "model"
    folder.mkdir()
    (folder / "vqvae").symlink_to(resolve_model_dir(model).resolve())
    shutil.copytree(prior, folder / ENTROPY_PRIOR)
    return load_codec(folder)


def table(rows: dict[str, list[dict]], corpus: str, levels: int) -> str:
    n = len(rows["vqc"])
    seconds = sum(r["seconds"] for r in rows["vqc"])
    nominal = rows["vqc"][0]["nominal"]
    lines = ["| format | actual kb/s (median) | total bytes / total s (kb/s) | vs nominal "
             "| encode RTF | decode RTF | encode CPU-s/s | decode CPU-s/s |", "|---|---|---|---|---|---|---|---|",
             f"| nominal ({levels} levels) | {nominal:.3f} | {nominal:.3f} | 1.00 | | | | |"]
    for fmt in FORMATS:
        rs = rows[fmt]
        total = sum(r["bytes"] for r in rs) * 8 / seconds / 1000
        lines.append(f"| {fmt} | {np.median([r['kbps'] for r in rs]):.3f} | {total:.3f} | {total / nominal:.2f} "
                     + "".join(f"| {np.median([r[k] for r in rs]):.3f} "
                               for k in ("encode_rtf", "decode_rtf", "encode_cpu", "decode_cpu")) + "|")
    bits = {fmt: sum(r["payload"] for r in rows[fmt]) * 8 / sum(r["codes"] for r in rows[fmt])
            for fmt in ("vqc", "vqc+entropy")}
    return (f"{corpus}: {n} files, {seconds:.0f} s\n\n" + "\n".join(lines) +
            f"\n\npayload bits per code (headers excluded): vqc {bits['vqc']:.2f}, "
            f"vqc+entropy {bits['vqc+entropy']:.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or run folder (default: the pretrained model)")
    p.add_argument("--entropy-prior", type=Path, default=None,
                   help="a prior folder (e.g. runs/entropy-test/prior) to use as the model's entropy_prior/")
    p.add_argument("--speech", type=Path, default=REPO / "data" / "speech", help="read-speech folder")
    p.add_argument("--speech-regex", default=SPEECH_REGEX,
                   help=f"validation file names in --speech (default {SPEECH_REGEX!r})")
    p.add_argument("--max-files", type=int, default=MAX_FILES,
                   help=f"N validation sentences, evenly spread (default {MAX_FILES}; 0 = all)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "fsdd", help="FSDD folder")
    p.add_argument("--speaker", default=SPEAKER, help=f"FSDD validation speaker (default {SPEAKER})")
    p.add_argument("--levels", type=int, default=2, help="quantizer levels (default 2: 2.25 kb/s)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)

    import torch

    from vqaudio.errors import VqaudioError

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    identical = True
    with tempfile.TemporaryDirectory(prefix="bitstream_") as tmpdir:
        tmp = Path(tmpdir)
        try:
            codec = codec_with_prior(args.model, args.entropy_prior, tmp)
            codec.entropy_prior()
            corpora = {"sentences": sentence_files(args.speech, args.speech_regex, args.max_files),
                       "digits": digit_files(args.data, args.speaker)}
        except VqaudioError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        results = {}
        for corpus, files in corpora.items():
            rows: dict[str, list[dict]] = {fmt: [] for fmt in FORMATS}
            for i, f in enumerate(files):
                outs = code_file(codec, f, tmp, args.levels)
                if len({o.pop("wav") for o in outs.values()}) != 1:
                    identical = False
                    print(f"warning: {f.name}: decoded audio differs between formats", file=sys.stderr)
                for fmt in FORMATS:
                    rows[fmt].append(outs[fmt])
                if (i + 1) % 10 == 0 or i + 1 == len(files):
                    print(f"  {corpus}: {i + 1}/{len(files)} files, {time.perf_counter() - started:.0f} s",
                          file=sys.stderr)
            results[corpus] = rows
    prior = args.entropy_prior or codec.path.parent / "entropy_prior"
    print(f"Codes files, model {codec.path} (id {codec.config['model_id']}), entropy prior {prior}, "
          f"at {args.levels} levels; torch {torch.__version__}, {args.threads} threads, "
          f"{platform.machine()}, {datetime.date.today()}, {time.perf_counter() - started:.0f} s in all\n")
    for corpus, rows in results.items():
        print(table(rows, corpus, args.levels) + "\n")
    print("decoded audio identical across npz, vqc and vqc+entropy: " + ("yes, every file" if identical else "NO"))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
