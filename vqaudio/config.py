"""Recipes: TOML files mapped onto dataclasses, validated before any work starts.

Recipe keys equal constructor argument names. Unknown keys, wrong types and out-of-range values
are errors naming the file, the section and the key (with a "did you mean" suggestion).
Overrides: ``--set train.lr=3e-4`` (values parsed as TOML, bare words as strings).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vqaudio.errors import VqaudioError


@dataclass
class DataConfig:
    folders: list[str] = field(default_factory=lambda: ["../data/fsdd"])  # relative to the recipe
    sample_rate: int = 8000
    segment_seconds: float = 0.5  # length of the random training crops
    peak: float = 0.9  # each file is scaled to this peak, in training and inference (0 = off)
    val_regex: str = r"_[0-4]\.wav$"  # file names that form the validation split ("" = hash split)
    val_fraction: float = 0.1  # used only when val_regex is ""
    max_files: int = 0  # 0 = every file; a small number for quick checks
    label_regex: str = ""  # first group of this regex on the file name is the label (prior)


@dataclass
class PriorDataConfig:
    """The prior's own files, when they differ from the codec's (e.g. the codec trains on
    speech + FSDD, the digit-conditioned prior on FSDD alone). Sample rate, peak and
    label_regex stay [data]'s: the prior models codes of the same codec."""
    folders: list[str] = field(default_factory=list)  # [] = [data]'s files and split (the keys below unused)
    val_regex: str = r"_[0-4]\.wav$"  # as in [data]
    val_fraction: float = 0.1
    max_files: int = 0


@dataclass
class ModelConfig:
    channels: int = 16  # width of the full-rate layers; doubled after every stride
    strides: list[int] = field(default_factory=lambda: [4, 4, 4])  # their product must be hop
    hop: int = 64  # samples per code frame (8 kHz / 64 = 125 frames per second)
    latent_dim: int = 64  # D, the size of the vectors that are quantized
    res_blocks: int = 2  # dilated residual blocks (dilations 1, 3, 9, …) per stage
    max_channels: int = 256
    decoder: str = "conv"  # "conv": mirrored transposed convs | "fourier": frame-rate net + inverse STFT
    decoder_dim: int = 256  # fourier: width of the ConvNeXt stack at the frame rate
    decoder_layers: int = 8  # fourier: ConvNeXt blocks
    n_fft: int = 0  # fourier: STFT size of the head (0 = 4 x hop)
    # fourier, at inference only: deepen the valleys between formants / harmonics of the
    # predicted spectrum (nn.audio.sharpen_spectrum); 0 = off. Changes no weights and no codes.
    postfilter: float = 0.0
    postfilter_harmonic: float = 0.0
    postfilter_max_levels: int = 0  # apply it to codes of at most this many levels (0 = any)


@dataclass
class QuantizerConfig:
    kind: str = "ema"  # "ema" | "gradient"
    num_codes: int = 512  # K per level
    levels: int = 5  # residual VQ levels
    dropout: bool = True  # quantizer dropout: one model serves 1..levels levels
    beta: float = 0.25
    decay: float = 0.99
    eps: float = 1e-5
    kmeans_init: bool = True
    kmeans_iters: int = 10
    restart_after: int = 50  # steps unused before a code is re-seeded (0 = never)
    cosine: bool = False
    code_dim: int = 0  # 0 = quantize in latent_dim itself


@dataclass
class LossConfig:
    l1: float = 20.0
    stft: float = 1.0
    mel: float = 1.0
    mfcc: float = 0.0  # L1 of 13 mel-frequency cepstra (256-point FFT, 40 bands): the recogniser's view
    # 1 - cos of the error in the STFT's phase steps between frames and between bins, weighted
    # by amplitude (losses.RelativePhaseLoss): coherent partials, which DNSMOS hears
    phase: float = 0.0
    quantizer: float = 1.0  # weight of the quantizer's commitment (+ codebook) loss
    adversarial: float = 0.0  # hinge loss of a multi-scale STFT discriminator (0 = no discriminator)
    feature_matching: float = 0.0  # L1 between its features of real and decoded audio
    discriminator_channels: int = 32  # width of each STFT discriminator
    # The STFT and mel terms' resolutions (hop = n_fft / 4), one mel-band count per FFT size.
    fft_sizes: list[int] = field(default_factory=lambda: [128, 256, 512])
    n_mels: list[int] = field(default_factory=lambda: [16, 32, 64])


