"""The listening report: a folder to open in a browser, to hear and see a codec.

``vqaudio eval --report OUT`` and ``vqaudio sample --report OUT`` write ``OUT/index.html``
with, beside it, every file it uses: ``audio/*.wav`` (16-bit PCM) and ``img/*.png``
(spectrograms from ``vqaudio.plots``), linked by relative paths. No script, no network: the
folder opens from disk and can be copied or zipped whole.

eval: for a few of the input files (``choose_files``: spread over the labels or speakers in
their names) a player and a spectrogram of the original, of vqaudio at each asked bitrate and
of Codec2 2400 and Opus 6k (``vqaudio.baselines``; a line says which tools are missing), with
per-file and mean metrics: bitrate, STOI, PESQ-nb, mel distance, SI-SNR, DNSMOS and digit
recognition (the last two with listeners). vqaudio's scores are eval's own (its output has
no delay); the baselines' outputs are first shifted by their codec delay (``align``).
sample: the sampled clips, grouped by label, with their DNSMOS and whether the digit
recogniser hears the label.

The folder is built under a temporary name and renamed into place at the end: an error
leaves nothing behind (``vqaudio.atomic.atomic_dir``).
"""

from __future__ import annotations

import html
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import soundfile as sf

from vqaudio.atomic import atomic_dir, check_output_dir
from vqaudio.errors import VqaudioError
from vqaudio.metrics import Score, is_value

DEFAULT_FILES = 6
CODEC2_MODE, OPUS_KBPS = 2400, 6  # the baselines at vqaudio's bitrates (bench/codec_quality.py)
# (key, column heading, digits); the digit column is the share of files recognised as their label
COLUMNS = (("stoi", "STOI", 3), ("pesq", "PESQ-nb", 2), ("mel_distance", "mel distance", 3),
           ("si_snr", "SI-SNR (dB)", 2), ("dnsmos_sig", "DNSMOS SIG", 2), ("dnsmos_bak", "DNSMOS BAK", 2),
           ("dnsmos_ovrl", "DNSMOS OVRL", 2), ("digit_accuracy", "digit recognised", 0))
REFERENCE_KEYS = ("stoi", "pesq", "mel_distance", "si_snr")  # the original is their reference


@dataclass
class Clip:
    """One row of the page: a signal to hear and see, and its scores."""
    system: str
    kbps: float | None
    wav: np.ndarray | None  # None: the system failed on this file (``note`` says why)
    scores: dict[str, Score] = field(default_factory=dict)
    note: str = ""


@dataclass
class Section:
    title: str
    clips: list[Clip]


# -- choosing files ----------------------------------------------------------------------------

def group_of(path: Path) -> str:
    """What a file name says about its content: the text before the first ``_`` or ``-``
    (the digit of FSDD's ``3_yweweler_12.wav``, the speaker of LibriSpeech's
    ``103-1240-0000.flac``), or the whole stem."""
    return re.split(r"[_-]", path.stem, maxsplit=1)[0]


def choose_files(files: list[Path], n: int) -> list[Path]:
    """``n`` files spread over the groups of their names (``group_of``): the first file of
    each group in turn, then the second of each, and so on; the same files on every run."""
    if n < 1:
        raise VqaudioError(f"--report-files must be at least 1, got {n}")
    groups: dict[str, list[Path]] = {}
    for f in sorted(files, key=lambda p: (p.name, str(p))):
        groups.setdefault(group_of(f), []).append(f)
    queues = [groups[k] for k in sorted(groups, key=lambda k: (len(k), k))]  # "2" before "10"
    chosen: list[Path] = []
    depth = 0
    while len(chosen) < min(n, len(files)):
        chosen += [q[depth] for q in queues if depth < len(q)][: n - len(chosen)]
        depth += 1
    return chosen


# -- eval --report -----------------------------------------------------------------------------

