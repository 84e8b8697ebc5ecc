"""Sampling speed and likelihood of a trained audio prior on the CPU.

Run by hand (not a test):

    python bench/sampling.py                       # the pretrained model shipped in the package
    python bench/sampling.py --model runs/speech --seconds 2 --runs 5 --threads 2
    python bench/sampling.py --what quality --controls "" "t=0.8" "t=1,k=50" --compare runs/other

(a) Speed: time to sample ``--seconds`` of codes (one clip, label "7" when the prior is
    conditioned) with the cached incremental sampler (``WaveNetPrior.generate``) and with the
    plain full-recompute reference (``reference_sample``: one full forward pass per code), same
    model, same seed, ``torch.set_num_threads(--threads)``. The model is loaded and warmed up
    first (not timed); each run is timed alone, runs interleaved cached/reference; medians. Also
    the cached sampler plus decoding to audio (what ``vqaudio sample`` does after loading).
    Both samplers are checked to return the same codes.
    Every run is one row, with the 1-minute load average when it started: the goals (2 s of
    audio, decoded, in <= 0.2 s; >= 20x faster than the reference) must hold in each.
(b) Likelihood: the prior's NLL in bits per code on the recipe's validation files (encoded as
    in training, real frames only) beside the unigram entropy of those codes and log2 K.
(c) Quality, judged by listeners (the eval extra): ``--per-label`` clips of ``--seconds`` for
    each digit (seeds 0 … per-label - 1, as ``vqaudio sample --num N --label d`` makes them),
    the share PocketSphinx recognises as the digit asked for, the share it recognises as any
    digit, and DNSMOS P.835 OVRL; beside the same for ``--real-files`` of the prior's validation
    recordings and for their resynthesis by the codec at the prior's bitrate, each at its own
    length and framed in silence as the samples are (DNSMOS rates a clip by how much of it is
    speech, so the framed rows are the like-for-like ceiling). One row per prior (``--model``
    then ``--compare``) and sampling setting (``--controls``): the ablation table.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from pathlib import Path

from vqaudio.cli import passive_omp_threads

passive_omp_threads()  # as ``vqaudio sample`` does, before torch loads libgomp

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="training run folder (default: the pretrained model)")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--what", default="speed,likelihood,quality",
                    help="which parts to run, comma-separated: speed, likelihood, quality")
    ap.add_argument("--compare", nargs="*", default=[],
                    help="more run folders (other priors) for the quality table; the first row is --model")
    ap.add_argument("--controls", nargs="*", default=[""],
                    help='sampling settings for the quality table, e.g. "" (defaults) "t=0.8" "t=1,k=50" "p=0.9" "g=3"')
    ap.add_argument("--per-label", type=int, default=10, help="quality: clips per digit")
    ap.add_argument("--real-files", type=int, default=50,
                    help="quality: how many of the prior's validation recordings to judge (DNSMOS costs ~0.3-4 s per clip; 0: none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    what = set(args.what.split(","))
    if "quality" in what:
        from vqaudio.listeners import check_available

        check_available()

    from vqaudio.build import load_audio_prior
    from vqaudio.codec import load_codec
    from vqaudio.generate import resolve_run

    vqvae_dir, prior_dir = resolve_run(args.model)
    codec = load_codec(vqvae_dir)
    prior, config = load_audio_prior(prior_dir)
    if "speed" in what:
        speed(codec, prior, prior_dir, config, args)
    if "likelihood" in what:
        likelihood(prior, config, codec)
    if "quality" in what:
        quality([args.model, *args.compare], args.controls, args.per_label, args.seconds, args.real_files)


def speed(codec, prior, prior_dir, config, args) -> None:
    from vqaudio.generate import generate_clips, load_run_classifier
    from vqaudio.priors.sampling import Controls, reference_sample, with_prior_defaults
    from vqaudio.priors.wavenet import sequence_logits_fn

    labels = torch.tensor([config["labels"].index("7") if "7" in config["labels"] else 0]) if config["labels"] else None
    frames = math.ceil(args.seconds * config["frames_per_second"])
    controls = with_prior_defaults(Controls(seed=args.seed), config)  # as `vqaudio sample` draws
    classifier = load_run_classifier(Path(prior_dir), config, codec)

    def cached():  # one plain draw: the codes the reference must equal
        return prior.generate(1, frames, controls, labels)

    def reference():
        return reference_sample(sequence_logits_fn(prior, labels, controls.guidance), (frames, prior.levels), 1, controls)

    def cached_and_decode():  # what `vqaudio sample` does: best of prior.candidates, then decode
        return generate_clips(codec, prior, config, args.seconds, 1, controls, labels, classifier=classifier)

    for fn in (cached, reference, cached_and_decode):  # warm-up
        fn()
    times: dict[str, list[float]] = {"cached": [], "reference": [], "cached + decode": []}
    loads, cpu = [], []  # cpu: process CPU seconds (all threads) of cached + decode, which sharing disturbs less
    outputs = {}
    for _ in range(args.runs):
        loads.append(os.getloadavg()[0])
        for name, fn in (("cached", cached), ("reference", reference), ("cached + decode", cached_and_decode)):
            t0, c0 = time.perf_counter(), time.process_time()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    same = torch.equal(outputs["cached"], outputs["reference"])
    med = {k: statistics.median(v) for k, v in times.items()}

    print(f"- Machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"- Date: {datetime.date.today()}; model: {prior_dir} ({config['levels']} levels, "
          f"K = {config['num_codes']}, receptive field {config['receptive_field_frames']} frames, "
          f"guidance {controls.guidance:g}{' (two passes per frame)' if controls.guided else ''}, "
          f"cached + decode keeps the best of {controls.candidates} candidates drawn in one batch, "
          f"{sum(p.numel() for p in prior.parameters()) / 1e6:.2f} M parameters)")
    print(f"- {args.seconds} s = {frames} frames x {prior.levels} levels = {frames * prior.levels} codes; "
          f"{args.runs} runs; same codes from both samplers: {same}\n")
    print("| run | 1-min load average | cached s | reference s | cached + decode s | its CPU s | speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for i in range(args.runs):
        c, r, d = (times[k][i] for k in ("cached", "reference", "cached + decode"))
        print(f"| {i + 1} | {loads[i]:.2f} | {c:.3f} | {r:.3f} | {d:.3f} | {cpu[i]:.3f} | {r / c:.1f}x |")
    print(f"| median | | {med['cached']:.3f} | {med['reference']:.3f} | {med['cached + decode']:.3f} | "
          f"{statistics.median(cpu):.3f} | {med['reference'] / med['cached']:.1f}x |")
    worst = max(d for d in times["cached + decode"])
    least = min(r / c for r, c in zip(times["reference"], times["cached"]))
    print(f"\nworst run: {worst:.3f} s for {args.seconds} s of audio with decoding (goal <= "
          f"{args.seconds / 10:.2f} s, 10x real time); least speed-up {least:.1f}x (goal >= 20x)\n")



def prior_validation_files(config):
    """(the prior's recipe, its validation files: the [prior_data] split, else [data]'s)."""
    from vqaudio.config import from_dict
    from vqaudio.stages import audio_splits

    recipe = from_dict(config["recipe"])
    # data folders are relative to the recipes folder
    recipe.source = str(Path(__file__).resolve().parent.parent / "recipes" / "speech.toml")
    return recipe, audio_splits(recipe, recipe.prior_files())[1]


def likelihood(prior, config, codec) -> None:
    from vqaudio.data.audio import label_of
    from vqaudio.data.codes import encode_files
    from vqaudio.metrics import unigram_entropy_bits
    from vqaudio.stages import prior_bits_per_code

    recipe, val_files = prior_validation_files(config)
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


# -- (c) what listeners make of the samples ---------------------------------------------------


def listen(clips: list[np.ndarray], asked: list[int | None], sample_rate: int) -> dict[str, float]:
    """Mean DNSMOS OVRL of ``clips``; the share recognised as the digit asked for (where one
    was asked) and the share recognised as any digit at all."""
    from vqaudio.listeners import DIGIT_WORDS, dnsmos, recognise_digit

    ovrl, right, some, heard = [], [], [], []
    for wav, digit in zip(clips, asked):
        ovrl.append(dnsmos(wav, sample_rate)["ovrl"])
        word = recognise_digit(wav, sample_rate)
        some.append(word is not None)
        if digit is not None:
            right.append(word == DIGIT_WORDS[digit])
            heard.append((digit, word))
    return {"n": len(clips), "ovrl": float(np.mean(ovrl)), "asked": float(np.mean(right)) if right else math.nan,
            "some": float(np.mean(some)), "heard": heard}


def real_rows(codec, config, limit: int, seconds: float) -> dict[str, dict[str, float]]:
    """The ceiling the samples are judged against: ``limit`` of the prior's validation digits
    (its recipe's [prior_data] split, spread evenly over the sorted list: every speaker and
    digit) as recorded, and resynthesised by the codec at the prior's levels (its bitrate).
    Each both at its own length and framed as the samples are: the recipe's
    ``prior.pad_seconds`` of silence before it (what the prior learnt to draw), then silence to
    ``seconds`` in all, coded framed. DNSMOS scores the share of a
    clip that is speech (a 0.5-s word alone scores about 0.2 higher than the same word in 2 s),
    so only the framed rows compare like with like."""
    from vqaudio.audio_io import read_audio
    from vqaudio.listeners import digit_label

    recipe, val_files = prior_validation_files(config)
    files = [f for f in val_files if digit_label(f) is not None]
    files = [files[i] for i in np.linspace(0, len(files) - 1, min(limit, len(files))).round().astype(int)]
    originals = [read_audio(f, codec.sample_rate)[0] for f in files]
    pad_seconds = recipe.prior.pad_seconds
    length, lead = round(seconds * codec.sample_rate), round(pad_seconds * codec.sample_rate)
    framed = [np.pad(x[: length - lead], (lead, max(0, length - lead - len(x)))) for x in originals]
    labels = [digit_label(f) for f in files]
    rate = f"{config['bitrate_bps'] / 1000:.3g} kb/s"
    rows = {}
    for frame, clips in ((f"{len(files)} validation digits", originals),
                         (f"the same, {pad_seconds:g} s into {seconds:g} s of silence", framed)):
        rows[f"real recordings ({frame})"] = listen(clips, labels, codec.sample_rate)
        resynth = [np.clip(codec.resynth(x, config["levels"]), -1, 1) for x in clips]
        rows[f"their resynthesis at {rate} ({frame})"] = listen(resynth, labels, codec.sample_rate)
    return rows


def sample_row(codec, prior, config, controls, per_label: int, seconds: float, classifier=None) -> dict[str, float]:
    """``per_label`` clips of ``seconds`` for every label (seeds ``controls.seed`` … +per_label-1,
    as ``vqaudio sample --num per_label --label d`` makes them), judged by the listeners. An
    unconditional prior gets ``10 * per_label`` clips and only the "any digit" share."""
    from vqaudio.generate import generate_clips

    vocab = config["labels"]
    clips, asked = [], []
    for label in vocab or [None]:
        n = per_label if vocab else 10 * per_label
        ids = torch.full((n,), vocab.index(label), dtype=torch.long) if vocab else None
        clips += generate_clips(codec, prior, config, seconds, n, controls, ids, classifier=classifier)
        asked += [int(label) if label is not None and label.isdigit() else None] * n
    return listen(clips, asked, codec.sample_rate)


def parse_controls(text: str):
    """"t=0.8,k=50,p=0.9,g=3,n=4,s=5" -> Controls (t temperature, k top-k, p top-p, g guidance,
    n candidates, s smoothing, e end silence; unnamed keep the defaults, guidance, candidates,
    smoothing and end silence the prior's own)."""
    from vqaudio.priors.sampling import Controls

    names = {"t": "temperature", "k": "top_k", "p": "top_p", "g": "guidance", "n": "candidates", "s": "smoothing",
             "e": "end_silence"}
    kwargs = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        kwargs[names[key.strip()]] = (int if key.strip() in "kns" else float)(value)
    return Controls(**kwargs)


def quality(models: list[str | None], controls_list: list[str], per_label: int, seconds: float,
            real_files: int) -> None:
    from vqaudio.build import load_audio_prior
    from vqaudio.codec import load_codec
    from vqaudio.generate import load_run_classifier, resolve_run
    from vqaudio.priors.sampling import with_prior_defaults

    print(f"\n### Samples judged by the listeners ({per_label} clips of {seconds:g} s per digit, "
          f"seeds 0-{per_label - 1}; PocketSphinx with a grammar of the ten digit words; DNSMOS P.835)\n")
    print("| prior | sampling | clips | recognised as the digit asked | recognised as some digit | DNSMOS OVRL |")
    print("|---|---|---:|---:|---:|---:|")
    seen_codecs = set()
    heard = []  # (row name, [(asked, word heard)]) for the table per digit
    for model in models:
        vqvae_dir, prior_dir = resolve_run(model)
        codec = load_codec(vqvae_dir)
        prior, config = load_audio_prior(prior_dir)
        classifier = load_run_classifier(prior_dir, config, codec)
        name = f"{model or 'pretrained'}"
        if real_files and codec.config["model_id"] not in seen_codecs:  # 0: samples only
            seen_codecs.add(codec.config["model_id"])
            for row, r in real_rows(codec, config, real_files, seconds).items():
                print(f"| {row} | | {r['n']} | {r['asked']:.0%} | {r['some']:.0%} | {r['ovrl']:.2f} |", flush=True)
                heard.append((row, r["heard"]))
        for text in controls_list:
            t0 = time.perf_counter()
            controls = with_prior_defaults(parse_controls(text), config)
            if not text:
                text = (f"defaults (guidance {controls.guidance:g}, temperature {controls.temperature:g}, "
                        f"best of {controls.candidates}, smoothing {controls.smoothing}, "
                        f"end silence {controls.end_silence:g} s)")
            r = sample_row(codec, prior, config, controls, per_label, seconds, classifier)
            asked = f"{r['asked']:.0%}" if r["asked"] == r["asked"] else "–"
            print(f"| {name} | {text or 'defaults'} | {r['n']} | {asked} | {r['some']:.0%} | {r['ovrl']:.2f} |"
                  f" <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)
            if r["heard"]:
                heard.append((f"{name}, {text}", r["heard"]))
    if heard:
        from vqaudio.listeners import confusion_table

        print("\nHeard as the digit asked, per word:\n")
        print(confusion_table(heard))


if __name__ == "__main__":
    main()
