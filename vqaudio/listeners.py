"""Listener models: DNSMOS (P.835 SIG, BAK, OVRL) and spoken-digit recognition.

Both judge audio the way a listener would, without a reference: DNSMOS predicts the mean
opinion scores of ITU-T P.835 (Reddy et al., "DNSMOS P.835", ICASSP 2022, arXiv:2110.01763)
with the ONNX models the ``speechmos`` package ships, and PocketSphinx (the ``pocketsphinx``
package, with its bundled en-us acoustic model and dictionary) picks one of the ten digit
words with a JSGF grammar. Both are in the ``eval`` extra and imported on first use; without
it every function here raises a one-line ``VqaudioError`` saying what to install.

Inputs are 1-D signals (numpy arrays or tensors) at any rate; both models want 16 kHz, so
8-kHz audio is resampled up first (soxr, "HQ"), which leaves the band above 4 kHz empty.
"""

from __future__ import annotations

import collections
import functools
import importlib
import re
from pathlib import Path
from types import ModuleType

import numpy as np

from vqaudio.errors import VqaudioError

LISTENER_RATE = 16000  # both DNSMOS and the en-us PocketSphinx model take 16 kHz
DNSMOS_WINDOW_S = 9.01  # speechmos.dnsmos.INPUT_LENGTH: the model scores 144,160 samples
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# FSDD names its files {digit}_{speaker}_{index}.wav: the first group is the spoken digit.
DIGIT_LABEL_REGEX = r"^(\d)_"
# Silence added before and after a clip for recognition. FSDD clips are trimmed to the word,
# and without a lead-in the decoder misses word onsets: 70% of the 250 FSDD validation
# recordings are recognised with it, 66% without (0.1–1 s all give 70–73%; changes at the
# level of the last bit, such as another resampler quality, move the share by 1–3 points).
RECOGNITION_PAD_S = 0.3
EXTRA = "pip install 'vqaudio[eval]'"