@dataclass
class TrainConfig:
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 25
    val_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    num_threads: int = 0  # torch threads; 0 = torch's default
    nonfinite: str = "stop"  # a NaN/Inf loss or gradient: "stop" with an error, or "skip" the batch


@dataclass
class VQVAETrainConfig(TrainConfig):
    """[train]: the VQ-VAE stage's loop, with what only that stage can do."""
    # Train the decoder alone. The encoder and codebooks keep their --init weights, so every
    # input keeps its codes and priors trained on them stay valid.
    decoder_only: bool = False


@dataclass
class PriorConfig:
    levels: int = 2  # residual-VQ levels the prior models (sampled audio decodes at that bitrate)
    channels: int = 64
    cycles: int = 2  # dilations 1, 2, … 2^(layers_per_cycle-1), repeated this many times
    layers_per_cycle: int = 7  # receptive field 1 + cycles · (2^layers_per_cycle - 1) steps
    # Code frames per step of the prior: 2 lets it see the codec at half its frame rate (half
    # the passes through the layers when sampling, each step modelling 2 x levels codes).
    frame_stack: int = 1
    conditional: bool = False  # condition on the label taken by data.label_regex
    # Classifier-free guidance: label_dropout > 0 trains the prior without its label that
    # often (a "null" label), so `vqaudio sample` can push samples toward the label asked for:
    # guidance is its default strength (1 = plain conditioning; needs label_dropout > 0 otherwise).
    label_dropout: float = 0.0
    guidance: float = 1.0
    temperature: float = 1.0  # vqaudio sample's default --temperature (< 1 sharpens, 0 = most likely codes)
    # vqaudio sample's default --candidates: draw this many per clip and keep the one the code
    # classifier (--stage classifier) finds most likely the label asked (needs conditional).
    candidates: int = 1
    # vqaudio sample's default --smoothing: below 1 kHz, decode the drawn latent low-passed over
    # this many frames (odd; 1 = off), for steadier voices (codec.smooth_latent).
    smoothing: int = 1
    # vqaudio sample's default --end-silence: end each clip with its first utterance, once this
    # many seconds of quiet follow it (0 = off; vqaudio/utterance.py).
    end_silence: float = 0.0
    sequence_frames: int = 128  # length of the training crops of code sequences
    pad_seconds: float = 0.25  # silence added before and after each file before encoding
    # Speed perturbation of the prior's training files (validation files stay as they are):
    # each is encoded once per factor, played that much faster (tempo and pitch together, a
    # shorter or longer vocal tract): more voices for a prior trained on few speakers.
    train_speeds: list[float] = field(default_factory=lambda: [1.0])
    sample_seconds: float = 2.0  # length of the clips sampled into TensorBoard at validation
    # Start the prior's code embeddings from the codec's code vectors (WaveNetPrior.embed_codebooks)
    # instead of at random; --init still replaces them with the init model's.
    embed_from_codebook: bool = False


def _prior_train() -> "TrainConfig":
    return TrainConfig(steps=1500, batch_size=32, lr=2e-3, val_every=250, checkpoint_every=500)


