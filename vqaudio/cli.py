"""Command line: each command parses its arguments, calls one library function, prints.

Nothing here imports torch at module level, so ``vqaudio --help`` and ``--version`` are instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
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
    from vqaudio.errors import Interrupted

    try:
        fn()
    except Interrupted as e:  # Ctrl-C in training, after saving a checkpoint
        from vqaudio.distributed import is_main_process

        if is_main_process():  # under torchrun every rank stops; one says so
            typer.echo(str(e), err=True)
        raise typer.Exit(130)
    except VqaudioError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130)


Paths = Annotated[list[Path], typer.Argument(help="Audio files or folders of audio files (images "
                                             "for an image model: PNG files, an .npz / IDX set or a folder).",
                                             show_default=False)]
ModelOpt = Annotated[Optional[Path], typer.Option(
    "--model", "-m", help="Model folder or training run folder (default: the pretrained model).")]
BitrateOpt = Annotated[Optional[float], typer.Option(
    "--bitrate", "-b", help="Use the most quantizer levels whose bitrate is at most this (kb/s).")]
LevelsOpt = Annotated[Optional[int], typer.Option(
    "--levels", "-l", help="Use this many quantizer levels (default: all).")]


@app.command(help="Train a recipe: the VQ-VAE, then its prior.")
def train(
    recipe: Annotated[Path, typer.Argument(help="A TOML recipe, e.g. recipes/speech.toml.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", "-s", help="Override a recipe value: section.key=value (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run folder (default: runs/<recipe name>).")] = None,
    stage: Annotated[str, typer.Option(help="Which stages to train: all | vqvae | prior | classifier (prior reuses the run's VQ-VAE; "
                                       "the classifier, for sample --candidates, the run's prior data; all trains it "
                                       "when prior.candidates > 1).")] = "all",
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the newest complete checkpoint in the run folder "
                         "(with the same or another number of processes).")] = False,
    device: Annotated[str, typer.Option(
        help="auto | cpu | cuda (auto: CUDA when torch sees a GPU).")] = "auto",
    precision: Annotated[str, typer.Option(
        help="auto | fp32 | bf16: bf16 autocasts the networks (the quantizer stays float32); "
             "auto is bf16 on CUDA, fp32 on the CPU.")] = "auto",
    compile_: Annotated[bool, typer.Option(
        "--compile", help="torch.compile the model (slow first steps, faster after).")] = False,
    workers: Annotated[Optional[int], typer.Option(
        help="DataLoader worker processes (default: 0 on the CPU, up to 4 per GPU).")] = None,
    init: Annotated[Optional[Path], typer.Option(
        "--init", help="Start from this model's weights (a model folder, or a run folder with vqvae/ "
                       "and prior/): fine-tuning, with a fresh optimizer and schedule.")] = None,
) -> None:
    def go():
        from vqaudio.config import load_recipe
        from vqaudio.distributed import is_main_process
        from vqaudio.train import train_recipe

        r = load_recipe(recipe, set_ or [])
        run_dir = train_recipe(r, out, stage, resume, device, precision, compile_, workers, init)
        if not is_main_process():
            return
        typer.echo(f"trained {r.name}: models in {run_dir}, TensorBoard logs in {run_dir / 'tb'}")
        image = r.kind == "image"
        typer.echo(f"try: vqaudio resynth {'glyph.png' if image else 'some.wav'} --model {run_dir}")
        if stage != "vqvae" and not (image and r.quantizer.kind == "none"):
            typer.echo(f"     vqaudio sample {'--num 64 -o samples.png' if image else '--seconds 2'} --model {run_dir}")
    _run(go)


@app.command(help="Encode and decode audio files through a model; write the reconstructions.")
def resynth(
    inputs: Paths,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output file (one input) or folder (several inputs or a folder).")] = None,
    model: ModelOpt = None,
    bitrate: BitrateOpt = None,
    levels: LevelsOpt = None,
    input_rate: Annotated[bool, typer.Option(
        "--input-rate", help="Write at the input's sample rate instead of the model's.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
) -> None:
    def go():
        from vqaudio.checkpoint import model_kind

        if (model_kind(model) or "").startswith("image"):
            from vqaudio.image_commands import resynth_images

            for r in resynth_images(inputs, output, model):
                typer.echo(_json(r) if json_ else f"{r['output']}: {r['grid'][0]}x{r['grid'][1]} codes "
                           f"({r['bits']:.0f} bits), MSE {r['mse']:.4f}, PSNR {r['psnr_db']:.2f} dB")
            return
        from vqaudio.resynth import resynth_paths

        for result in resynth_paths(inputs, output, model, bitrate, levels, input_rate,
                                    progress=not json_):
            typer.echo(_json(result) if json_ else
                       f"{result['output']}: {result['duration_s']:.2f} s at "
                       f"{result['bitrate_kbps']:.3g} kb/s ({result['levels']} levels), "
                       f"SI-SNR {_score(result['si_snr_db'], '.2f', ' dB')}, "
                       f"mel distance {_score(result['mel_distance'], '.3f')}")
    _run(go)


def passive_omp_threads() -> None:
    """Idle torch threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE) unless the
    environment says otherwise. libgomp's default spins: beside a busy core (a training run)
    the spinning thread holds the core the working one needs, and each of the decoder's small
    parallel ops waits for a time slice: decoding 2 s of codes at 2 threads took 1.0 s instead
    of 0.03 s (bench/RESULTS.md, sampling). libgomp reads this when torch loads it, so it
    must come before the first torch import."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@app.command(help="Generate new audio from a model's prior: sample codes, decode, write WAVs.")