def _extra(module: str, what: str) -> ModuleType:
    """Import ``module`` from the eval extra, or say in one line how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:  # also a dependency of it missing (onnxruntime for speechmos)
        raise VqaudioError(f"{what} needs the eval extra: {EXTRA}") from None


def check_available() -> None:
    """Raise the one-line ``VqaudioError`` now if DNSMOS or digit recognition is missing, so a
    long evaluation fails before its first file rather than after it."""
    _extra("speechmos.dnsmos", "DNSMOS")
    _extra("pocketsphinx", "Digit recognition")


def _to_listener_rate(wav, sample_rate: int) -> np.ndarray:
    """(T,) at ``sample_rate`` -> (T',) float32 at 16 kHz, clipped to [-1, 1]."""
    import soxr

    if hasattr(wav, "detach"):  # a torch tensor
        wav = wav.detach().cpu().numpy()
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {x.shape}")
    if sample_rate != LISTENER_RATE and x.size:
        x = soxr.resample(x, sample_rate, LISTENER_RATE, quality="HQ")
    return np.clip(x, -1.0, 1.0)  # the models' input range (speechmos refuses anything else)


@functools.lru_cache(maxsize=1)
def _dnsmos_model():
    speechmos = _extra("speechmos.dnsmos", "DNSMOS")
    folder = Path(speechmos.__file__).parent / "dnsmos_models"
    return speechmos.DNSMOS(str(folder / "sig_bak_ovr.onnx"), str(folder / "model_v8.onnx"))


def dnsmos(wav, sample_rate: int) -> dict[str, float]:
    """DNSMOS P.835 scores of one clip: {"sig", "bak", "ovrl"}, each a MOS on a 1–5 scale
    (speech signal quality, background noise, overall).

    The model scores 9.01-s windows, and the scores are the mean over windows at 1-s hops of
    the model's outputs mapped through the P.835 polynomials, as in speechmos (and
    Microsoft's reference script). Two differences, both for speed (the model costs about
    0.3 s of CPU per window): the P.808 model that ``speechmos.dnsmos.run`` also evaluates is
    skipped, and a clip shorter than one window is tiled cyclically to exactly one window,
    where speechmos doubles it until it is that long and averages the windows of the result
    (up to 7 of them). On one FSDD speaker's 50 validation clips the two tilings differ by
    0.00 on average, 0.02–0.03 in absolute value, 0.17 at most.
    """
    model = _dnsmos_model()
    x = _to_listener_rate(wav, sample_rate)
    if x.size == 0:
        raise ValueError("cannot score an empty clip")
    window = round(DNSMOS_WINDOW_S * LISTENER_RATE)
    if x.size < window:
        x = np.resize(x, window)  # cyclic tiling, cut at the window length
    hops = int(np.floor(x.size / LISTENER_RATE) - DNSMOS_WINDOW_S) + 1  # speechmos' count
    starts = LISTENER_RATE * np.arange(hops)  # windows at 1-s hops
    # each window (1, 144160) -> (1, 3): the raw SIG, BAK, OVRL; batching them is no faster
    raw = np.concatenate([model.onnx_sess.run(None, {"input_1": x[None, s: s + window]})[0]
                          for s in starts])
    sig, bak, ovrl = model.get_polyfit_val(raw[:, 0], raw[:, 1], raw[:, 2], False)
    return {"sig": float(np.mean(sig)), "bak": float(np.mean(bak)), "ovrl": float(np.mean(ovrl))}


def digit_grammar() -> str:
    """JSGF grammar of one digit word. Only "zero", not "oh": with "oh" as an eleventh
    alternative 66% of the 250 FSDD validation recordings are recognised instead of 70%; the
    speakers say "zero", and "oh" soaks up other words (four, five)."""
    return ("#JSGF V1.0;\ngrammar digits;\n"
            f"public <digit> = {' | '.join(DIGIT_WORDS)};\n")


@functools.lru_cache(maxsize=1)
def _digit_decoder():
    ps = _extra("pocketsphinx", "Digit recognition")
    decoder = ps.Decoder(lm=None, loglevel="FATAL", samprate=LISTENER_RATE)
    # The model's feat.params turns on spectral noise subtraction, whose noise estimate is
    # carried from one utterance to the next: a file's word would depend on the files decoded
    # before it. feat.params overrides constructor arguments, so switch it off afterwards.
    decoder.config["remove_noise"] = False
    decoder.reinit_feat()
    decoder.add_jsgf_string("digits", digit_grammar())
    decoder.activate_search("digits")
    return decoder


def recognise_digit(wav, sample_rate: int) -> str | None:
    """The digit word ("zero" … "nine") PocketSphinx hears in a clip of one spoken digit, or
    None when it recognises nothing (silence, an empty clip)."""
    x = _to_listener_rate(wav, sample_rate)
    decoder = _digit_decoder()
    pad = np.zeros(round(RECOGNITION_PAD_S * LISTENER_RATE), np.float32)
    pcm = np.round(np.concatenate([pad, x, pad]) * 32767).astype("<i2")
    decoder.start_utt()
    decoder.process_raw(pcm.tobytes(), full_utt=True)  # the whole clip: batch CMN over it
    decoder.end_utt()
    hyp = decoder.hyp()
    word = hyp.hypstr.strip() if hyp is not None else ""
    return word if word in DIGIT_WORDS else None


def digit_label(path: str | Path) -> int | None:
    """The spoken digit in an FSDD-style file name (``7_theo_3.wav`` -> 7), else None."""
    match = re.search(DIGIT_LABEL_REGEX, Path(path).name)
    return int(match.group(1)) if match else None


def digit_confusions(pairs) -> tuple[dict[str, tuple[int, int]], list[tuple[tuple[str, str], int]]]:
    """Recognition per digit from (asked digit, word heard or None) pairs: {word: (heard as
    asked, clips)} for every digit asked, and the wrong hearings, (asked word, heard word or
    "nothing"), most frequent first. A mean hides which words a codec or prior loses."""
    per_digit: dict[str, list[int]] = {}
    wrong: collections.Counter = collections.Counter()
    for digit, heard in pairs:
        asked = DIGIT_WORDS[digit]
        counts = per_digit.setdefault(asked, [0, 0])
        counts[1] += 1
        if heard == asked:
            counts[0] += 1
        else:
            wrong[(asked, heard or "nothing")] += 1
    ordered = {w: tuple(per_digit[w]) for w in DIGIT_WORDS if w in per_digit}
    return ordered, wrong.most_common()


def confusion_table(rows: list[tuple[str, list]]) -> str:
    """Markdown table of ``digit_confusions`` for named lists of (asked, heard) pairs: clips
    heard as said per digit word, and the most frequent wrong hearings."""
    lines = ["| clips | " + " | ".join(DIGIT_WORDS) + " | most often heard instead |",
             "|---|" + "---:|" * len(DIGIT_WORDS) + "---|"]
    for name, pairs in rows:
        per_digit, wrong = digit_confusions(pairs)
        cells = [f"{per_digit[w][0]}/{per_digit[w][1]}" if w in per_digit else "" for w in DIGIT_WORDS]
        instead = ", ".join(f"{asked}→{heard} {n}" for (asked, heard), n in wrong[:4])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {instead} |")
    return "\n".join(lines)


def listener_report(est, sample_rate: int, path: str | Path | None = None,
                    ref=None) -> dict[str, float]:
    """What the listeners make of one decoded clip ``est``: {"dnsmos_sig", "dnsmos_bak",
    "dnsmos_ovrl"}, plus, when ``path``'s name carries a digit label (``digit_label``),
    "digit_accuracy" (1.0 if ``est`` is recognised as that digit, else 0.0; its mean over
    files is the accuracy) and, given the original ``ref``, "digit_accuracy_input" for it."""
    scores = dnsmos(est, sample_rate)
    report = {f"dnsmos_{k}": v for k, v in scores.items()}
    label = digit_label(path) if path is not None else None
    if label is not None:
        report["digit_accuracy"] = float(recognise_digit(est, sample_rate) == DIGIT_WORDS[label])
        if ref is not None:
            report["digit_accuracy_input"] = float(
                recognise_digit(ref, sample_rate) == DIGIT_WORDS[label])
    return report


LISTENER_KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "digit_accuracy", "digit_accuracy_input")
