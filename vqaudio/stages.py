"""Training stages: what is specific to one model (its loss, validation, TensorBoard media,
saving); the loop in train.py is shared."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vqaudio.audio_io import list_audio_files
from vqaudio.build import (audio_classifier_config, audio_model_config, audio_prior_config,
                           build_audio_classifier, build_audio_discriminator, build_audio_prior, build_audio_vqvae)
from vqaudio.checkpoint import save_model_dir
from vqaudio.codec import Codec, load_codec
from vqaudio.config import DataConfig, PriorDataConfig, Recipe
from vqaudio.data.audio import AudioDataset, label_of, split_files
from vqaudio.data.codes import CodeCrops, CodeSequences, encode_files
from vqaudio.errors import VqaudioError
from vqaudio.generate import generate_clips
from vqaudio.losses import (ReconstructionLoss, discriminator_hinge_loss, feature_matching_loss,
                            generator_adversarial_loss)
from vqaudio.metrics import perplexity, si_snr, unigram_entropy_bits
from vqaudio.plots import spectrogram_image
from vqaudio.priors.sampling import Controls, drop_labels


def audio_splits(recipe: Recipe, d: DataConfig | PriorDataConfig | None = None) -> tuple[list[Path], list[Path]]:
    """The train and validation files chosen by ``d`` (default ``recipe.data``; the prior's
    are ``recipe.prior_files()``), each split capped at ``d.max_files`` when set."""
    d = d or recipe.data
    files = list_audio_files([recipe.resolve(f) for f in d.folders])
    try:
        train, val = split_files(files, d.val_regex or None, d.val_fraction)
    except VqaudioError as e:  # say which section's files and split
        section = "prior_data" if d is recipe.prior_data else "data"
        raise VqaudioError(f"recipe {recipe.source or 'config'}: [{section}] {e}") from None
    if d.max_files:
        # An evenly spread subset, so a few files still cover every label and speaker.
        train = train[:: max(1, len(train) // d.max_files)][: d.max_files]
        n_val = max(1, d.max_files // 4)
        val = val[:: max(1, len(val) // n_val)][:n_val]
    return train, val


class AudioVQVAEStage:
    name = "vqvae"

    def __init__(self, recipe: Recipe, val_set: AudioDataset):
        self.recipe = recipe
        self.num_codes = recipe.quantizer.num_codes  # for the collapse warning
        self.model = build_audio_vqvae(recipe)
        if recipe.train.decoder_only:
            self.model.freeze_codes()
        self.codes_of: dict[str, str] = {}  # {"codes_id": …} of the --init model a decoder-only run keeps
        self.criterion = ReconstructionLoss(
            recipe.data.sample_rate, {"l1": recipe.loss.l1, "stft": recipe.loss.stft,
                                      "mel": recipe.loss.mel, "mfcc": recipe.loss.mfcc,
                                      "phase": recipe.loss.phase},
            fft_sizes=recipe.loss.fft_sizes, n_mels=recipe.loss.n_mels)
        self.val_batch = torch.stack([val_set[i] for i in range(len(val_set))])  # (N, 1, T)
        # With loss.adversarial > 0 the loop also trains this discriminator (its "critic"),
        # with its own optimizer, on the pair the last generator step made.
        self.critic = build_audio_discriminator(recipe) if recipe.loss.adversarial > 0 else None
        self._pair: tuple[list, Tensor] | None = None  # critic(x) and x_hat of the last loss

    def loss(self, x: Tensor) -> tuple[Tensor, dict[str, float]]:
        self.criterion.to(x.device)  # its STFT windows and mel filters follow the model's device
        out = self.model(x)
        total, terms = self.criterion(out.x_hat, x, across_ranks=True)  # every rank trains
        total = total + self.recipe.loss.quantizer * out.q.loss
        if self.critic is not None:
            # The critic's weights take no gradient from the generator's loss (its own step
            # follows); the gradient still flows through it into x_hat.
            self.critic.requires_grad_(False)
            fake = self.critic(out.x_hat)
            self.critic.requires_grad_(True)
            # Judged once: feature matching reads these features detached, and the critic's
            # own loss reuses the logits (with their graph) in critic_loss.
            real = self.critic(x)
            self._pair = (real, out.x_hat.detach())
            terms["adversarial"] = generator_adversarial_loss(fake)
            terms["feature_matching"] = feature_matching_loss(real, fake, across_ranks=True)
            total = (total + self.recipe.loss.adversarial * terms["adversarial"]
                     + self.recipe.loss.feature_matching * terms["feature_matching"])
        scalars = {"loss": total.item(), **{k: v.item() for k, v in terms.items()},
                   "quantizer": out.q.loss.item(), "perplexity": out.q.perplexity.item(),
                   "codes_used": float(out.q.used)}
        return total, scalars

    def critic_loss(self) -> tuple[Tensor, dict[str, float]]:
        """The discriminator's hinge loss on the real and decoded audio of the last ``loss``."""
        real, x_hat = self._pair
        loss = discriminator_hinge_loss(real, self.critic(x_hat))
        return loss, {"discriminator": loss.item()}

    def validate(self, writer, step: int) -> dict[str, float]:
        """Loss and SI-SNR at 1 level and at every level; audio, spectrograms and code use."""
        x, sr = self.val_batch, self.recipe.data.sample_rate
        device = next(self.model.parameters()).device
        metrics: dict[str, float] = {}
        levels = sorted({1, self.recipe.quantizer.levels})
        for n in levels:
            out = self.model(x.to(device), levels=n)
            total, _ = self.criterion(out.x_hat, x.to(device))
            x_hat = out.x_hat.cpu()
            snr = np.mean([si_snr(a[0].numpy(), b[0].numpy()) for a, b in zip(x, x_hat)])
            metrics[f"loss_{n}lvl"] = total.item()
            metrics[f"si_snr_{n}lvl"] = float(snr)
        codes = out.q.codes.reshape(-1, out.q.codes.shape[-1]).cpu()  # (N * frames, levels)
        metrics["perplexity"] = perplexity(codes[:, 0], self.recipe.quantizer.num_codes)
        metrics["codes_used"] = float(codes[:, 0].unique().numel())
        for k, v in metrics.items():
            writer.add_scalar(f"{self.name}/val/{k}", v, step)
        for level in range(codes.shape[1]):
            writer.add_histogram(f"{self.name}/codes/level{level}", codes[:, level].numpy(), step,
                                 bins=np.arange(self.recipe.quantizer.num_codes + 1) - 0.5)
        for i in range(min(2, len(x))):
            # Original and reconstruction side by side in one clip, 0.25 s of silence between.
            gap = torch.zeros(sr // 4)
            clip = torch.cat([x[i, 0], gap, x_hat[i, 0].clamp(-1, 1)])
            writer.add_audio(f"{self.name}/audio/{i}_original_then_reconstruction", clip, step,
                             sample_rate=sr)
            picture = spectrogram_image([("original", x[i, 0].numpy()),
                                         (f"reconstruction, {levels[-1]} levels", x_hat[i, 0].clamp(-1, 1).numpy())],
                                        sr)
            writer.add_image(f"{self.name}/spectrogram/{i}_original_vs_reconstruction", picture, step,
                             dataformats="HWC")
        return metrics

    def save(self, directory: Path, extra: dict[str, bytes] | None = None) -> None:
        save_model_dir(directory, self.model, {**audio_model_config(self.recipe), **self.codes_of}, extra)


def audio_vqvae_stage(recipe: Recipe):
    """The VQ-VAE stage and its training set: items (1, T) by key (file, crop seed)."""
    train_files, val_files = audio_splits(recipe)
    d = recipe.data
    segment = int(d.segment_seconds * d.sample_rate)
    train_set = AudioDataset(train_files, d.sample_rate, segment, random_crop=True, peak=d.peak)
    val_set = AudioDataset(val_files, d.sample_rate, segment, random_crop=False, peak=d.peak)
    if len(train_set) < 1:
        raise VqaudioError(f"recipe {recipe.source}: no training files in data.folders")
    return AudioVQVAEStage(recipe, val_set), train_set


def code_vectors(codec: Codec) -> list[Tensor]:
    """Each quantizer level's code vectors (K, D): where the prior's and the classifier's code
    embeddings start."""
    return [torch.from_numpy(v) for v in codec.code_vectors]


class AudioPriorStage:
    """Teacher-forced cross-entropy of the WaveNet prior on cached code sequences."""

    name = "prior"

    def __init__(self, recipe: Recipe, codec: Codec, val: CodeSequences, labels: list[str]):
        self.recipe, self.codec, self.val, self.labels = recipe, codec, val, labels
        self.levels = recipe.prior.levels
        self.model = build_audio_prior(recipe, len(labels))
        if recipe.prior.embed_from_codebook:
            self.model.embed_codebooks(code_vectors(codec))

    def _labels(self, labels: Tensor) -> Tensor | None:
        return labels if self.labels else None

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]:
        codes, labels, _ = batch  # silence padding is data too: samples should end in silence
        labels = drop_labels(labels, self.recipe.prior.label_dropout, len(self.labels))
        nll = self.model.nll(codes, self._labels(labels))
        return nll, {"loss": nll.item(), "bits_per_code": nll.item() / math.log(2)}

    def validate(self, writer, step: int) -> dict[str, float]:
        """NLL in bits per code on the validation files (real frames only) beside the unigram
        entropy of their codes; a few sampled clips as audio and spectrograms."""
        codes = self.val.all_codes(self.levels)
        metrics = {
            "bits_per_code": float(prior_bits_per_code(self.model, self.val, bool(self.labels)).mean()),
            "unigram_entropy_bits": float(np.mean([
                unigram_entropy_bits(codes[:, l], self.recipe.quantizer.num_codes) for l in range(self.levels)])),
        }
        for k, v in metrics.items():
            writer.add_scalar(f"{self.name}/val/{k}", v, step)
        controls = Controls(seed=step, guidance=self.recipe.prior.guidance, temperature=self.recipe.prior.temperature,
                            smoothing=self.recipe.prior.smoothing, end_silence=self.recipe.prior.end_silence)
        for i, wav in enumerate(self.sample(2, self.recipe.prior.sample_seconds, controls)):
            tag = f"label_{self.labels[i % len(self.labels)]}" if self.labels else str(i)
            wav = np.clip(wav, -1, 1)
            writer.add_audio(f"{self.name}/samples/{tag}", torch.from_numpy(wav), step,
                             sample_rate=self.codec.sample_rate)
            writer.add_image(f"{self.name}/samples_spectrogram/{tag}",
                             spectrogram_image([(f"prior sample {tag.replace('_', ' ')}", wav)],
                                               self.codec.sample_rate), step, dataformats="HWC")
        return metrics

    def sample(self, num: int, seconds: float, controls: Controls) -> list[np.ndarray]:
        labels = torch.arange(num) % len(self.labels) if self.labels else None
        return generate_clips(self.codec, self.model, self.codec.config, seconds, num, controls, labels)

    def save(self, directory: Path, extra: dict[str, bytes] | None = None) -> None:
        save_model_dir(directory, self.model, audio_prior_config(self.recipe, self.codec.config, self.labels), extra)