def sample(
    seconds: Annotated[float, typer.Option("--seconds", "-t", help="Duration of each audio clip.")] = 2.0,
    model: Annotated[Optional[Path], typer.Option(
        "--model", "-m", help="Training run folder with vqvae/ and prior/ (default: the pretrained speech model).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Audio: the WAV to write (sample.wav; with --num N, NAME-1.wav … "
        "NAME-N.wav). Images: one PNG grid (samples.png).")] = None,
    num: Annotated[int, typer.Option("--num", "-n", help="How many clips.")] = 1,
    temperature: Annotated[Optional[float], typer.Option(
        help="Sharpen (<1) or flatten (>1); 0 = most likely codes (default: the prior's prior.temperature).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Sample among the k most likely codes (0 = all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling: smallest set with this probability.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same audio.")] = 0,
    label: Annotated[Optional[str], typer.Option(
        "--label", help="Condition on a label (speech: the digit to say, 0-9; KMNIST: the class).")] = None,
    guidance: Annotated[Optional[float], typer.Option(
        "--guidance", help="How hard to hold to the label (classifier-free guidance; 1 = plain "
                           "conditioning, 0 = ignore it; default: the prior's prior.guidance).")] = None,
    candidates: Annotated[Optional[int], typer.Option(
        "--candidates", help="Draw N per clip and keep the one the run's code classifier finds most "
                             "likely the label (1 = plain draw; default: the prior's prior.candidates).")] = None,
    smoothing: Annotated[Optional[int], typer.Option(
        "--smoothing", help="Below 1 kHz, decode the drawn codes' latent low-passed over this many "
                            "frames (odd): steadier voices (1 = off; default: the prior's prior.smoothing).")] = None,
    end_silence: Annotated[Optional[float], typer.Option(
        "--end-silence", help="End each clip with its first utterance: once this many seconds of quiet "
                              "follow it, the rest is silence (0 = off; default: the prior's prior.end_silence).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print results as JSON lines.")] = False,
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Instead of -o: write a listening report to this new folder, --num clips "
                         "per label (or of --label) with players, spectrograms and listener scores "
                         "(audio models).")] = None,
    listeners: Annotated[bool, typer.Option(
        "--listeners/--no-listeners",
        help="With --report: DNSMOS of each clip and whether its label is recognised as a spoken "
             "digit (the eval extra).")] = True,
) -> None:
    def go():
        passive_omp_threads()
        from vqaudio.priors.sampling import Controls

        controls = Controls(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, guidance=guidance,
                            candidates=candidates, smoothing=smoothing, end_silence=end_silence)
        if report is not None:
            from vqaudio.report import sample_report

            if output is not None:
                raise VqaudioError("give either -o or --report: the report holds its own clips")
            for r in sample_report(model, seconds, num, controls, label, listeners, report):
                typer.echo(_json(r) if json_ else
                           f"label {r['label']} sample {r['sample']}: {r['duration_s']:.3g} s at "
                           f"{r['bitrate_kbps']:.3g} kb/s" + "".join(
                               f", {k} {v:.3g}" if isinstance(v, float) else f", {k} {v}"
                               for k, v in r.items() if k.startswith(("dnsmos", "digit"))))
            if not json_:
                typer.echo(f"report: {report / 'index.html'}")
            return
        from vqaudio.generate import sample as sample_

        for r in sample_(model, seconds, num, output, controls, label, progress=not json_):
            if json_:
                typer.echo(_json(r))
            elif "images" in r:
                labels = f", labels {' '.join(map(str, r['labels']))}" if r["labels"][0] is not None else ""
                typer.echo(f"{r['output']}: {r['images']} images{labels}")
            else:
                said = f", label {r['label']}" if r["label"] is not None else ""
                typer.echo(f"{r['output']}: {r['duration_s']:.3g} s at "
                           f"{r['bitrate_kbps']:.3g} kb/s ({r['levels']} levels){said}")
    _run(go)


