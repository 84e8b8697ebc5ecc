"""File-level commands of a trained codec: resynth, encode, decode, eval.

Files are streamed in overlapping blocks (``Codec.chunk_samples``: 10 s kept per block, with
0.5 s of context on each side), so an hour of audio needs no more memory than
a few seconds. Outputs are written to a temporary file and renamed: an error never leaves a
partial file behind.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm import tqdm

from vqaudio.atomic import atomic_path, check_output_path
from vqaudio.audio_io import audio_info, list_audio_files, read_audio, read_audio_blocks
from vqaudio.codec import Codec, check_format, load_codec, load_codes, save_codes
from vqaudio.errors import VqaudioError
from vqaudio.listeners import LISTENER_KEYS
from vqaudio.metrics import Score, is_value, mel_distance, mel_setting, not_available, perplexity, quality_report

PROGRESS_SECONDS = 30.0  # show a progress bar for inputs longer than this


class SiSnr:
    """Scale-invariant SNR (dB, means removed) accumulated over blocks, exact for the whole
    signal: it needs only the sums of r, e, r², e² and r·e."""

    def __init__(self):
        self.n = 0
        self.s = np.zeros(5)  # Σr, Σe, Σr², Σe², Σre

    def add(self, ref: np.ndarray, est: np.ndarray) -> None:
        r, e = ref.astype(np.float64), est.astype(np.float64)
        self.n += r.size
        self.s += [r.sum(), e.sum(), r @ r, e @ e, r @ e]

    def value(self) -> Score:
        """SI-SNR in dB, or "n/a: <why>" where it is undefined (fewer than 2 samples, a silent
        reference), never NaN."""
        if self.n < 2:
            return not_available("input shorter than 2 samples")
        n = self.n
        sr, se, srr, see, sre = self.s
        cov, var_r, var_e = sre - sr * se / n, srr - sr * sr / n, see - se * se / n
        if var_r <= 1e-12:
            return not_available("silent input")
        target = cov * cov / var_r
        noise = max(var_e - target, 1e-12)
        return float(10 * np.log10(max(target, 1e-12) / noise))


def _blocks(codec: Codec, path: Path) -> Iterator[tuple[np.ndarray, int, int]]:
    """(block at the model rate, keep_start, keep_end): the kept parts tile the signal."""
    chunk, context = codec.chunk_samples()
    for k, block in enumerate(read_audio_blocks(path, chunk + 2 * context, 2 * context, codec.sample_rate)):
        yield block, (0 if k == 0 else context), min(len(block), chunk + context)


def _file_gain(codec: Codec, path: Path) -> float:
    """A first streaming pass for the file's peak, so the whole file gets one gain."""
    block = codec.chunk_samples()[0]
    peak = max(float(np.abs(b).max(initial=0)) for b in read_audio_blocks(path, block, 0, codec.sample_rate))
    return codec.gain(peak)


def _progress(path: Path, codec: Codec, show: bool):
    frames, rate, _ = audio_info(path)
    seconds = frames / rate
    chunk = codec.chunk_samples()[0] / codec.sample_rate
    return tqdm(total=math.ceil(seconds / chunk), desc=path.name, unit="chunk", leave=False,
                disable=not show or seconds <= PROGRESS_SECONDS), seconds, rate