def eval_report(inputs: list[Path], model: Path | None, bitrates: list[float] | None,
                levels: list[int] | None, listeners: bool, out_dir: Path,
                n_files: int = DEFAULT_FILES) -> list[dict]:
    """``vqaudio eval``'s summaries (one per level count, over every input) and the report
    of ``n_files`` of the inputs in ``out_dir``."""
    from vqaudio.audio_io import list_audio_files
    from vqaudio.codec import load_codec
    from vqaudio.resynth import evaluate_codec, level_counts

    label = f"--report {out_dir}"
    check_output_dir(out_dir, label)
    codec = load_codec(model)
    counts = level_counts(codec, bitrates, levels)
    files = list_audio_files(inputs)
    chosen = choose_files(files, n_files)
    kept: dict[Path, tuple[np.ndarray, dict]] = {}

    def keep(path: Path, wav: np.ndarray, results: dict) -> None:
        if path in chosen:
            kept[path] = (wav, results)

    summaries = evaluate_codec(codec, files, counts, listeners, on_file=keep)
    rate = codec.sample_rate
    with tempfile.TemporaryDirectory(prefix="vqaudio-report-") as work:
        baselines, missing = _baselines(Path(work))
        sections = []
        for path in chosen:
            wav, results = kept[path]
            clips = [Clip("original", rate * 16 / 1000, wav, _listen(wav, rate, _digit(path), listeners))]
            clips += [Clip(f"vqaudio {n} level{'s' if n > 1 else ''}", codec.bitrate(n) / 1000, est, scores)
                      for n, (est, scores) in results.items()]
            clips += [_run_baseline(name, kbps, system, wav, rate, _digit(path), listeners)
                      for name, kbps, system in baselines]
            sections.append(Section(f"{path.name}", clips))
    notes = [f"Model {codec.path} at {rate} Hz; {len(chosen)} of the {len(files)} input files, "
             "spread over the labels or speakers in their names."]
    if missing:
        notes.append("Not in this report: " + "; ".join(missing) + ".")
    notes.append("Scores against the original: STOI, PESQ-nb (higher is better), mel distance "
                 "(lower is better), SI-SNR. Codec2 and Opus outputs are shifted by their codec "
                 "delay before scoring. Without a reference: DNSMOS P.835 (1–5) and whether "
                 "PocketSphinx recognises the digit in the file name.")
    if not listeners:
        notes.append("DNSMOS and digit recognition were not measured (--no-listeners).")
    name = codec.path.parent.name if codec.path.name == "vqvae" else codec.path.name  # the run's
    write_report(out_dir, f"vqaudio eval: {name}", notes, sections, rate,
                 summaries=summaries, label=label)
    return summaries


def _baselines(work: Path) -> tuple[list[tuple[str, float, object]], list[str]]:
    """The baseline systems whose tools are installed, and a note for each missing one."""
    from vqaudio import baselines as b

    systems, missing = [], []
    for name, kbps, package, make in (
            (f"Codec2 {CODEC2_MODE}", CODEC2_MODE / 1000, "codec2", lambda: b.codec2_system(CODEC2_MODE, work)),
            (f"Opus {OPUS_KBPS}k", float(OPUS_KBPS), "opus-tools", lambda: b.opus_system(OPUS_KBPS, work))):
        why = b.missing(package)
        if why:
            missing.append(f"{name} ({why})")
        else:
            systems.append((name, kbps, make()))
    return systems, missing


def _run_baseline(name: str, kbps: float, system, wav: np.ndarray, rate: int, label: str | None,
                  listeners: bool) -> Clip:
    """One baseline on one file at 8 kHz (resampled from and back to ``rate``), aligned."""
    import soxr

    from vqaudio.baselines import MAX_LAG_MS, SAMPLE_RATE, align
    from vqaudio.metrics import quality_report

    x = wav if rate == SAMPLE_RATE else soxr.resample(wav, rate, SAMPLE_RATE, quality="HQ")
    try:
        y = system(np.asarray(x, dtype=np.float64))
    except RuntimeError as e:  # a tool that fails on this file; the others are still shown
        return Clip(name, kbps, None, note=f"failed: {e}")
    y, _ = align(x, y, round(MAX_LAG_MS * SAMPLE_RATE / 1000))
    if rate != SAMPLE_RATE:
        y = soxr.resample(y, SAMPLE_RATE, rate, quality="HQ")
        y = np.pad(y, (0, max(0, len(wav) - len(y))))[: len(wav)]
    est = np.clip(y, -1, 1).astype(np.float32)
    scores = quality_report(wav, est, rate)
    scores.update(_listen(est, rate, label, listeners))
    return Clip(name, kbps, est, scores)


def _listen(wav: np.ndarray, rate: int, label: str | None, listeners: bool) -> dict:
    """DNSMOS of ``wav`` and, when ``label`` is a digit, whether it is recognised as it."""
    if not listeners or wav.size == 0:
        return {}
    from vqaudio.listeners import DIGIT_WORDS, dnsmos, recognise_digit

    scores = {f"dnsmos_{k}": v for k, v in dnsmos(wav, rate).items()}
    if label is not None and re.fullmatch(r"\d", label):
        scores["digit_accuracy"] = float(recognise_digit(wav, rate) == DIGIT_WORDS[int(label)])
    return scores


def _digit(path: Path) -> str | None:
    from vqaudio.listeners import digit_label

    label = digit_label(path)
    return None if label is None else str(label)


# -- sample --report ---------------------------------------------------------------------------

