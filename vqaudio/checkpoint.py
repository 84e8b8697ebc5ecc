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


def save_model_dir(path: str | Path, module: torch.nn.Module, config: dict[str, Any]) -> dict:
    """Write ``path/config.json`` + ``path/weights.safetensors`` atomically. The config gains
    ``model_id``, a hash of config and weights, so codes can name the exact model."""
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


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise VqaudioError(f"model {path}: no such folder; pass a model directory "
                           "(with config.json and weights.safetensors) or a training run folder")
    if not path.is_dir():
        raise VqaudioError(f"model {path}: is a file; pass the model's folder, not a file in it")
    cfg = path / CONFIG
    if not cfg.is_file():
        raise VqaudioError(f"model {path}: {CONFIG} is missing; this is not a vqaudio model folder")
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
        first = str(e).splitlines()[0]
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
