"""Sampling speed and likelihood of a trained audio prior on the CPU.

Run by hand (not a test):

    python bench/sampling.py                       # the pretrained model shipped in the package
    python bench/sampling.py --model runs/speech --seconds 2 --runs 5 --threads 2

(a) Speed: time to sample ``--seconds`` of codes (one clip, label "7" when the prior is
    conditioned) with the cached incremental sampler (``WaveNetPrior.generate``) and with the
    plain full-recompute reference (``reference_sample``: one full forward pass per code), same
    model, same seed, ``torch.set_num_threads(--threads)``. The model is loaded and warmed up
    first (not timed); each run is timed alone, runs interleaved cached/reference; medians. Also
    the cached sampler plus decoding to audio (what ``vqaudio sample`` does after loading).
    Both samplers are checked to return the same codes.
(b) Likelihood: the prior's NLL in bits per code on the recipe's validation files (encoded as
    in training, real frames only) beside the unigram entropy of those codes and log2 K.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="training run folder (default: the pretrained model)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vqaudio.build import load_audio_prior
    from vqaudio.codec import load_codec
    from vqaudio.generate import resolve_run
    from vqaudio.priors.sampling import Controls, reference_sample
    from vqaudio.priors.wavenet import sequence_logits_fn

    vqvae_dir, prior_dir = resolve_run(args.model)
    codec = load_codec(vqvae_dir)
    prior, config = load_audio_prior(prior_dir)
    labels = torch.tensor([config["labels"].index("7") if "7" in config["labels"] else 0]) if config["labels"] else None
    frames = math.ceil(args.seconds * config["frames_per_second"])
    length = round(args.seconds * codec.sample_rate)
    controls = Controls(seed=args.seed)

    def cached():
        return prior.generate(1, frames, controls, labels)

    def reference():
        return reference_sample(sequence_logits_fn(prior, labels), (frames, prior.levels), 1, controls)

    def cached_and_decode():
        return codec.decode(cached()[0].numpy(), length)

    for fn in (cached, reference, cached_and_decode):  # warm-up
        fn()
    times: dict[str, list[float]] = {"cached": [], "reference": [], "cached + decode": []}
    outputs = {}
    for _ in range(args.runs):
        for name, fn in (("cached", cached), ("reference", reference), ("cached + decode", cached_and_decode)):
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    same = torch.equal(outputs["cached"], outputs["reference"])
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"- Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"- Date: {datetime.date.today()}; model: {prior_dir} ({config['levels']} levels, "
          f"K = {config['num_codes']}, receptive field {config['receptive_field_frames']} frames, "
          f"{sum(p.numel() for p in prior.parameters()) / 1e6:.2f} M parameters)")
    print(f"- {args.seconds} s = {frames} frames x {prior.levels} levels = {frames * prior.levels} codes; "
          f"median of {args.runs} runs; same codes from both samplers: {same}\n")
    print("| sampler | median s | min s | max s | codes/s |")
    print("|---|---:|---:|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.3f} | {min(v):.3f} | {max(v):.3f} | {frames * prior.levels / med[k]:,.0f} |")
    print(f"\nspeed-up of the cached sampler: {med['reference'] / med['cached']:.1f}x "
          f"(goal >= 20x); cached {med['cached']:.3f} s for {args.seconds} s (goal < 0.5 s)\n")

    likelihood(prior, config, codec)


def likelihood(prior, config, codec) -> None:
    from vqaudio.config import from_dict
    from vqaudio.data.audio import label_of
    from vqaudio.data.codes import encode_files
    from vqaudio.metrics import unigram_entropy_bits
    from vqaudio.stages import audio_splits, prior_bits_per_code

    recipe = from_dict(config["recipe"])
    root = Path(__file__).resolve().parent.parent / "recipes"
    recipe.source = str(root / "speech.toml")  # data folders are relative to the recipes folder
    _, val_files = audio_splits(recipe, recipe.prior_files())  # the prior's validation files
    vocab = config["labels"]
    ids = [vocab.index(label_of(f, recipe.data.label_regex)) for f in val_files] if vocab else [0] * len(val_files)
    val = encode_files(codec, val_files, ids, recipe.prior.pad_seconds)
    levels = prior.levels
    bits = prior_bits_per_code(prior, val, bool(vocab))
    count = sum(len(q) for q in val.sequences)
    all_codes = val.all_codes(levels)
    unigram = [unigram_entropy_bits(all_codes[:, l], config["num_codes"]) for l in range(levels)]
    print(f"Validation: {len(val_files)} files, {int(count)} frames x {levels} levels\n")
    print("| level | prior NLL (bits/code) | unigram entropy (bits/code) | log2 K |")
    print("|---|---:|---:|---:|")
    for l in range(levels):
        print(f"| {l} | {bits[l]:.3f} | {unigram[l]:.3f} | {math.log2(config['num_codes']):.0f} |")
    print(f"| mean | {bits.mean():.3f} | {np.mean(unigram):.3f} | "
          f"{math.log2(config['num_codes']):.0f} |")


if __name__ == "__main__":
    main()