def sample_report(model: Path | None, seconds: float, num: int, controls, label: str | None,
                  listeners: bool, out_dir: Path) -> list[dict]:
    """``num`` sampled clips for each label of the prior (or for ``label``), shown in
    ``out_dir``; one result per clip (its label, bitrate and listener scores)."""
    from vqaudio.build import AUDIO_PRIOR
    from vqaudio.checkpoint import read_config
    from vqaudio.generate import (_labels, check_seconds, generate_clips, load_audio_run, load_run_classifier,
                                  resolve_run)
    from vqaudio.priors.sampling import with_prior_defaults

    label_text = f"--report {out_dir}"
    if num < 1:
        raise VqaudioError(f"--num must be at least 1, got {num}")
    controls.check()
    check_seconds(seconds)
    check_output_dir(out_dir, label_text)
    vqvae_dir, prior_dir = resolve_run(model)
    if read_config(prior_dir)["kind"] != AUDIO_PRIOR:
        raise VqaudioError(f"{label_text}: the report is for audio models; {prior_dir} is not an audio prior")
    if listeners:
        from vqaudio.listeners import check_available

        check_available()
    codec, prior, config = load_audio_run(vqvae_dir, prior_dir)
    classifier = load_run_classifier(prior_dir, config, codec)
    controls = with_prior_defaults(controls, config)
    vocab = config["labels"]
    asked = [label] if label is not None else (vocab or [None])
    kbps = config["bitrate_bps"] / 1000
    sections, results = [], []
    for name in asked:
        ids, _ = _labels(vocab, name, num, controls.seed)
        clips = []
        for i, wav in enumerate(generate_clips(codec, prior, config, seconds, num, controls, ids, classifier=classifier)):
            scores = _listen(wav, codec.sample_rate, name, listeners)
            clips.append(Clip(f"sample {i + 1}", kbps, wav, scores))
            results.append({"label": name, "sample": i + 1, "duration_s": len(wav) / codec.sample_rate,
                            "bitrate_kbps": kbps, **scores})
        sections.append(Section(f"label {name}" if name is not None else "samples", clips))
    notes = [f"Model {vqvae_dir.parent} at {codec.sample_rate} Hz: {num} clip{'s' if num > 1 else ''} "
             f"of {seconds:g} s per label, temperature {controls.temperature:g}, top-k {controls.top_k}, "
             f"top-p {controls.top_p:g}, guidance {controls.guidance:g}, best of {controls.candidates}, smoothing {controls.smoothing}, end silence {controls.end_silence:g} s, seed {controls.seed}; decoded at {kbps:.3g} kb/s "
             f"({config['levels']} levels).",
             "DNSMOS P.835 (1–5) and whether PocketSphinx recognises the label as a spoken digit."
             if listeners else "DNSMOS and digit recognition were not measured (--no-listeners)."]
    write_report(out_dir, f"vqaudio sample: {vqvae_dir.parent.name}", notes, sections, codec.sample_rate,
                 label=label_text, reference=False)
    return results


# -- the page ----------------------------------------------------------------------------------

def write_report(out_dir: Path, title: str, notes: list[str], sections: list[Section], rate: int,
                 summaries: list[dict] | None = None, label: str = "--report",
                 reference: bool = True) -> Path:
    """Write ``out_dir`` (index.html, audio/, img/) in one piece; returns its index.html.
    With ``reference`` the first clip of each section is the original the others are
    scored against."""
    from vqaudio.plots import save_png, spectrogram_db, spectrogram_image

    try:
        with atomic_dir(out_dir) as tmp:
            (tmp / "audio").mkdir()
            (tmp / "img").mkdir()
            body = []
            for i, section in enumerate(sections, 1):
                shown = [c for c in section.clips if c.wav is not None]
                loudest = max(float(spectrogram_db(c.wav, rate).max()) for c in shown) if shown else 0.0
                rows = []
                for clip in section.clips:
                    if clip.wav is None:
                        rows.append(f"<tr><th>{_e(clip.system)}</th><td colspan=2>{_e(clip.note)}</td></tr>")
                        continue
                    stem = f"{i:02d}-{_slug(section.title)}-{_slug(clip.system)}"
                    sf.write(tmp / "audio" / f"{stem}.wav", clip.wav, rate, subtype="PCM_16", format="WAV")
                    picture = spectrogram_image([(f"{section.title}: {clip.system}", clip.wav)], rate, vmax=loudest)
                    save_png(picture, tmp / "img" / f"{stem}.png")
                    h, w = picture.shape[:2]
                    rows.append(
                        f"<tr><th>{_e(clip.system)}<br><small>{_kbps(clip.kbps)}</small></th>"
                        f'<td><audio controls preload="metadata" src="audio/{quote(stem)}.wav"></audio></td>'
                        f'<td><img src="img/{quote(stem)}.png" width="{w}" height="{h}" '
                        f'alt="spectrogram of {_e(clip.system)}, {_e(section.title)}"></td></tr>')
                body.append(f'<section id="s{i}"><h2>{_e(section.title)}</h2>\n<table class="clips">\n'
                            + "\n".join(rows) + "\n</table>\n"
                            + _metrics_table(section.clips, reference) + "</section>")
            means = _means_table(sections, reference)
            page = _PAGE.format(title=_e(title), notes="\n".join(f"<p>{_e(n)}</p>" for n in notes),
                                means=means, summaries=_summaries(summaries), body="\n".join(body))
            (tmp / "index.html").write_text(page, encoding="utf-8")
    except OSError as e:
        raise VqaudioError(f"{label}: cannot write ({e.strerror or e}); check the folder is writable") from None
    return out_dir / "index.html"


