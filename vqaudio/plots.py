"""Spectrogram pictures to look at: for TensorBoard (training) and the listening report.

One picture is one or more panels stacked top to bottom, each the log-magnitude spectrogram
of one signal with a colour map (magma: loud is bright), a time axis in seconds, a frequency
axis in Hz up to Nyquist and a colour bar in dB. Panels of one picture share one dB scale, so
an original and its reconstruction can be compared by colour.

matplotlib (Agg, no display) is imported on first use: importing this module is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

N_FFT_AT_8K = 256  # 32 ms windows: harmonics of a voice resolved, syllables still sharp
TOP_DB = 80.0  # the colour scale spans this many dB below the loudest bin
WIDTH_PX, PANEL_HEIGHT_PX = 640, 220


def spectrogram_db(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """(T,) -> (F, frames) magnitude in dB re full scale (a full-scale sine peaks near 0 dB),
    low frequencies first. Hann windows of 32 ms, hop 8 ms; a clip shorter than one window
    is zero-padded to one."""
    n_fft = max(16, round(N_FFT_AT_8K * sample_rate / 8000))
    hop = n_fft // 4
    x = np.asarray(wav, dtype=np.float64).ravel()
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = 1 + (x.size - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]  # (frames, n_fft)
    window = np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(x[index] * window, axis=1)).T * 2 / window.sum()  # (F, frames)
    return 20 * np.log10(mag + 1e-6)


def spectrogram_image(panels: Sequence[tuple[str, np.ndarray]], sample_rate: int,
                      vmax: float | None = None, width: int = WIDTH_PX,
                      panel_height: int = PANEL_HEIGHT_PX) -> np.ndarray:
    """A picture of ``panels`` ((title, signal (T,)) pairs, stacked top to bottom) as an
    (H, W, 3) uint8 RGB array, W = ``width`` and H = ``panel_height`` × len(panels) pixels.
    The colour scale runs from ``vmax`` - 80 dB to ``vmax`` (default: the loudest bin of all
    panels), so pictures drawn with one ``vmax`` can be compared too."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    specs = [spectrogram_db(wav, sample_rate) for _, wav in panels]
    loudest = max(float(s.max()) for s in specs) if vmax is None else vmax
    dpi = 100
    fig = Figure(figsize=(width / dpi, panel_height * len(panels) / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    # Margins in pixels (constrained layout would find them, at twice the cost of a panel):
    # room for the axis labels on the left and below, the title above, the colour bar right.
    n, height = len(panels), panel_height * len(panels)
    left, right, top, bottom, gap = 64, 56, 22, 40, 62
    axes_height = (height - top - bottom - (n - 1) * gap) / n
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=bottom / height, hspace=gap / axes_height)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    for ax, (title, wav), spec in zip(axes, panels, specs):
        seconds = max(len(wav), 1) / sample_rate
        im = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=loudest - TOP_DB, vmax=loudest,
                       extent=(0, seconds, 0, sample_rate / 2), interpolation="nearest")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_ylabel("frequency (Hz)", fontsize=9)
        ax.set_xlabel("time (s)", fontsize=9)
        ax.tick_params(labelsize=8)
        bar = fig.colorbar(im, ax=ax, pad=0.015, fraction=0.04)
        bar.set_label("dB", fontsize=9)
        bar.ax.tick_params(labelsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_png(rgb: np.ndarray, path: str | Path) -> None:
    """Write an (H, W, 3) uint8 array as a PNG file."""
    from PIL import Image

    Image.fromarray(rgb).save(path, format="PNG")
