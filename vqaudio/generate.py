"""New audio from a trained prior: sample code sequences, decode them with the VQ-VAE, write WAVs."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vqaudio.atomic import check_output_path
from vqaudio.audio_io import write_audio
from vqaudio.build import AUDIO_PRIOR, IMAGE_PRIOR, load_audio_classifier, load_audio_prior
from vqaudio.checkpoint import read_config, same_codes
from vqaudio.codec import PRETRAINED, load_codec
from vqaudio.errors import VqaudioError
from vqaudio.priors.sampling import Controls, candidate_seeds, pick_clearest, with_prior_defaults
from vqaudio.utterance import utterance_ends


def resolve_run(model: str | Path | None) -> tuple[Path, Path]:
    """(vqvae folder, prior folder) of a training run folder, of a prior folder whose parent
    holds the VQ-VAE, or of the pretrained model when ``model`` is None."""
    if model is None:
        if not (PRETRAINED / "prior" / "config.json").is_file():
            raise VqaudioError("no model given and no pretrained prior is installed; train one with "
                               "'vqaudio train recipes/speech.toml' and pass --model runs/speech")
        return PRETRAINED / "vqvae", PRETRAINED / "prior"
    path = Path(model)
    if not path.exists():
        raise VqaudioError(f"model {path}: no such folder; pass a training run folder such as runs/speech")
    if (path / "config.json").is_file():  # a model folder inside a run folder: use the run
        read_config(path)
        path = path.parent
    if not (path / "prior" / "config.json").is_file():
        raise VqaudioError(f"model {path}: has no prior (no prior/config.json); train one with "
                           f"'vqaudio train RECIPE --stage prior --out {path}' or pass a run folder that has one")
    return path / "vqvae", path / "prior"


def output_paths(output: Path, num: int) -> list[Path]:
    """``out.wav`` for one sample; ``out-1.wav`` … ``out-N.wav`` for several."""
    if num == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(1, num + 1)]


def sample(model: str | Path | None, seconds: float = 2.0, num: int = 1, output: Path | None = None,
           controls: Controls = Controls(), label: str | None = None, progress: bool = True) -> list[dict]:
    """``vqaudio sample``: new audio clips (WAVs of exactly ``seconds``) from an audio run, or
    one PNG grid of ``num`` images from an image run."""
    if num < 1:
        raise VqaudioError(f"--num must be at least 1, got {num}")
    controls.check()
    vqvae_dir, prior_dir = resolve_run(model)
    prior_config = read_config(prior_dir)
    controls = with_prior_defaults(controls, prior_config)
    if prior_config["kind"] == IMAGE_PRIOR:
        from vqaudio.image_commands import sample_images

        if controls.candidates != 1:
            raise VqaudioError(f"--candidates {controls.candidates}: best of N serves audio priors only; "
                               "leave out --candidates for an image model")
        if controls.smoothing != 1:
            raise VqaudioError(f"--smoothing {controls.smoothing}: smooths audio over time, for audio priors "
                               "only; leave out --smoothing for an image model")
        if controls.end_silence:
            raise VqaudioError(f"--end-silence {controls.end_silence:g}: ends audio clips after their first "
                               "utterance, for audio priors only; leave out --end-silence for an image model")

        output = output or Path("samples.png")
        check_output_path(output, f"-o {output}")
        ids, names = _labels(prior_config.get("labels", []), label, num, controls.seed)
        result = sample_images(vqvae_dir, prior_dir, num, output, controls, ids)
        return [{**result, "labels": names}]
    if prior_config["kind"] != AUDIO_PRIOR:
        raise VqaudioError(f"model {prior_dir}: is a '{prior_config['kind']}' model, not a prior")
    return sample_audio(vqvae_dir, prior_dir, seconds, num, output or Path("sample.wav"), controls, label, progress)


def sample_audio(vqvae_dir: Path, prior_dir: Path, seconds: float, num: int, output: Path,
                 controls: Controls, label: str | None, progress: bool) -> list[dict]:
    """Sample ``num`` clips of exactly ``seconds`` and write them; one result dict per file."""
    check_seconds(seconds)
    if output.suffix.lower() != ".wav":
        raise VqaudioError(f"-o {output}: sampled audio is written as WAV; give a name ending in .wav")
    paths = output_paths(output, num)
    for path in paths:  # all checked before the first clip is written
        check_output_path(path, f"-o {path}")
    codec, prior, config = load_audio_run(vqvae_dir, prior_dir)
    labels, names = _labels(config["labels"], label, num, controls.seed)
    clips = generate_clips(codec, prior, config, seconds, num, controls, labels, progress,
                           load_run_classifier(prior_dir, config, codec))
    results = []
    for path, wav, name in zip(paths, clips, names):
        write_audio(path, wav, codec.sample_rate)
        results.append({"output": str(path), "duration_s": len(wav) / codec.sample_rate,
                        "sample_rate": codec.sample_rate, "label": name, "levels": config["levels"],
                        "bitrate_kbps": config["bitrate_bps"] / 1000})
    return results


def load_audio_run(vqvae_dir: Path, prior_dir: Path):
    """(codec, prior, prior config) of an audio run whose prior was trained on this VQ-VAE."""
    codec = load_codec(vqvae_dir)
    prior, config = load_audio_prior(prior_dir)
    if not same_codes(config, codec.config):
        raise VqaudioError(f"model {prior_dir}: this prior was trained on the codes of another VQ-VAE "
                           f"(id {config['vqvae_model_id']}, {vqvae_dir} is {codec.config['model_id']}); "
                           "retrain it with --stage prior")
    return codec, prior, config


def load_run_classifier(prior_dir: Path, prior_config: dict, codec):
    """The code classifier beside ``prior_dir`` (``classifier/``, for --candidates), or None;
    it must read the codes of ``codec`` at the prior's levels, with the prior's labels."""
    folder = prior_dir.parent / "classifier"
    if not (folder / "config.json").is_file():
        return None
    classifier, config = load_audio_classifier(folder)
    if (not same_codes(config, codec.config) or config["labels"] != prior_config["labels"]
            or config["levels"] != prior_config["levels"]):
        raise VqaudioError(f"model {folder}: this classifier was trained on other codes or labels than "
                           f"{prior_dir}; retrain it with --stage classifier")
    return classifier


def generate_clips(codec, prior, config: dict, seconds: float, num: int, controls: Controls,
                   labels: torch.Tensor | None, progress: bool = False, classifier=None) -> list[np.ndarray]:
    """``num`` clips of exactly ``seconds`` ((T,) float32 in [-1, 1]): codes sampled from the
    prior (conditioned on ``labels`` (num,) when given; best of ``controls.candidates`` by
    ``classifier``), decoded."""
    frames = math.ceil(seconds * config["frames_per_second"])
    length = round(seconds * codec.sample_rate)
    if length < 1:
        raise VqaudioError(f"--seconds {seconds:g} is shorter than one sample at {codec.sample_rate} Hz; "
                           f"ask for at least {1 / codec.sample_rate:g} s")
    bar = tqdm(total=frames, desc="sampling", unit="frame", disable=not (progress and sys.stderr.isatty()))
    codes = draw_codes(prior, num, frames, controls, labels, classifier, progress=lambda t: bar.update(t - bar.n),
                       codec=codec).cpu()
    bar.close()
    return [np.clip(codec.decode(c.numpy(), length, smoothing=controls.smoothing or 1), -1.0, 1.0) for c in codes]


def draw_codes(prior, num: int, frames: int, controls: Controls, labels: torch.Tensor | None,
               classifier=None, progress=None, codec=None) -> torch.Tensor:
    """(num, frames, L) codes. With ``controls.candidates`` = N > 1, N candidates a clip are
    drawn in one batch (candidate 0 is the plain draw) and the one ``classifier``
    (priors/classifier.py) finds most likely the clip's label is kept: only that one is decoded.
    With ``controls.end_silence`` > 0 every candidate ends with its first utterance
    (``vqaudio.utterance``, from ``codec``'s code vectors) before it is ranked, and the draw
    stops once all have ended."""
    n = controls.candidates or 1
    if n == 1:
        return _draw_to_end(prior, num, frames, controls, labels, progress, None, codec)
    if labels is None:
        raise VqaudioError(f"--candidates {n}: keeps the candidate most likely its label, so it needs a "
                           "label-conditioned prior; use --candidates 1")
    if classifier is None:
        raise VqaudioError(f"--candidates {n}: needs the code classifier that ranks the candidates "
                           "(classifier/ beside prior/); train it with 'vqaudio train RECIPE --stage "
                           "classifier --out RUN', or use --candidates 1")
    codes = _draw_to_end(prior, n * num, frames, controls, labels.repeat(n), progress,
                         candidate_seeds(controls.seed, num, n), codec)
    with torch.no_grad():
        log_probs = classifier(codes).log_softmax(-1)
    return pick_clearest(codes, log_probs, labels, n)


def _draw_to_end(prior, rows: int, frames: int, controls: Controls, labels, progress, seeds, codec) -> torch.Tensor:
    """``prior.generate``, each row cut after its first utterance when ``controls.end_silence`` asks."""
    if not controls.end_silence:
        return prior.generate(rows, frames, controls, labels, progress, seeds=seeds)
    if codec is None:
        raise ValueError("end_silence finds the end of an utterance from the codec's code vectors: pass codec")
    ends = utterance_ends(codec, rows, controls.end_silence)
    codes = prior.generate(rows, frames, controls, labels, progress, seeds=seeds, until=ends.update)
    return torch.from_numpy(ends.cut(codes.cpu().numpy())).to(codes.device)


def check_seconds(seconds: float) -> None:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise VqaudioError(f"--seconds must be positive, got {seconds}; give the clip length, e.g. --seconds 2")


def _labels(vocab: list[str], label: str | None, num: int, seed: int):
    """Label tensor for the prior and the label names: the asked one, or (for a conditioned
    prior given none) labels drawn from the seed."""
    if not vocab:
        if label is not None:
            raise VqaudioError(f"--label {label}: this prior was trained without labels; "
                               "leave out --label (or train with prior.conditional = true)")
        return None, [None] * num
    if label is not None:
        if label not in vocab:
            raise VqaudioError(f"--label {label}: not a label this prior was trained with; "
                               f"choose one of {', '.join(vocab)}")
        ids = torch.full((num,), vocab.index(label), dtype=torch.long)
    else:
        # Row i's label comes from seed + i, like its codes: clip i of --num N --seed S is
        # the clip of --seed S+i.
        ids = torch.tensor([int(torch.randint(len(vocab), (), generator=torch.Generator().manual_seed(seed + i)))
                            for i in range(num)])
    return ids, [vocab[i] for i in ids.tolist()]