@torch.no_grad()
def prior_bits_per_code(prior, sequences: CodeSequences, conditioned: bool) -> np.ndarray:
    """The prior's NLL in bits per code on whole sequences (real frames only), per level."""
    device = next(prior.parameters()).device
    total, frames = np.zeros(prior.levels), 0
    for batch in sequences.whole_batches(prior.levels):
        codes, labels, mask = (t.to(device) for t in batch)
        logits = prior(codes, labels if conditioned else None)
        ce = F.cross_entropy(logits.flatten(0, 2), codes.flatten(), reduction="none").view(codes.shape)
        total += (ce * mask.unsqueeze(-1)).sum((0, 1)).cpu().numpy()
        frames += int(mask.sum())
    return total / frames / math.log(2)


def audio_prior_stage(recipe: Recipe, run_dir: Path):
    """The prior stage and its training set: (codes, label, mask) crops by key. The
    VQ-VAE is the one in ``run_dir/vqvae``; the data set is encoded once and cached beside it."""
    codec, train, val, vocab = prior_codes(recipe, run_dir)
    return AudioPriorStage(recipe, codec, val, vocab), CodeCrops(train, recipe.prior.sequence_frames, recipe.prior.levels)


class AudioClassifierStage:
    """Cross-entropy of the code classifier (priors/classifier.py) on the prior's own training
    crops: which label a code sequence says, for ``vqaudio sample --candidates``."""

    name = "classifier"

    def __init__(self, recipe: Recipe, codec: Codec, val: CodeSequences, labels: list[str]):
        self.recipe, self.codec, self.val, self.labels = recipe, codec, val, labels
        self.levels = recipe.prior.levels
        self.model = build_audio_classifier(recipe, len(labels))
        self.model.embed_codebooks(code_vectors(codec))

    def loss(self, batch) -> tuple[Tensor, dict[str, float]]:
        codes, labels, _ = batch  # silence padding included: samples are clips with silence too
        logits = self.model(codes)
        loss = F.cross_entropy(logits, labels, label_smoothing=0.1)  # no certainty on one crop
        return loss, {"loss": loss.item(), "accuracy": (logits.argmax(-1) == labels).float().mean().item()}

    @torch.no_grad()
    def validate(self, writer, step: int) -> dict[str, float]:
        """Accuracy and cross-entropy on the validation files, whole."""
        device = next(self.model.parameters()).device
        right, loss = 0.0, 0.0
        for batch in self.val.whole_batches(self.levels):
            codes, labels, _ = (t.to(device) for t in batch)
            logits = self.model(codes)
            right += float((logits.argmax(-1) == labels).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        metrics = {"accuracy": right / len(self.val), "loss": loss / len(self.val)}
        for k, v in metrics.items():
            writer.add_scalar(f"{self.name}/val/{k}", v, step)
        return metrics

    def save(self, directory: Path, extra: dict[str, bytes] | None = None) -> None:
        save_model_dir(directory, self.model, audio_classifier_config(self.recipe, self.codec.config, self.labels),
                       extra)


def audio_classifier_stage(recipe: Recipe, run_dir: Path):
    """The classifier stage on the prior's data (the same cached codes, crops and labels)."""
    if not recipe.prior.conditional:
        raise VqaudioError("the classifier stage learns the prior's labels, and this recipe's prior has "
                           "none: set prior.conditional = true (and data.label_regex)")
    codec, train, val, vocab = prior_codes(recipe, run_dir)
    return AudioClassifierStage(recipe, codec, val, vocab), CodeCrops(train, recipe.prior.sequence_frames,
                                                                      recipe.prior.levels)


def prior_codes(recipe: Recipe, run_dir: Path) -> tuple[Codec, CodeSequences, CodeSequences, list[str]]:
    """(codec, training codes, validation codes, label vocabulary) of the prior's files, coded
    by the VQ-VAE in ``run_dir/vqvae``: encoded once, cached beside it."""
    if not (run_dir / "vqvae" / "config.json").is_file():
        raise VqaudioError(f"no trained VQ-VAE in {run_dir / 'vqvae'}; train it first with "
                           f"'vqaudio train {recipe.source or 'RECIPE'} --stage vqvae --out {run_dir}'")
    codec = load_codec(run_dir / "vqvae")
    if codec.config["num_codes"] != recipe.quantizer.num_codes or codec.max_levels < recipe.prior.levels:
        raise VqaudioError(f"the VQ-VAE in {run_dir / 'vqvae'} was trained with another quantizer "
                           f"({codec.max_levels} x {codec.config['num_codes']} codes); retrain it "
                           "with --stage all or use the recipe it was trained with")
    train_files, val_files = audio_splits(recipe, recipe.prior_files())
    vocab: list[str] = []
    if recipe.prior.conditional:
        names = [label_of(f, recipe.data.label_regex) for f in train_files + val_files]
        vocab = sorted(set(names), key=lambda s: (len(s), s))  # "2" before "10"
        ids = [vocab.index(n) for n in names]
    else:
        ids = [0] * (len(train_files) + len(val_files))
    p = recipe.prior
    train = encode_files(codec, train_files, ids[: len(train_files)], p.pad_seconds, run_dir / "codes-train.npz",
                         p.train_speeds)
    val = encode_files(codec, val_files, ids[len(train_files):], p.pad_seconds, run_dir / "codes-val.npz")
    return codec, train, val, vocab