@dataclass
class Recipe:
    """An audio recipe: VQ-VAE over waveforms, WaveNet prior over code sequences."""
    name: str = "speech"
    kind: str = "audio"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: VQVAETrainConfig = field(default_factory=VQVAETrainConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    prior_train: TrainConfig = field(default_factory=_prior_train)  # the prior stage's loop
    prior_data: PriorDataConfig = field(default_factory=PriorDataConfig)  # the prior's files, if not [data]'s
    source: str = field(default="", metadata={"internal": True})  # the recipe file, for messages

    def prior_files(self) -> DataConfig | PriorDataConfig:
        """The section that chooses the prior's files: [prior_data] when it names folders,
        else [data]."""
        return self.prior_data if self.prior_data.folders else self.data

    def resolve(self, path: str) -> Path:
        """A data path from the recipe: relative paths are relative to the recipe's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() or not self.source else Path(self.source).parent / p

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


@dataclass
class ImageDataConfig:
    path: str = "../data/kmnist/kmnist-10k-imgs.npz"  # .npz, IDX file or folder of PNGs
    labels: str = ""  # labels file ("" = found beside the images, or the PNG subfolder names)
    val_count: int = 1000  # the last images are the validation split
    max_images: int = 0  # 0 = every image; a small number for quick checks


@dataclass
class ImageModelConfig:
    in_channels: int = 1  # 1 = grayscale, 3 = RGB
    image_size: int = 28
    channels: int = 32  # width at full resolution; doubled after each downsample
    downsamples: int = 2  # 28x28 -> 7x7 code grid
    latent_dim: int = 16
    res_blocks: int = 1
    global_code: bool = False  # one code per image instead of a grid (the Keras example)
    # The decoder sees each latent grid at unit RMS, so its input scale stays put however far the
    # commitment loss shrinks the encoder's output (with it the VQ-VAE matches the autoencoder).
    decoder_input_norm: bool = False


@dataclass
class PixelCNNConfig:
    levels: int = 1  # residual-VQ levels the prior models (sampled images decode at that many)
    channels: int = 64
    layers: int = 8
    kernel: int = 3
    conditional: bool = False  # on the image labels: 'vqaudio sample --label 3'
    # Classifier-free guidance: label_dropout > 0 trains the prior without its label that
    # often (a "null" label), so `vqaudio sample` can push samples toward the label asked for:
    # guidance is its default strength (1 = plain conditioning; needs label_dropout > 0 otherwise).
    label_dropout: float = 0.0
    guidance: float = 1.0
    temperature: float = 1.0  # vqaudio sample's default --temperature (< 1 sharpens, 0 = most likely codes)


@dataclass
class ImageRecipe:
    """An image recipe: 2-D VQ-VAE turning images into code grids, gated PixelCNN prior."""
    name: str = "kmnist"
    kind: str = "image"
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(num_codes=64, levels=1, dropout=False))
    train: VQVAETrainConfig = field(default_factory=VQVAETrainConfig)
    prior: PixelCNNConfig = field(default_factory=PixelCNNConfig)
    prior_train: TrainConfig = field(default_factory=_prior_train)
    source: str = field(default="", metadata={"internal": True})

    resolve = Recipe.resolve
    to_dict = Recipe.to_dict


DECODERS = ("conv", "fourier")
RECIPE_KINDS = {"audio": Recipe, "image": ImageRecipe}


# -- loading ---------------------------------------------------------------------------------

def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe | ImageRecipe:
    """Read, override and validate a TOML recipe. Errors are VqaudioError lines."""
    path = Path(path)
    if not path.is_file():
        hint = "it is a folder" if path.is_dir() else "no such file"
        raise VqaudioError(f"recipe {path}: {hint}; pass a .toml recipe such as recipes/speech.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VqaudioError(f"recipe {path}: not valid TOML ({e}); fix the file there") from None
    for item in overrides:
        _apply_override(raw, item, path)
    recipe = from_dict(raw, str(path))
    recipe.source = str(path)
    validate(recipe)
    return recipe


# Keys that recipes and saved models of earlier versions carry where they meant nothing: dropped
# when they hold that meaningless value (anything else is an unknown key, an error).
RETIRED_KEYS = {("prior_train", "decoder_only"): False}


def from_dict(raw: dict[str, Any], where: str = "config") -> Recipe | ImageRecipe:
    """The recipe class named by the top-level ``kind`` ("audio" by default)."""
    for (section, key), meaningless in RETIRED_KEYS.items():
        if isinstance(raw.get(section), dict) and raw[section].get(key, not meaningless) is meaningless:
            raw = {**raw, section: {k: v for k, v in raw[section].items() if k != key}}
    kind = raw.get("kind", "audio")
    if kind not in RECIPE_KINDS:
        raise VqaudioError(f"recipe {where}: 'kind' must be one of {', '.join(RECIPE_KINDS)}, got {kind!r}")
    return _build(RECIPE_KINDS[kind], raw, where, section="")


def with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A stored recipe (a model's or checkpoint's config.json) with every section and key,
    those it lacks at their defaults: it was saved before they existed, and the defaults give
    the behaviour it was trained with. Returned unchanged when it does not parse."""
    try:
        return from_dict(raw).to_dict()
    except VqaudioError:
        return raw


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise VqaudioError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # bare words are strings: --set name=my_run
    *sections, leaf = key.strip().split(".")
    node = raw
    for s in sections:
        node = node.setdefault(s, {})
        if not isinstance(node, dict):
            raise VqaudioError(f"--set {item!r}: {s} is not a section")
    node[leaf] = value


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; valid keys: {', '.join(choices)}"


def _build(cls, raw: dict[str, Any], where: str, section: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in raw.items():
        label = f"{section}.{key}" if section else key
        if key not in fields:
            kind = "section or key" if not section else "key"
            raise VqaudioError(f"recipe {where}: unknown {kind} '{label}'"
                               + _suggest(key, list(fields)))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise VqaudioError(f"recipe {where}: '{label}' must be a [{key}] section")
            kwargs[key] = _build(hint, value, where, label)
        else:
            kwargs[key] = _check_type(value, hint, where, label)
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str, label: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise VqaudioError(f"recipe {where}: '{label}' must be a list of {item.__name__}, "
                               f"got {value!r}")
        return [_check_type(v, item, where, label) for v in value]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported recipe type {hint}")  # keep recipe types simple
    ok = (isinstance(value, hint) and not (hint is int and isinstance(value, bool))) or (
        hint is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise VqaudioError(f"recipe {where}: '{label}' must be {hint.__name__}, got {value!r}")
    return float(value) if hint is float else value


def _checker(r):
    def bad(label: str, why: str) -> VqaudioError:
        return VqaudioError(f"recipe {r.source or 'config'}: '{label}' {why}")
    return bad


def _check_ranges(r, positive: dict[str, Any], non_negative: dict[str, Any]) -> None:
    """Shared range checks: the given values plus the quantizer and both training loops."""
    bad = _checker(r)
    positive = {**positive, "quantizer.levels": r.quantizer.levels,
                "quantizer.kmeans_iters": r.quantizer.kmeans_iters}
    non_negative = {**non_negative, "quantizer.beta": r.quantizer.beta,
                    "quantizer.restart_after": r.quantizer.restart_after,
                    "quantizer.code_dim": r.quantizer.code_dim}
    for name in ("train", "prior_train"):  # the two stages' training loops
        t = getattr(r, name)
        positive.update({f"{name}.{k}": getattr(t, k) for k in (
            "steps", "batch_size", "lr", "log_every", "val_every", "checkpoint_every", "keep_checkpoints")})
        non_negative.update({f"{name}.{k}": getattr(t, k) for k in (
            "warmup_steps", "grad_clip", "weight_decay", "num_threads")})
    for label, value in positive.items():
        if not value > 0:
            raise bad(label, f"must be positive, got {value}")
    for label, value in non_negative.items():
        if value < 0:
            raise bad(label, f"must not be negative, got {value}")
    kinds = ("ema", "gradient", "none") if isinstance(r, ImageRecipe) else ("ema", "gradient")
    if r.quantizer.kind not in kinds:
        raise bad("quantizer.kind", f"must be {' or '.join(repr(k) for k in kinds)}, got {r.quantizer.kind!r}")
    if r.quantizer.num_codes < 2:
        raise bad("quantizer.num_codes", f"must be at least 2, got {r.quantizer.num_codes}")
    if not 0 < r.quantizer.decay < 1:
        raise bad("quantizer.decay", f"must be between 0 and 1, got {r.quantizer.decay}")
    for name in ("train", "prior_train"):
        if getattr(r, name).nonfinite not in ("stop", "skip"):
            raise bad(f"{name}.nonfinite", f"must be 'stop' or 'skip', got {getattr(r, name).nonfinite!r}")
    if not 0 <= r.prior.label_dropout < 1:
        raise bad("prior.label_dropout", f"must be at least 0 and below 1, got {r.prior.label_dropout}")
    if r.prior.label_dropout and not r.prior.conditional:
        raise bad("prior.label_dropout", "needs a label-conditioned prior: set prior.conditional = true "
                  "or prior.label_dropout = 0")
    if not (r.prior.guidance >= 0 and math.isfinite(r.prior.guidance)):
        raise bad("prior.guidance", f"must be 0 or more, got {r.prior.guidance}")
    if not (r.prior.temperature >= 0 and math.isfinite(r.prior.temperature)):
        raise bad("prior.temperature", f"must be 0 or more, got {r.prior.temperature}")
    if r.prior.guidance != 1 and not r.prior.label_dropout:
        raise bad("prior.guidance", "needs a prior trained with label dropout: set prior.label_dropout "
                  "(e.g. 0.1) or prior.guidance = 1")
    if not r.name or "/" in r.name:
        raise bad("name", f"must be a plain folder name, got {r.name!r}")


def validate(r: Recipe | ImageRecipe) -> None:
    """Range checks that types alone cannot express."""
    if isinstance(r, ImageRecipe):
        return _validate_image(r)
    bad = _checker(r)
    _check_ranges(r, positive={
        "data.sample_rate": r.data.sample_rate, "data.segment_seconds": r.data.segment_seconds,
        "model.channels": r.model.channels, "model.latent_dim": r.model.latent_dim,
        "model.max_channels": r.model.max_channels, "prior.levels": r.prior.levels,
        "model.decoder_dim": r.model.decoder_dim, "model.decoder_layers": r.model.decoder_layers,
        "loss.discriminator_channels": r.loss.discriminator_channels,
        "prior.channels": r.prior.channels, "prior.cycles": r.prior.cycles,
        "prior.layers_per_cycle": r.prior.layers_per_cycle, "prior.sample_seconds": r.prior.sample_seconds,
        "prior.frame_stack": r.prior.frame_stack,
    }, non_negative={
        "model.res_blocks": r.model.res_blocks, "model.n_fft": r.model.n_fft,
        "model.postfilter": r.model.postfilter, "model.postfilter_harmonic": r.model.postfilter_harmonic,
        "model.postfilter_max_levels": r.model.postfilter_max_levels, "prior.pad_seconds": r.prior.pad_seconds,
        "data.max_files": r.data.max_files, "data.peak": r.data.peak, "loss.l1": r.loss.l1,
        "loss.stft": r.loss.stft, "loss.mel": r.loss.mel, "loss.mfcc": r.loss.mfcc, "loss.phase": r.loss.phase,
        "loss.quantizer": r.loss.quantizer,
        "loss.adversarial": r.loss.adversarial, "loss.feature_matching": r.loss.feature_matching,
    })
    if r.model.decoder not in DECODERS:
        raise bad("model.decoder", f"must be {' or '.join(repr(d) for d in DECODERS)}, got {r.model.decoder!r}")
    if r.model.decoder != "fourier" and (r.model.postfilter or r.model.postfilter_harmonic):
        raise bad("model.postfilter", f"filters the spectrum of the 'fourier' decoder; this recipe's "
                  f"decoder is {r.model.decoder!r}: set model.postfilter and model.postfilter_harmonic to 0")
    if r.model.decoder == "fourier":
        n_fft = r.model.n_fft or 4 * r.model.hop
        if n_fft < 2 * r.model.hop or (n_fft - r.model.hop) % 2:
            raise bad("model.n_fft", f"must be at least 2 x model.hop ({2 * r.model.hop}) and differ "
                      f"from the hop by an even number, got {n_fft}")
    if (not r.loss.fft_sizes or len(r.loss.fft_sizes) != len(r.loss.n_mels)
            or any(n < 8 for n in r.loss.fft_sizes) or any(m < 1 for m in r.loss.n_mels)):
        raise bad("loss.n_mels", f"must give one mel count >= 1 per FFT size >= 8 in loss.fft_sizes, "
                  f"got fft_sizes {r.loss.fft_sizes} and n_mels {r.loss.n_mels}")
    known_good = LossConfig()
    if (r.loss.fft_sizes, r.loss.n_mels) != (known_good.fft_sizes, known_good.n_mels):
        from .losses import mel_filterbank  # imports torchaudio: only for settings not known good
        for n_fft, n_mels in zip(r.loss.fft_sizes, r.loss.n_mels):
            try:
                mel_filterbank(n_fft, n_mels, r.data.sample_rate)
            except ValueError as e:
                raise bad("loss.n_mels", f"is too many for one FFT size: {e}") from None
    if r.loss.feature_matching and not r.loss.adversarial:
        raise bad("loss.feature_matching", "needs a discriminator: set loss.adversarial > 0 too")
    if not r.model.strides or any(s < 2 for s in r.model.strides):
        raise bad("model.strides", f"must be a non-empty list of integers >= 2, got {r.model.strides}")
    if math.prod(r.model.strides) != r.model.hop:
        raise bad("model.strides", f"multiply to {math.prod(r.model.strides)}, "
                  f"but model.hop is {r.model.hop}; make their product equal the hop")
    for name, d in (("data", r.data), ("prior_data", r.prior_data)):  # the two file choices
        if not 0 < d.val_fraction < 1:
            raise bad(f"{name}.val_fraction", f"must be between 0 and 1, got {d.val_fraction}")
        if d.max_files < 0:
            raise bad(f"{name}.max_files", f"must not be negative, got {d.max_files}")
        try:
            re.compile(d.val_regex)
        except re.error as e:
            raise bad(f"{name}.val_regex", f"is not a valid regular expression ({e})") from None
    if r.data.segment_seconds * r.data.sample_rate < r.model.hop:
        raise bad("data.segment_seconds", f"gives fewer samples than one hop ({r.model.hop})")
    if r.prior.levels > r.quantizer.levels:
        raise bad("prior.levels", f"is {r.prior.levels}, but the VQ-VAE has only "
                  f"quantizer.levels = {r.quantizer.levels}")
    if r.prior.candidates < 1:
        raise bad("prior.candidates", f"must be 1 or more, got {r.prior.candidates}")
    if r.prior.candidates > 1 and not r.prior.conditional:
        raise bad("prior.candidates", "keeps the candidate most clearly its label, so it needs a "
                  "label-conditioned prior: set prior.conditional = true or prior.candidates = 1")
    if r.prior.smoothing < 1 or r.prior.smoothing % 2 == 0:
        raise bad("prior.smoothing", f"must be an odd number of frames (1 = off, e.g. 5), got {r.prior.smoothing}")
    if not (r.prior.end_silence >= 0 and math.isfinite(r.prior.end_silence)):
        raise bad("prior.end_silence", f"must be 0 (off) or a number of seconds, got {r.prior.end_silence}")
    if r.prior.sequence_frames < 2:
        raise bad("prior.sequence_frames", f"must be at least 2, got {r.prior.sequence_frames}")
    if not r.prior.train_speeds or not all(0.5 <= s <= 2 for s in r.prior.train_speeds):
        raise bad("prior.train_speeds", f"must be a non-empty list of factors between 0.5 and 2, "
                  f"got {r.prior.train_speeds}")
    if r.prior.conditional and not r.data.label_regex:
        raise bad("prior.conditional", "is true but data.label_regex is empty; set a regex whose "
                  "first group is the label, or set prior.conditional = false")
    if not r.data.folders:
        raise bad("data.folders", "must name at least one folder of audio files")
    folders = [("data.folders", f) for f in r.data.folders] + [("prior_data.folders", f) for f in r.prior_data.folders]
    for label, folder in folders:
        if not r.resolve(folder).exists():
            raise bad(label, f"names {folder!r}, which does not exist "
                      f"(looked at {r.resolve(folder)}); paths are relative to the recipe file")
    from vqaudio.audio_io import list_audio_files  # here: audio_io imports numpy and soundfile

    for label, folder in folders:
        try:
            list_audio_files([r.resolve(folder)])
        except VqaudioError:  # exists (checked above), so the only error left is "nothing found"
            raise bad(label, f"names {folder!r}, which holds no audio files "
                      f"(looked at {r.resolve(folder)}); put audio files there or fix the path") from None


def _validate_image(r: ImageRecipe) -> None:
    bad = _checker(r)
    m = r.model
    _check_ranges(r, positive={
        "model.in_channels": m.in_channels, "model.image_size": m.image_size, "model.channels": m.channels,
        "model.latent_dim": m.latent_dim, "prior.channels": r.prior.channels, "prior.layers": r.prior.layers,
        "prior.levels": r.prior.levels,
    }, non_negative={"model.downsamples": m.downsamples, "model.res_blocks": m.res_blocks,
                     "data.val_count": r.data.val_count, "data.max_images": r.data.max_images})
    if m.image_size % 2 ** m.downsamples:
        raise bad("model.image_size", f"{m.image_size} is not divisible by 2^downsamples = {2 ** m.downsamples}")
    if r.prior.levels > r.quantizer.levels:
        raise bad("prior.levels", f"is {r.prior.levels}, but the VQ-VAE has only "
                  f"quantizer.levels = {r.quantizer.levels}")
    if r.prior.kernel < 3 or r.prior.kernel % 2 == 0:
        raise bad("prior.kernel", f"must be odd and at least 3, got {r.prior.kernel}")
    if r.data.val_count < 1:
        raise bad("data.val_count", f"must be at least 1, got {r.data.val_count}")
    if not r.resolve(r.data.path).exists():
        raise bad("data.path", f"names {r.data.path!r}, which does not exist "
                  f"(looked at {r.resolve(r.data.path)}); paths are relative to the recipe file")
    if r.data.labels and not r.resolve(r.data.labels).is_file():
        raise bad("data.labels", f"names {r.data.labels!r}, which is not a file "
                  f"(looked at {r.resolve(r.data.labels)})")
