"""Where the Fourier-head codec loses the words: splice the original's STFT into the decoder's.

For every digit recording of a held-out FSDD speaker, the decoder's spectrum (magnitude and
phase from ``FourierDecoder.spectrum`` on the quantized codes) is replaced, part by part, by the
original's (the decoder's own analysis of the input), turned back into a waveform by the
decoder's inverse STFT and given to the digit recogniser (PocketSphinx, the ten digit words).
A part whose true values bring the recognition back to the original's is where the words are
lost: magnitude or phase, a frequency band, or the quiet frames between words.

    python bench/codec_splice.py [--model DIR] [--levels 2] [--every 5] [--threads 1]

Needs a model with ``decoder = "fourier"`` and the ``eval`` extra.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BANDS_HZ = ((0, 1000), (1000, 3000), (3000, 4001))
QUIET_DB = 40  # frames this far below the recording's loudest count as quiet


def variants(mag, phase, true_mag, true_phase, hz, frame_db):
    """name -> (magnitude, phase) with parts of the decoder's spectrum replaced by the original's."""
    import torch

    def band(lo, hi):
        return ((hz >= lo) & (hz < hi))[None, :, None]

    out = {"original (analysis + inverse STFT)": (true_mag, true_phase),
           "decoded": (mag, phase),
           "true magnitude, decoded phase": (true_mag, phase),
           "decoded magnitude, true phase": (mag, true_phase)}
    for lo, hi in BANDS_HZ:
        m = band(lo, hi)
        out[f"true magnitude and phase {lo / 1000:g}-{min(hi, 4000) / 1000:g} kHz"] = (
            torch.where(m, true_mag, mag), torch.where(m, true_phase, phase))
    quiet = (frame_db < frame_db.max() - QUIET_DB)[:, None, :]
    out[f"true magnitude and phase in quiet frames (< -{QUIET_DB} dB)"] = (
        torch.where(quiet, true_mag, mag), torch.where(quiet, true_phase, phase))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or run folder (default: the pretrained model)")
    p.add_argument("--data", type=Path, default=REPO / "data" / "fsdd", help="FSDD folder")
    p.add_argument("--speaker", default="yweweler", help="a speaker the model never trained on")
    p.add_argument("--levels", type=int, default=2, help="quantizer levels (default 2: 2.25 kb/s)")
    p.add_argument("--every", type=int, default=5, help="score every Nth recording (default 5: 100 of 500)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from vqaudio.audio_io import read_audio
    from vqaudio.codec import load_codec
    from vqaudio.errors import VqaudioError
    from vqaudio.listeners import DIGIT_WORDS, check_available, confusion_table, digit_label, recognise_digit

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        check_available()
        codec = load_codec(args.model)
        if not hasattr(codec.model.decoder, "spectrum"):
            raise VqaudioError(f"{codec.path}: the decoder is not a Fourier head; this splices STFTs")
        files = sorted(args.data.glob(f"*_{args.speaker}_*.wav"))[:: args.every]
        if not files:
            raise VqaudioError(f"no recordings of {args.speaker!r} in {args.data}")
    except VqaudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model, dec = codec.model.eval(), codec.model.decoder
    hop, sr = codec.hop, codec.sample_rate
    hz = torch.arange(dec.bins) * sr / (2 * (dec.bins - 1))
    heard: dict[str, list] = {}
    for f in files:
        x, _ = read_audio(f, sr)
        x = x[: len(x) // hop * hop]
        g = codec.gain(float(np.abs(x).max()))
        with torch.inference_mode():
            t = torch.from_numpy(x * g).float()[None]
            codes = model.encode(t[None], levels=args.levels)
            mag, phase = dec.spectrum(model.quantizer.lookup(codes).movedim(-1, 1))
            true = dec.istft.analysis(t)
            frame_db = 10 * torch.log10(true.abs().square().sum(1) + 1e-12)
            for name, (m, ph) in variants(mag, phase, true.abs(), true.angle(), hz, frame_db).items():
                y = np.clip(dec.istft(torch.polar(m, ph))[0].numpy() / g, -1, 1)
                heard.setdefault(name, []).append((digit_label(f), recognise_digit(y, sr)))
    print(f"Splicing the original's STFT into the decoder's: model {codec.path} (id "
          f"{codec.config.get('model_id')}), {args.levels} levels, {len(files)} digits of {args.speaker} "
          f"(every {args.every}th), {datetime.date.today()}, {time.perf_counter() - started:.0f} s\n")
    print("| spectrum | digits recognised |\n|---|---:|")
    for name, pairs in heard.items():
        right = sum(DIGIT_WORDS[d] == w for d, w in pairs)
        print(f"| {name} | {right / len(pairs):.0%} |")
    print()
    print(confusion_table(list(heard.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
