"""Command line: each command parses its arguments, calls one library function, prints.

Nothing here imports torch at module level, so ``vqaudio --help`` and ``--version`` are instant.
"""

from __future__ import annotations

import sys
from typing import Annotated, Callable, Optional

import typer

from vqaudio import __version__
from vqaudio.errors import VqaudioError

app = typer.Typer(
    help="vqaudio: discrete codes for audio with VQ-VAEs, and new audio from priors over them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vqaudio {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = None,
    debug: Annotated[bool, typer.Option(
        "--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    _state["debug"] = debug


def _run(fn: Callable[[], object]) -> None:
    """Call ``fn``; turn a VqaudioError (or Ctrl-C) into one line on stderr and exit 1."""
    try:
        fn()
    except VqaudioError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


def _not_yet(name: str) -> None:
    raise VqaudioError(f"'vqaudio {name}' is not available yet in this version")


@app.command(help="Train a recipe: the VQ-VAE, then its prior.")
def train() -> None:
    _run(lambda: _not_yet("train"))


@app.command(help="Encode and decode audio files through a model; write the reconstructions.")
def resynth() -> None:
    _run(lambda: _not_yet("resynth"))


@app.command(help="Generate new audio from a model's prior.")
def sample() -> None:
    _run(lambda: _not_yet("sample"))


@app.command(help="Encode an audio file to a codes file (.npz).")
def encode() -> None:
    _run(lambda: _not_yet("encode"))


@app.command(help="Decode a codes file (.npz) back to audio.")
def decode() -> None:
    _run(lambda: _not_yet("decode"))


@app.command(name="eval", help="Measure a model on a data folder: quality, bitrate, code use.")
def eval_() -> None:
    _run(lambda: _not_yet("eval"))


def main() -> None:
    app(prog_name="vqaudio")


if __name__ == "__main__":
    sys.exit(main())