def _check_output(src: Path, dst: Path, suffix: str = ".wav") -> None:
    """Refuse, before any work, an output that cannot or must not be written."""
    if dst.suffix.lower() != suffix:
        what = ("audio is written as WAV" if suffix == ".wav" else
                f"codes files in the {suffix[1:]} format end in {suffix} (--format vqc | npz)")
        raise VqaudioError(f"{dst}: {what}; give an output name ending in {suffix}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise VqaudioError(f"{dst}: the output would overwrite the input; choose another -o")
    check_output_path(dst, str(dst))


def _check_input(src: Path) -> None:
    """Header-level checks of an input (missing, a folder, truncated, not audio, no samples),
    so a batch stops before its first output is written, not halfway through."""
    frames, _, _ = audio_info(src)
    if frames == 0 and src.suffix.lower() != ".mp3":  # MP3 headers may not know the length
        raise VqaudioError(f"{src} has no samples (an empty or truncated file); remove it or export it again")


def _open_wav(tmp: Path, rate: int):
    return sf.SoundFile(tmp, "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV")


def resynth_file(codec: Codec, src: Path, dst: Path, levels: int, input_rate: bool = False,
                 progress: bool = True) -> dict:
    """Encode and decode ``src`` through ``codec``; write ``dst`` (WAV at the model rate, or at
    the input's rate with ``input_rate``). Returns duration, bitrate and quality metrics
    measured against the input at the model rate."""
    _check_output(src, dst)
    bar, seconds, rate = _progress(src, codec, progress)
    out_rate = rate if input_rate else codec.sample_rate
    resampler = (soxr.ResampleStream(codec.sample_rate, out_rate, 1, dtype="float32")
                 if out_rate != codec.sample_rate else None)
    snr, mel_sum, n = SiSnr(), 0.0, 0
    gain = _file_gain(codec, src)
    try:
        with atomic_path(dst) as tmp, _open_wav(tmp, out_rate) as f, torch.no_grad():
            for block, a, b in _blocks(codec, src):
                x = torch.from_numpy(block * gain)[None, None]
                y = codec.model(x, levels=levels).x_hat[0, 0].numpy() / gain
                ref, est = block[a:b], np.clip(y[a:b], -1, 1)
                snr.add(ref, est)
                mel_sum += mel_distance(ref, est, codec.sample_rate) * len(ref)
                n += len(ref)
                f.write(resampler.resample_chunk(est) if resampler else est)
                bar.update()
            if resampler:
                f.write(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    except (OSError, sf.SoundFileError) as e:
        raise VqaudioError(f"{dst}: cannot write ({getattr(e, 'strerror', None) or e}); "
                           "check the output folder is writable") from None
    finally:
        bar.close()
    n_fft = mel_setting(codec.sample_rate)[0]
    mel = (mel_sum / n if n >= n_fft else
           not_available(f"input shorter than {1000 * n_fft / codec.sample_rate:g} ms (one mel frame)"))
    return {"input": str(src), "output": str(dst), "duration_s": seconds, "levels": levels,
            "bitrate_kbps": codec.bitrate(levels) / 1000, "sample_rate": out_rate,
            "si_snr_db": snr.value(), "mel_distance": mel}


def plan_outputs(inputs: list[Path], output: Path | None, suffix: str = ".wav") -> list[tuple[Path, Path]]:
    """Pair each input file with its output path. One file: ``output`` or
    ``<stem>_resynth.wav`` here. Several files or a folder: files in the ``output`` folder
    (default ``resynth/``), keeping paths relative to the input folder."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise VqaudioError("no input given; pass audio files or folders")
    single = len(inputs) == 1 and not inputs[0].is_dir()
    if single:
        files = [inputs[0]]  # read_audio / audio_info give the clear error if it is missing
        dst = output or Path(f"{inputs[0].stem}_resynth{suffix}")
        if output is not None and output.is_dir():
            dst = output / f"{inputs[0].stem}{suffix}"
        return [(files[0], dst)]
    folder = output or Path("resynth")
    if folder.exists() and not folder.is_dir():
        raise VqaudioError(f"{folder}: several inputs need an output folder, and this is a file")
    pairs = []
    for given in inputs:
        files = list_audio_files([given])
        for f in files:
            rel = f.relative_to(given) if given.is_dir() else Path(f.name)
            pairs.append((f, folder / rel.with_suffix(suffix)))
    dsts = [d for _, d in pairs]
    if len(set(dsts)) != len(dsts):
        raise VqaudioError("two inputs would write the same output file; give them separate folders")
    return pairs


def resynth_paths(inputs: list[Path], output: Path | None, model: Path | None,
                  bitrate: float | None, levels: int | None, input_rate: bool = False,
                  progress: bool = True) -> Iterator[dict]:
    codec = load_codec(model)
    n = codec.pick_levels(bitrate, levels)
    pairs = plan_outputs(inputs, output)
    for src, dst in pairs:  # every input and output is checked before the first is written
        _check_input(src)
        if len(pairs) == 1 or dst.parent.is_dir():  # else its folder is made below
            _check_output(src, dst)
    for src, dst in pairs:
        if len(pairs) > 1:
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise VqaudioError(f"{dst.parent}: cannot create the output folder ({e.strerror})") from None
        yield resynth_file(codec, src, dst, n, input_rate, progress)


def encode_path(src: Path, dst: Path, model: Path | None, bitrate: float | None,
                levels: int | None, fmt: str | None = None, entropy: bool = False) -> dict:
    """Write the codes of ``src`` to ``dst`` with the model's identity: ``fmt`` "vqc" (the
    compact bitstream; ``entropy`` codes it with the model's entropy prior) or "npz"; None
    takes it from the name (.npz or .vqc)."""
    from vqaudio.bitstream import SUFFIX

    codec = load_codec(model)
    n = codec.pick_levels(bitrate, levels)
    src, dst = Path(src), Path(dst)
    fmt = check_format(fmt or ("npz" if dst.suffix.lower() == ".npz" else "vqc"))
    _check_output(src, dst, SUFFIX if fmt == "vqc" else ".npz")
    _check_input(src)
    prior = None
    if entropy:
        if fmt == "npz":
            raise VqaudioError("--entropy needs the compact format; leave out --format npz and write a .vqc file")
        prior = codec.entropy_prior()  # a missing or misfit prior fails before any work
    hop, pieces, length = codec.hop, [], 0
    gain = _file_gain(codec, Path(src))
    with torch.no_grad():
        for block, a, b in _blocks(codec, Path(src)):
            codes = codec.model.encode(torch.from_numpy(block * gain)[None, None], levels=n)[0]
            pieces.append(codes[a // hop: -(-b // hop)].numpy())
            length += b - a
    codes = np.concatenate(pieces)
    try:
        size = save_codes(dst, codec, codes, length, gain, fmt, prior)
    except OSError as e:
        raise VqaudioError(f"{dst}: cannot write ({e.strerror or e}); check the output folder is writable") from None
    seconds = length / codec.sample_rate
    return {"output": str(dst), "frames": codes.shape[0], "levels": n, "format": fmt, "entropy": entropy,
            "bitrate_kbps": codec.bitrate(n) / 1000, "bytes": size, "actual_kbps": size * 8 / seconds / 1000,
            "duration_s": seconds}


def decode_path(src: Path, dst: Path, model: Path | None) -> dict:
    """Decode a codes file made by ``encode_path`` with the same model; write a WAV."""
    codec = load_codec(model)
    codes, length, gain = load_codes(Path(src), codec)
    _check_output(Path(src), Path(dst))
    chunk, context = (n // codec.hop for n in codec.chunk_samples())  # in frames
    c = torch.from_numpy(codes)
    try:
        with atomic_path(dst) as tmp, _open_wav(tmp, codec.sample_rate) as f, torch.no_grad():
            for start in range(0, c.shape[0], chunk):
                lo, hi = max(0, start - context), min(c.shape[0], start + chunk + context)
                y = codec.model.decode(c[lo:hi][None])[0, 0]
                a = (start - lo) * codec.hop
                end = min(length, (start + chunk) * codec.hop) - start * codec.hop
                f.write(np.clip(y[a: a + end].numpy() / gain, -1, 1))
    except (OSError, sf.SoundFileError) as e:
        raise VqaudioError(f"{dst}: cannot write ({getattr(e, 'strerror', None) or e}); "
                           "check the output folder is writable") from None
    return {"output": str(dst), "duration_s": length / codec.sample_rate,
            "sample_rate": codec.sample_rate}


def evaluate_paths(inputs: list[Path], model: Path | None, bitrate: float | None,
                   levels: int | None, listeners: bool = True) -> dict:
    """Mean quality over audio files, nothing written: SI-SNR, log-mel distance, PESQ-nb and
    STOI (when pesq / pystoi are installed: the ``eval`` extra), bitrate, and the first
    level's codebook perplexity and share of codes used. Files are processed whole.

    With ``listeners`` (which needs the ``eval`` extra) also the DNSMOS SIG/BAK/OVRL of the
    reconstructions and, over the files whose names carry a digit label (``7_theo_3.wav``),
    "digit_files" and the share of them recognised as their digit: "digit_accuracy" for the
    reconstructions, "digit_accuracy_input" for the inputs (see ``vqaudio.listeners``).

    A metric no file can be scored by is ``"n/a: <why>"`` (e.g. "n/a: input shorter than
    0.39 s" for STOI), never NaN; one only some files can be scored by is their mean, and
    "<metric>_files" says how many."""
    codec = load_codec(model)
    n = codec.pick_levels(bitrate, levels)
    return evaluate_codec(codec, list_audio_files(inputs), [n], listeners)[0]


def evaluate_levels(inputs: list[Path], model: Path | None, bitrates: list[float] | None,
                    levels: list[int] | None, listeners: bool = True) -> list[dict]:
    """``evaluate_paths`` at several bitrates or level counts in one pass over the files:
    one summary per level count (``level_counts``)."""
    codec = load_codec(model)
    return evaluate_codec(codec, list_audio_files(inputs), level_counts(codec, bitrates, levels), listeners)


def level_counts(codec: Codec, bitrates: list[float] | None, levels: list[int] | None) -> list[int]:
    """The level counts asked for by several ``--bitrate`` or ``--levels`` (each as in
    ``Codec.pick_levels``), sorted and without repeats; all levels when neither is given."""
    if bitrates and levels:
        raise VqaudioError("give either --bitrate or --levels, not both")
    if not bitrates and not levels:
        return [codec.max_levels]
    return sorted({codec.pick_levels(b, None) for b in bitrates or []}
                  | {codec.pick_levels(None, n) for n in levels or []})


FileResult = Callable[[Path, np.ndarray, dict[int, tuple[np.ndarray, dict]]], None]


def evaluate_codec(codec: Codec, files: list[Path], levels: list[int], listeners: bool = True,
                   on_file: FileResult | None = None) -> list[dict]:
    """``evaluate_paths`` for each level count in ``levels``: one summary per count. After
    each file, ``on_file(path, wav, {levels: (reconstruction, scores)})`` when given (the
    report keeps the files it shows)."""
    if listeners:
        from vqaudio.listeners import check_available, listener_report

        check_available()  # a missing extra fails before the first file, not after it
    reports: dict[int, list[dict]] = {n: [] for n in levels}
    first_level = []
    for f in files:
        wav, _ = read_audio(f, codec.sample_rate)
        results = {}
        for n in levels:
            est = codec.resynth(wav, n)
            report = quality_report(wav, est, codec.sample_rate)
            if listeners:
                report.update(listener_report(est, codec.sample_rate, f, wav))
            reports[n].append(report)
            results[n] = (est, report)
        first_level.append(codec.encode(wav, 1)[:, 0])
        if on_file is not None:
            on_file(f, wav, results)
    codes = np.concatenate(first_level)
    usage = {"perplexity_level1": perplexity(codes, codec.config["num_codes"]),
             "codes_used_share_level1": len(np.unique(codes)) / codec.config["num_codes"]}
    return [{"files": len(files), "levels": n, "bitrate_kbps": codec.bitrate(n) / 1000,
             **mean_scores(reports[n]), **usage} for n in levels]


def mean_scores(reports: list[dict]) -> dict:
    """Per metric, the mean over the files it could score; "<metric>_files" when that is not
    every file it was tried on, and ``"n/a: <why>"`` when it scored none."""
    summary: dict = {}
    for key in ("si_snr", "mel_distance", "pesq", "stoi", *LISTENER_KEYS):
        values = [r[key] for r in reports if key in r]
        if not values:
            continue
        if key == "digit_accuracy":
            summary["digit_files"] = len(values)
        scored = [v for v in values if is_value(v)]
        if scored:
            summary[key] = float(np.mean(scored))
            if len(scored) < len(values):
                summary[f"{key}_files"] = len(scored)
        else:
            reasons = list(dict.fromkeys(v for v in values if isinstance(v, str)))
            summary[key] = "n/a: " + "; ".join(r.removeprefix("n/a: ") for r in reasons)
    return summary
