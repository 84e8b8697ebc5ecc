"""A model is a directory: ``config.json`` (everything needed to rebuild it) and
``weights.safetensors``. Loading never unpickles; writes are atomic (a new directory is
written beside the old one and swapped in)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from vqaudio import __version__
from vqaudio.atomic import write_bytes_atomic
from vqaudio.errors import VqaudioError

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"


def state_bytes(module: torch.nn.Module) -> bytes:
    # Save from the unwrapped module: no DDP/compile prefixes in the keys.
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return save_safetensors(state)


def save_model_dir(path: str | Path, module: torch.nn.Module, config: dict[str, Any],
                   extra: dict[str, bytes] | None = None) -> dict:
    """Write ``path/config.json`` + ``path/weights.safetensors`` (+ ``extra`` files, e.g. the
    training state of a checkpoint) atomically: all into a hidden folder beside ``path``, each
    file fsynced, then the folder renamed into place. The config gains ``model_id``, a hash of
    config and weights, so codes can name the exact model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = state_bytes(module)
    config = {**config, "vqaudio_version": __version__}
    config.pop("model_id", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + weights)
    config["model_id"] = digest.hexdigest()[:16]
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        write_bytes_atomic(tmp / WEIGHTS, weights)
        for name, data in (extra or {}).items():
            write_bytes_atomic(tmp / name, data)
        write_bytes_atomic(tmp / CONFIG, json.dumps(config, indent=2).encode())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config


def codes_id(vqvae_config: dict[str, Any]) -> str:
    """Which codes a VQ-VAE makes: its own ``model_id``, or for a decoder-only fine-tune
    (train.decoder_only) the id of the model whose encoder and codebooks it kept bitwise, so
    every input has the same codes under both and a prior trained on one serves the other."""
    return vqvae_config.get("codes_id") or vqvae_config["model_id"]