def _metrics_table(clips: list[Clip], reference: bool) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for _, h, _ in COLUMNS)
    rows = []
    for k, clip in enumerate(clips):
        cells = []
        for key, _, digits in COLUMNS:
            if reference and k == 0 and key in REFERENCE_KEYS:
                cells.append("<td>reference</td>")
            elif key == "digit_accuracy" and is_value(clip.scores.get(key)):
                cells.append(f"<td>{'yes' if clip.scores[key] else 'no'}</td>")
            else:
                cells.append(_cell(clip.scores.get(key), key, clip, digits))
        rows.append(f"<tr><th>{_e(clip.system)}</th><td>{_kbps(clip.kbps)}</td>{''.join(cells)}</tr>")
    return (f'<table class="metrics"><tr><th>system</th><th>kb/s</th>{head}</tr>\n'
            + "\n".join(rows) + "\n</table>\n")


def _cell(value, key: str, clip: Clip, digits: int = 2) -> str:
    if clip.wav is None:
        return "<td>not run</td>"
    if value is None:
        why = ("n/a: no digit label in the file name" if key == "digit_accuracy" and "dnsmos_ovrl" in clip.scores
               else "n/a: not measured")
        return f'<td class="na">{_e(why)}</td>'
    if isinstance(value, str):
        return f'<td class="na">{_e(value)}</td>'
    return f"<td>{value:.{digits}f}</td>"


def _means_table(sections: list[Section], reference: bool) -> str:
    """Per system (in the order of the first section), the mean of each metric over the files."""
    from vqaudio.resynth import mean_scores

    names = list(dict.fromkeys(c.system for s in sections for c in s.clips))
    rows = []
    for name in names:
        clips = [c for s in sections for c in s.clips if c.system == name]
        ran = [c for c in clips if c.wav is not None]
        means = mean_scores([c.scores for c in ran])
        cells = []
        for key, _, digits in COLUMNS:
            v = means.get(key)
            if reference and name == "original" and key in REFERENCE_KEYS:
                cells.append("<td>reference</td>")
            elif not ran:
                cells.append("<td>not run</td>")
            elif v is None:
                cells.append('<td class="na">n/a: not measured</td>')
            elif isinstance(v, str):
                cells.append(f'<td class="na">{_e(v)}</td>')
            else:
                count = means.get("digit_files" if key == "digit_accuracy" else f"{key}_files")
                text = f"{100 * v:.0f} %" if key == "digit_accuracy" else f"{v:.{digits}f}"
                if count is not None and count < len(ran):
                    text += f" ({count}/{len(ran)} files)"
                cells.append(f"<td>{text}</td>")
        kbps = clips[0].kbps
        rows.append(f"<tr><th>{_e(name)}</th><td>{_kbps(kbps)}</td>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for _, h, _ in COLUMNS)
    return (f'<table class="metrics"><tr><th>system</th><th>kb/s</th>{head}</tr>\n'
            + "\n".join(rows) + "\n</table>")


def _summaries(summaries: list[dict] | None) -> str:
    if not summaries:
        return ""
    keys = list(dict.fromkeys(k for s in summaries for k in s))
    rows = "\n".join(f"<tr><th>{_e(k)}</th>" + "".join(_value(s.get(k)) for s in summaries) + "</tr>"
                     for k in keys)
    return ("<h2>vqaudio eval over every input file</h2>\n"
            f'<table class="metrics">\n{rows}\n</table>')


def _value(v) -> str:
    if isinstance(v, float):
        return f"<td>{v:.4g}</td>"
    return f'<td class="na">{_e(v)}</td>' if isinstance(v, str) and v.startswith("n/a") else f"<td>{_e(v)}</td>"


def _kbps(kbps: float | None) -> str:
    return "" if kbps is None else f"{kbps:.3g} kb/s"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "clip"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }}
table.metrics td {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.na {{ color: #777; font-size: 0.85em; }}
table.clips th {{ min-width: 9em; }}
audio {{ width: 260px; }}
img {{ display: block; }}
section {{ margin-top: 2em; }}
</style>
</head>
<body>
<h1>{title}</h1>
{notes}
<h2>Means over the files shown</h2>
{means}
{summaries}
{body}
</body>
</html>
"""