@app.command(help="Encode an audio file to a codes file: compact .vqc (default) or .npz.")
def encode(
    input_: Annotated[Path, typer.Argument(help="An audio file.", show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="The codes file to write (.vqc, or .npz for the older format).")],
    model: ModelOpt = None,
    bitrate: BitrateOpt = None,
    levels: LevelsOpt = None,
    format_: Annotated[Optional[str], typer.Option(
        "--format", help="vqc (codes bit-packed at log2 K bits) | npz (default: from the name of -o).")] = None,
    entropy: Annotated[bool, typer.Option(
        "--entropy", help="Arithmetic-code the codes with the model's entropy prior (its entropy_prior/ "
                          "folder): smaller files, decoded exactly.")] = False,
) -> None:
    def go():
        from vqaudio.resynth import encode_path

        r = encode_path(input_, output, model, bitrate, levels, format_, entropy)
        typer.echo(f"{r['output']}: {r['frames']} frames x {r['levels']} levels for {r['duration_s']:.2f} s, "
                   f"{r['bytes']} bytes: {r['actual_kbps']:.3g} kb/s (nominal {r['bitrate_kbps']:.3g} kb/s)")
    _run(go)


@app.command(help="Decode a codes file (.vqc or .npz) back to audio.")
def decode(
    codes: Annotated[Path, typer.Argument(help="A codes file from 'vqaudio encode'.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="The WAV file to write.")],
    model: ModelOpt = None,
) -> None:
    def go():
        from vqaudio.resynth import decode_path

        r = decode_path(codes, output, model)
        typer.echo(f"{r['output']}: {r['duration_s']:.2f} s at {r['sample_rate']} Hz")
    _run(go)


@app.command(name="eval", help="Measure a model on audio files: quality, bitrate, code use, "
             "and what listener models hear (DNSMOS, digit recognition); --report writes a page "
             "to hear and see it beside Codec2 and Opus.")
def eval_(
    inputs: Paths,
    model: ModelOpt = None,
    bitrate: Annotated[Optional[list[float]], typer.Option(
        "--bitrate", "-b", help="Use the most quantizer levels whose bitrate is at most this (kb/s); "
                                "repeat for several.")] = None,
    levels: Annotated[Optional[list[int]], typer.Option(
        "--levels", "-l", help="Use this many quantizer levels (default: all); repeat for several.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (one line per bitrate).")] = False,
    listeners: Annotated[bool, typer.Option(
        "--listeners/--no-listeners",
        help="DNSMOS of the reconstructions and digit recognition of labelled files "
             "(the eval extra; about 0.4 s per file on a CPU). Audio models only.")] = True,
    report: Annotated[Optional[Path], typer.Option(
        "--report", help="Also write a listening report to this new folder: index.html with players, "
                         "spectrograms and metrics of the originals, vqaudio at each bitrate, Codec2 2400 "
                         "and Opus 6k (audio models).")] = None,
    report_files: Annotated[int, typer.Option(
        "--report-files", help="How many input files the report shows, spread over the labels or "
                               "speakers in their names.")] = 6,
) -> None:
    def go():
        from vqaudio.checkpoint import model_kind

        if (model_kind(model) or "").startswith("image"):
            from vqaudio.image_commands import evaluate_images

            if report is not None:
                raise VqaudioError(f"--report {report}: the listening report is for audio models")
            summaries = [evaluate_images(inputs, model)]
        elif report is not None:
            from vqaudio.report import eval_report

            summaries = eval_report(inputs, model, bitrate, levels, listeners, report, report_files)
        else:
            from vqaudio.resynth import evaluate_levels

            summaries = evaluate_levels(inputs, model, bitrate, levels, listeners)
        for i, summary in enumerate(summaries):
            if json_:
                typer.echo(_json(summary))
                continue
            if i:
                typer.echo("")
            for k, v in summary.items():
                typer.echo(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
        if report is not None and not json_:
            typer.echo(f"report: {report / 'index.html'}")
    _run(go)


def _score(value, spec: str, unit: str = "") -> str:
    """A metric as printed: the number with its unit, or its "n/a: <why>" as it is."""
    return value if isinstance(value, str) else f"{value:{spec}}{unit}"


def _json(obj) -> str:
    import json

    return json.dumps(obj, default=str)


def main() -> None:
    """Run the app; a usage error (an option of the wrong type, a missing argument, an unknown
    option) is one ``error:`` line and exit status 2, like every other bad input, instead of
    click's usage box."""
    try:
        status = app(prog_name="vqaudio", standalone_mode=False)
    except Exception as e:  # click's (vendored by typer) ClickException: has these two
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # plain 'vqaudio': the help, as before
            e.show()
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f"; see '{ctx.command_path} --help'" if ctx is not None else ""
        message = " ".join(e.format_message().split()).rstrip(".")
        typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(e.exit_code)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