def same_codes(prior_config: dict[str, Any], vqvae_config: dict[str, Any]) -> bool:
    """Whether a prior was trained on the codes this VQ-VAE makes."""
    return prior_config.get("vqvae_codes_id", prior_config["vqvae_model_id"]) == codes_id(vqvae_config)


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise VqaudioError(f"model {path}: no such folder; pass a model directory "
                           "(with config.json and weights.safetensors) or a training run folder")
    if not path.is_dir():
        raise VqaudioError(f"model {path}: is a file; pass the model's folder, not a file in it")
    cfg = path / CONFIG
    if not cfg.is_file():
        raise VqaudioError(f"model {path}: {CONFIG} is missing; this is not a vqaudio model folder "
                           "(pass a model folder, or a training run folder such as runs/speech)")
    try:
        config = json.loads(cfg.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VqaudioError(f"model {path}: {CONFIG} is corrupt ({e}); re-train or re-copy the model")
    if not isinstance(config, dict) or "kind" not in config:
        raise VqaudioError(f"model {path}: {CONFIG} has no model 'kind'; not a vqaudio model folder")
    return config


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise VqaudioError(f"model {path}: {WEIGHTS} is missing; re-train or re-copy the model")
    try:
        return load_safetensors(weights.read_bytes())
    except (SafetensorError, ValueError, OSError) as e:
        raise VqaudioError(f"model {path}: {WEIGHTS} is not a valid safetensors file ({e}); "
                           "re-train or re-copy the model") from None


def load_into(module: torch.nn.Module, path: str | Path) -> None:
    """Load a model directory's weights into ``module`` (strict: every key and shape)."""
    state = load_state(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        # The first specific line ("size mismatch for …", "Missing key(s) …"), not the header.
        first = next((l for l in lines[1:] if l), lines[0] if lines else "")
        first = first if len(first) < 200 else first[:200] + "…"
        raise VqaudioError(f"model {path}: weights do not match its config.json ({first}); "
                           "the folder mixes files of different models") from None


def model_kind(model: str | Path | None) -> str | None:
    """The kind of a model folder or of a run folder's VQ-VAE; None when it is neither (the
    command's own loading then says what is wrong)."""
    if model is None:
        return None
    path = Path(model)
    for cfg in (path / "vqvae" / CONFIG, path / CONFIG):
        if cfg.is_file():
            try:
                return json.loads(cfg.read_text()).get("kind")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                return None
    return None


# -- training state (for --resume) ------------------------------------------------------------

STATE_TENSORS = "training-state.safetensors"
STATE_JSON = "training-state.json"


CRITIC_WEIGHTS = "critic.safetensors"


def _optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    opt = optimizer.state_dict()
    tensors = {f"{prefix}.{i}.{k}": v.detach().cpu().contiguous()
               for i, state in opt["state"].items() for k, v in state.items()}
    meta = {"optimizer_param_groups": opt["param_groups"],
            "optimizer_state_keys": {str(i): sorted(state) for i, state in opt["state"].items()}}
    return tensors, meta


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str) -> None:
    state = {int(i): {k: tensors[f"{prefix}.{i}.{k}"] for k in keys}
             for i, keys in meta["optimizer_state_keys"].items()}
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer_param_groups"]})


def training_state_files(step: int, optimizer: torch.optim.Optimizer, scheduler,
                         critic: tuple[torch.nn.Module, torch.optim.Optimizer, Any] | None = None) -> dict[str, bytes]:
    """Everything besides the weights that an exact resume needs, as two files: tensors
    (optimizer moments, torch and numpy RNG states) in safetensors and the rest (step, optimizer
    hyper-parameters, scheduler, python RNG) in JSON. Never pickle. ``critic`` (a stage's
    second model, e.g. a discriminator, with its optimizer and schedule) adds its weights as a
    third file and its optimizer and schedule to the other two."""
    import random

    import numpy as np

    tensors, opt_meta = _optimizer_tensors(optimizer, "optimizer")
    files: dict[str, bytes] = {}
    critic_meta = None
    if critic is not None:
        module, c_opt, c_sched = critic
        c_tensors, critic_meta = _optimizer_tensors(c_opt, "critic_optimizer")
        critic_meta["scheduler"] = c_sched.state_dict()
        tensors.update(c_tensors)
        files[CRITIC_WEIGHTS] = state_bytes(module)
    np_state = np.random.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()  # the current GPU's
    py_state = random.getstate()
    meta = {
        "step": step,
        **opt_meta,
        "scheduler": scheduler.state_dict(),
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if critic_meta is not None:
        meta["critic"] = critic_meta
    return {**files, STATE_TENSORS: save_safetensors(tensors), STATE_JSON: json.dumps(meta).encode()}


def read_training_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The two state files of a checkpoint; VqaudioError when missing or damaged."""
    try:
        tensors = load_safetensors((path / STATE_TENSORS).read_bytes())
        meta = json.loads((path / STATE_JSON).read_text())
        meta["step"] = int(meta["step"])
    except (OSError, SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise VqaudioError(f"checkpoint {path}: training state missing or damaged ({type(e).__name__})") from None
    return tensors, meta


def restore_training_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                           optimizer: torch.optim.Optimizer, scheduler, critic=None,
                           path: Path | None = None) -> int:
    """Load optimizer, scheduler and RNG states saved by :func:`training_state_files` (and,
    with ``critic`` = (module, optimizer, scheduler), the critic's weights from ``path``);
    returns the step the checkpoint was taken after."""
    import random

    import numpy as np

    if critic is not None:
        module, c_opt, c_sched = critic
        if "critic" not in meta or not (path / CRITIC_WEIGHTS).is_file():
            raise VqaudioError(f"checkpoint {path}: has no discriminator state")
        try:
            module.load_state_dict(load_safetensors((path / CRITIC_WEIGHTS).read_bytes()), strict=True)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise VqaudioError(f"checkpoint {path}: discriminator weights damaged ({type(e).__name__})") from None
        _load_optimizer(c_opt, tensors, meta["critic"], "critic_optimizer")
        c_sched.load_state_dict(meta["critic"]["scheduler"])
    _load_optimizer(optimizer, tensors, meta, "optimizer")
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    kind, pos, has_gauss, gauss = meta["rng_numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss_next))
    return meta["step"]
