"""``vqaudio train RECIPE --init MODEL``: a new run that starts from an existing model's weights
(fine-tuning released weights on one's own data). Only weights are taken: the optimizer, the
learning-rate schedule and the step start afresh. Buffers come with the weights, so a loaded
quantizer keeps its EMA statistics and its ``initialized`` flag and never re-runs k-means over
the loaded codebook."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from vqaudio.checkpoint import CONFIG, codes_id, load_state, read_config
from vqaudio.config import ImageRecipe, Recipe
from vqaudio.distributed import say
from vqaudio.errors import VqaudioError

REFIT = "fine-tune with the recipe the model was trained with (its config.json holds it)"


@dataclass
class InitModels:
    """The model folders ``--init`` names: the VQ-VAE's and the prior's (None when absent).
    ``prior_asked``: only the prior is trained (--stage prior), so its weights are what --init
    is for and a prior that does not fit is an error, not a fresh start."""
    given: Path
    vqvae: Path | None
    prior: Path | None
    prior_asked: bool = False


def init_models(init: str | Path, recipe: Recipe | ImageRecipe, stage: str = "all") -> InitModels:
    """Resolve ``--init``: a model folder (a VQ-VAE or a prior) or a training run folder with
    ``vqvae/`` (and ``prior/``) inside. Checks what can be checked without the data (the
    folders exist, their model kinds and sample rate suit the recipe) so a bad ``--init`` fails
    before anything is loaded or written."""
    path = Path(init)
    if (path / "vqvae" / CONFIG).is_file():
        prior = path / "prior"
        found = InitModels(path, path / "vqvae", prior if (prior / CONFIG).is_file() else None)
    else:
        try:
            kind = str(read_config(path)["kind"])
        except VqaudioError as e:
            raise VqaudioError(f"--init: {e}") from None
        found = InitModels(path, path if kind.endswith("-vqvae") else None, path if kind.endswith("-prior") else None)
    found.prior_asked = stage == "prior"
    for folder, role in ((found.vqvae, "vqvae"), (found.prior, "prior")):
        if folder is None:
            continue
        config = read_config(folder)
        expected = f"{recipe.kind}-{role}"
        if config["kind"] != expected:
            raise VqaudioError(f"--init {folder}: is an '{config['kind']}' model, but this recipe trains an "
                               f"'{expected}' model; pass a model of the recipe's kind")
        rate = config.get("sample_rate")
        if isinstance(recipe, Recipe) and rate is not None and rate != recipe.data.sample_rate:
            raise VqaudioError(f"--init {folder}: works at {rate} Hz, but this recipe at "
                               f"{recipe.data.sample_rate} Hz (data.sample_rate); {REFIT}")
    if found.vqvae is None and found.prior is None:
        raise VqaudioError(f"--init {path}: is neither a VQ-VAE nor a prior; pass a model folder or a "
                           "training run folder such as runs/speech")
    if found.vqvae is None and stage in ("vqvae", "all"):
        raise VqaudioError(f"--init {path}: holds a prior but no VQ-VAE to start the vqvae stage from; "
                           "pass the training run folder that holds both, or train --stage prior")
    return found


def first_mismatch(model: nn.Module, state: dict[str, Tensor]) -> str | None:
    """The first tensor whose name or shape differs between ``model`` and ``state``, in words."""
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            return f"{name} is missing there but in this recipe's model"
        if state[name].shape != tensor.shape:
            return (f"{name} has shape {tuple(state[name].shape)} there but {tuple(tensor.shape)} "
                    "in this recipe")
    extra = next((name for name in state if name not in own), None)
    return f"{extra} is there but not in this recipe's model" if extra else None


def added_tensors(model: nn.Module, state: dict[str, Tensor], may_add) -> list[str]:
    """The names of ``model``'s tensors missing from ``state`` when ``state`` is ``model`` without
    them (every tensor there is ``model``'s, same shape) and ``may_add(name)`` allows each one;
    empty otherwise."""
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    fits = (all(may_add(name) for name in missing)
            and all(name in own and own[name].shape == t.shape for name, t in state.items()))
    return missing if fits else []


def added_label_embeddings(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zeros for ``model``'s label embeddings (``….label.weight``, one per WaveNet layer) when
    ``state`` is ``model`` without them. Empty otherwise."""
    own = model.state_dict()
    return {name: torch.zeros_like(own[name])
            for name in added_tensors(model, state, lambda name: name.endswith(".label.weight"))}


def added_decoder_blocks(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``model``'s ConvNeXt decoder blocks past the last one in ``state``, each an identity
    (its own initial weights, its residual scale ``gamma`` at zero), when ``state`` is ``model``
    with fewer decoder blocks. Empty otherwise."""
    block = re.compile(r"^decoder\.blocks\.(\d+)\.")
    have = [int(m.group(1)) for name in state if (m := block.match(name))]
    if not have:
        return {}
    last = max(have)

    def later(name: str) -> bool:
        return bool(m := block.match(name)) and int(m.group(1)) > last

    own = model.state_dict()
    return {name: torch.zeros_like(own[name]) if name.endswith(".gamma") else own[name].clone()
            for name in added_tensors(model, state, later)}


def load_init(stage, init: InitModels) -> None:
    """Load the ``--init`` weights of ``stage`` (its ``name`` is "vqvae" or "prior"; a
    "classifier" always trains from scratch) into
    ``stage.model``. A VQ-VAE that does not fit the recipe is an error; an unlabelled prior
    starts a labelled one of its shape; a prior that does not fit (other levels, codebook size,
    labels or shape) is an error under --stage prior, and otherwise (the codec fine-tuned on
    data with other labels) left to train from scratch. Says which in one line."""
    folder = {"vqvae": init.vqvae, "prior": init.prior}.get(stage.name)  # a classifier starts afresh
    if folder is None:
        say(f"{stage.name}: training from scratch: --init {init.given} has no {stage.name}")
        return
    state = load_state(folder)
    zeros = added_label_embeddings(stage.model, state) if stage.name == "prior" else {}
    grown = added_decoder_blocks(stage.model, state) if stage.name == "vqvae" else {}
    if zeros:
        # An unlabelled prior (e.g. the entropy prior, trained on far more codes) starts a
        # labelled one: zero label embeddings add nothing, so training begins from its exact
        # predictions and learns only what the labels change.
        stage.model.load_state_dict({**state, **zeros}, strict=True)
        say(f"prior: starting from the weights of {folder}, an unlabelled prior; the label embeddings "
            "start at zero (optimizer and schedule start afresh)")
        return
    if grown:
        # A deeper decoder from a shallower one: the blocks added after the last start as
        # identities (residual scale 0), so training begins from the init model's exact output.
        state = {**state, **grown}
        added = sorted({int(name.split(".")[2]) for name in grown})
        say(f"vqvae: the decoder's blocks {added[0]}-{added[-1]} are new and start as identities "
            f"(residual scale 0); the rest comes from {folder}")
    why = first_mismatch(stage.model, state)
    if stage.name == "prior" and why is None:
        theirs = read_config(folder).get("labels", [])
        if list(theirs) != list(stage.labels):
            why = f"its labels {theirs} differ from this recipe's {stage.labels}"
    if why is not None:
        if stage.name == "vqvae" or init.prior_asked:
            raise VqaudioError(f"--init {folder}: {why}; {REFIT}")
        say(f"{stage.name}: training from scratch: --init {folder} does not fit this recipe ({why})")
        return
    stage.model.load_state_dict(state, strict=True)
    if getattr(stage.model, "codes_frozen", False):  # decoder-only: the codes stay the init model's
        stage.codes_of = {"codes_id": codes_id(read_config(folder))}
    say(f"{stage.name}: starting from the weights of {folder} (optimizer and schedule start afresh)")
