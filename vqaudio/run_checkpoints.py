"""A stage's checkpoints in its run folder: saving them (the newest few kept) and resuming
from the newest complete one, refused when the recipe has changed since."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from vqaudio.distributed import say
from vqaudio.errors import VqaudioError

if TYPE_CHECKING:
    from vqaudio.train import Stage


def save_checkpoint(stage: Stage, run_dir: Path, step: int, keep: int, opt, sched, critic=None) -> Path:
    """``run_dir/checkpoints/<stage>-step<N>``: a full model directory plus the training state
    (written atomically, as one folder); only the newest ``keep`` are kept."""
    from vqaudio.checkpoint import training_state_files

    folder = run_dir / "checkpoints"
    path = folder / f"{stage.name}-step{step:07d}"
    stage.save(path, extra=training_state_files(step, opt, sched, critic))
    old = sorted(folder.glob(f"{stage.name}-step*"))[:-keep]
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return path


def resume_from_checkpoint(stage: Stage, run_dir: Path, opt, sched, critic=None) -> int:
    """Load the newest complete checkpoint of ``stage`` into model, optimizer, scheduler and
    RNGs; returns its step (0 when there is none: the stage starts from scratch). A damaged
    newest checkpoint is skipped with a warning in favour of the one before it."""
    from vqaudio.checkpoint import load_into, read_config, read_training_state, restore_training_state

    candidates = sorted((run_dir / "checkpoints").glob(f"{stage.name}-step*"), reverse=True)
    expected = stage.recipe.to_dict()
    for path in candidates:
        try:
            config = read_config(path)
            differ = recipe_differences(config.get("recipe") or {}, expected)
            if differ:
                raise RecipeMismatch(f"--resume: {path} was trained with another recipe (differs in "
                                     f"{', '.join(differ[:4]) or 'its settings'}); resume with the same "
                                     "recipe and --set values, or train into a new --out folder")
            tensors, meta = read_training_state(path)
            load_into(stage.model, path)
            if "codes_id" in config and hasattr(stage, "codes_of"):  # a decoder-only run's codes identity
                stage.codes_of = {"codes_id": config["codes_id"]}
            step = restore_training_state(tensors, meta, opt, sched, critic, path)
        except RecipeMismatch:
            raise
        except VqaudioError as e:
            say(f"warning: skipping checkpoint {path.name}: {e}")
            continue
        say(f"resuming {stage.name} from {path} (step {step})")
        return step
    if candidates:
        say(f"warning: no usable {stage.name} checkpoint in {run_dir / 'checkpoints'}; "
            f"training {stage.name} from the start")
    return 0


class RecipeMismatch(VqaudioError):
    pass


# Settings that do not change what is computed: they may differ between a run and its resume.
RESUME_FREE = {"num_threads", "log_every", "val_every", "keep_checkpoints"}


def recipe_differences(trained: dict, current: dict) -> list[str]:
    """``section.key`` names whose values differ between two recipe dicts. Sections and keys
    that ``trained`` lacks (saved before they existed) count as their defaults."""
    from vqaudio.config import with_defaults

    trained = with_defaults(trained) if trained else trained
    differ = []
    for sec in sorted(set(trained) | set(current)):
        a, b = trained.get(sec), current.get(sec)
        if isinstance(a, dict) and isinstance(b, dict):
            differ += [f"{sec}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in RESUME_FREE]
        elif a != b:
            differ.append(sec)
    return differ
