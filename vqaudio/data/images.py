"""Image sets from disk -> float32 tensors (N, C, H, W) in [0, 1], plus PNG grids out.

Three sources, picked by :func:`load_images` from the path:

- an ``.npz`` file (MNIST/KMNIST style): images under ``arr_0``, ``x`` or ``images``, uint8
  ``(N, H, W)`` or ``(N, H, W, C)``; labels from ``labels_path``, else from the file beside it
  named with ``labels`` for ``imgs``/``images`` (``kmnist-10k-imgs.npz`` ->
  ``kmnist-10k-labels.npz``), else from a ``y``/``labels`` key of the same file;
- an IDX file (``train-images-idx3-ubyte``, gzipped or not) with ``train-labels-idx1-ubyte``
  beside it;
- a folder of PNG (or JPEG) files: labelled by the name of their subfolder when they sit in
  subfolders (``folder/cat/1.png``), unlabelled when they sit at the top.

Labels are int64 ``(N,)`` with ``label_names[i]`` naming label i: ``"0"``, ``"1"``, ... for
numeric labels, the sorted subfolder names for a PNG folder.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from vqaudio.atomic import atomic_path, check_output_path
from vqaudio.errors import VqaudioError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
IMAGE_KEYS = ("arr_0", "x", "images")  # npz keys holding the images, first found wins
LABEL_KEYS = ("arr_0", "y", "labels")  # in a labels file; "y"/"labels" also in the images file
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ImageSet(NamedTuple):
    images: Tensor  # (N, C, H, W) float32 in [0, 1]
    labels: Tensor | None  # (N,) int64, or None for an unlabelled set
    label_names: list[str]  # label_names[i] names label i; [] when unlabelled


# --- loading a set ------------------------------------------------------------------------


def load_images(path: str | os.PathLike, labels_path: str | os.PathLike | None = None) -> ImageSet:
    """Load an image set from an ``.npz`` file, an IDX file or a folder of images.

    ``labels_path`` names the labels file (``.npz`` or IDX) explicitly; without it a sibling
    labels file is used when one exists (see the module docstring). Raises ``VqaudioError``
    for a missing path, an unreadable or non-image file, or an empty folder.
    """
    path = Path(path)
    if not path.exists():
        raise VqaudioError(f"image set {path} does not exist; check the path")
    if path.is_dir():
        if labels_path is not None:
            raise VqaudioError(f"{path} is a folder, whose labels are its subfolder names; drop the labels file")
        return _load_folder(path)
    if path.suffix.lower() == ".npz":
        images = _images_array(_read_npz(path, IMAGE_KEYS, "images"), path)
        labels = _in_file_labels(path)
    elif _is_idx(path):
        images, labels = _images_array(_read_idx(path), path), None
    else:
        raise VqaudioError(
            f"{path} is not an image set: give an .npz file, an IDX file (*-images-idx3-ubyte[.gz]) "
            f"or a folder of PNG images"
        )
    if labels_path is None:
        labels_path = _sibling_labels(path)
    if labels_path is not None:
        labels = _read_labels(Path(labels_path))
    if labels is None:
        return ImageSet(images, None, [])
    if len(labels) != len(images):
        raise VqaudioError(
            f"{labels_path or path} has {len(labels)} labels for {len(images)} images in {path}; "
            f"give the labels file that belongs to these images"
        )
    return ImageSet(images, labels, [str(i) for i in range(int(labels.max()) + 1)])


def split_images(data: ImageSet, val_count: int = 1000) -> tuple[ImageSet, ImageSet]:
    """Split into ``(train, val)``: the last ``val_count`` images are validation.

    Deterministic and order-preserving; for the bundled KMNIST file (already shuffled) the
    default gives 9,000 / 1,000 with about 100 images of every class in validation. Shuffle
    the files yourself for a set stored class by class.
    """
    n = len(data.images)
    if isinstance(val_count, bool) or not isinstance(val_count, int) or not 0 < val_count < n:
        raise VqaudioError(
            f"val_count must be between 1 and {n - 1} for a set of {n} images, got {val_count!r}"
        )
    cut = n - val_count
    labels = data.labels
    train = ImageSet(data.images[:cut], None if labels is None else labels[:cut], data.label_names)
    val = ImageSet(data.images[cut:], None if labels is None else labels[cut:], data.label_names)
    return train, val


class ImageDataset(Dataset):
    """``dataset[i]`` is ``(image (C, H, W) float32, label () int64)``; the label is -1 for an
    unlabelled set, so the default DataLoader collation works either way."""

    def __init__(self, images: Tensor, labels: Tensor | None = None) -> None:
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        self.images = images
        self.labels = labels if labels is not None else torch.full((len(images),), -1, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]


# --- one image in, grids out ---------------------------------------------------------------


def read_image(path: str | os.PathLike, channels: int, size: int | tuple[int, int]) -> Tensor:
    """One PNG/JPEG file -> ``(channels, H, W)`` float32 in [0, 1], for a model that takes
    ``size`` (``H`` or ``(H, W)``) images with ``channels`` (1 grayscale, 3 RGB).

    Only lossless conversions are made: a grayscale file goes to an RGB model as three equal
    channels, an RGB file whose channels are all equal counts as grayscale, and alpha is
    dropped. Anything else (another size, colour for a grayscale model) raises
    ``VqaudioError`` saying how to fix the file, rather than silently resizing it.
    """
    path = Path(path)
    height, width = (size, size) if isinstance(size, int) else size
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not path.exists():
        raise VqaudioError(f"image file {path} does not exist; check the path")
    if path.is_dir():
        raise VqaudioError(f"{path} is a folder, not an image file; name a PNG file inside it")
    arr = _open_image(path)  # (H, W, 1 or 3)
    file_channels = 1 if arr.shape[2] == 1 or _all_channels_equal(arr) else 3
    h, w = arr.shape[:2]
    fixes = ([f"resize it to {width}x{height}"] if (h, w) != (height, width) else []) + (
        ["convert it to grayscale"] if file_channels > channels else [])
    if fixes:
        raise VqaudioError(
            f"{path.name}: {w}x{h} {_KIND[file_channels]}, but this model takes {width}x{height} "
            f"{_KIND[channels]} images; {' and '.join(fixes)} first"
        )
    arr = arr[:, :, :1] if channels == 1 else np.repeat(arr, 3 // arr.shape[2], axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 0.5) -> Tensor:
    """Tile ``images`` (N, C, H, W) into one image (C, H', W'), ``nrow`` images per row.

    Gray padding (0.5) separates glyphs drawn white on black as well as black on white.
    """
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected images of shape (N, C, H, W) with N > 0, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i, image in enumerate(images):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[:, top: top + h, left: left + w] = image
    return grid


def grid_tiles(grid: Tensor, count: int, size: tuple[int, int], nrow: int = 8, padding: int = 2) -> Tensor:
    """The inverse of :func:`image_grid`: the first ``count`` tiles (N, C, H, W) of ``size``
    (H, W) cut back out of a grid image (C, H', W') laid out with the same ``nrow`` and
    ``padding`` (e.g. a ``vqaudio sample`` PNG read back for judging)."""
    (h, w), cols = size, min(nrow, count)
    rows = math.ceil(count / cols)
    if grid.shape[-2:] != (rows * (h + padding) + padding, cols * (w + padding) + padding):
        raise VqaudioError(f"a {grid.shape[-1]}x{grid.shape[-2]} image is not a grid of {count} "
                           f"{w}x{h} tiles, {cols} per row")
    tiles = []
    for i in range(count):
        top, left = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        tiles.append(grid[:, top: top + h, left: left + w])
    return torch.stack(tiles)


def write_image(path: str | os.PathLike, image) -> None:
    """Write ``image`` ((C, H, W) or (H, W), C = 1 or 3, values clipped to [0, 1]; a tensor or
    a numpy array) as an 8-bit PNG (or JPEG, by the file's suffix), atomically: the target
    keeps its old content or gets the whole new file, never a partial one."""
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VqaudioError(f"cannot write {path}: images are written as PNG, so name the file *.png")
    if hasattr(image, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        image = image.detach().cpu().numpy()
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or arr.size == 0:
        raise VqaudioError(
            f"cannot write {path}: expected an image of shape (C, H, W) with C = 1 or 3, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise VqaudioError(f"refusing to write {path}: the image contains NaN or Inf values")
    pixels = np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    picture = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    check_output_path(path)
    try:
        with atomic_path(path) as tmp:
            picture.save(tmp, format=fmt)
    except OSError as e:
        raise VqaudioError(f"cannot write {path}: {e.strerror or e}; check the folder is writable") from e


# --- helpers -------------------------------------------------------------------------------

_KIND = {1: "grayscale", 3: "RGB"}


def _open_image(path: Path) -> np.ndarray:
    """A PNG/JPEG file -> (H, W, 1 or 3) float32 in [0, 1]."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so a truncated file fails here and not later
            if img.mode.startswith("I"):  # 16-bit grayscale PNG
                return np.asarray(img, dtype=np.float32)[:, :, None].clip(0, 65535) / 65535
            gray = img.mode in ("1", "L", "LA")
            arr = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        # SyntaxError: what some Pillow decoders raise for a corrupt header.
        raise VqaudioError(
            f"cannot read {path} as an image ({' '.join(str(e).split())}); give an undamaged PNG or JPEG file"
        ) from e
    return arr[:, :, None] if arr.ndim == 2 else arr


def _all_channels_equal(arr: np.ndarray) -> bool:
    return bool((arr == arr[:, :, :1]).all())


def _load_folder(folder: Path) -> ImageSet:
    def images_in(d: Path) -> list[Path]:
        # Hidden names are skipped: macOS "._x.png" files and unfinished atomic writes.
        return sorted(p for p in d.iterdir()
                      if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())

    top = images_in(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    nested = {name: images_in(folder / name) for name in classes}
    nested = {name: files for name, files in nested.items() if files}
    if top and nested:
        raise VqaudioError(
            f"{folder} has images both at its top level and in subfolders; put every image in a "
            f"class subfolder (labelled) or all at the top level (unlabelled)"
        )
    files = top or [f for fs in nested.values() for f in fs]
    if not files:
        raise VqaudioError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder} or its subfolders")
    arrays = [_open_image(f) for f in files]  # each (H, W, 1 or 3)
    for f, a in zip(files, arrays):
        if a.shape[:2] != arrays[0].shape[:2]:
            h, w = arrays[0].shape[:2]
            raise VqaudioError(
                f"{f} is {a.shape[1]}x{a.shape[0]} but {files[0]} is {w}x{h}; every image in a set "
                f"must have the same size, so resize them first"
            )
    channels = 3 if any(a.shape[2] == 3 and not _all_channels_equal(a) for a in arrays) else 1
    stacked = np.stack([a[:, :, :1] if channels == 1 else np.repeat(a, 3 // a.shape[2], axis=2)
                        for a in arrays])  # (N, H, W, C)
    images = torch.from_numpy(np.ascontiguousarray(stacked.transpose(0, 3, 1, 2)))
    if top:
        return ImageSet(images, None, [])
    names = list(nested)
    labels = torch.tensor([i for i, name in enumerate(names) for _ in nested[name]], dtype=torch.long)
    return ImageSet(images, labels, names)


def _read_npz(path: Path, keys: Sequence[str], what: str, required: bool = True) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            key = next((k for k in keys if k in npz.files), None)
            if key is None:
                if not required:
                    return None
                raise VqaudioError(
                    f"{path} has no {what} array: expected one of the keys {', '.join(keys)}, "
                    f"found {', '.join(npz.files) or 'none'}"
                )
            return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise VqaudioError(
            f"cannot read {path} as a numpy .npz file ({' '.join(str(e).split())}); save it with numpy.savez"
        ) from e


def _images_array(arr: np.ndarray, path: Path) -> Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
        raise VqaudioError(
            f"{path} holds an array of shape {arr.shape}, not images: "
            f"expected (N, H, W) or (N, H, W, C) with C = 1 or 3"
        )
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    elif np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
        arr = arr.astype(np.float32)
    else:
        raise VqaudioError(f"{path} holds {arr.dtype} images; expected uint8 (0-255) or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def _labels_array(arr: np.ndarray, path: Path) -> Tensor:
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or len(arr) == 0 or arr.min() < 0:
        raise VqaudioError(
            f"{path} holds {arr.dtype} labels of shape {arr.shape}; expected one integer label 0, 1, ... per image"
        )
    return torch.from_numpy(arr.astype(np.int64))


def _in_file_labels(path: Path) -> Tensor | None:
    arr = _read_npz(path, LABEL_KEYS[1:], "labels", required=False)
    return None if arr is None else _labels_array(arr, path)


def _read_labels(path: Path) -> Tensor:
    if not path.is_file():
        raise VqaudioError(f"labels file {path} does not exist; check the path")
    if path.suffix.lower() == ".npz":
        return _labels_array(_read_npz(path, LABEL_KEYS, "labels"), path)
    if _is_idx(path):
        return _labels_array(_read_idx(path), path)
    raise VqaudioError(f"{path} is not a labels file: give an .npz file or an IDX file (*-labels-idx1-ubyte[.gz])")


def _sibling_labels(path: Path) -> Path | None:
    """kmnist-10k-imgs.npz -> kmnist-10k-labels.npz; t10k-images-idx3-ubyte(.gz) ->
    t10k-labels-idx1-ubyte(.gz), gzipped or not. None when no such file exists."""
    name = path.name.removesuffix(".gz")
    for word in ("images", "imgs"):
        if word in name:
            head, _, tail = name.rpartition(word)
            base = head + "labels" + tail.replace("idx3", "idx1")
            for candidate in (path.with_name(base), path.with_name(base + ".gz")):
                if candidate.is_file():
                    return candidate
    return None


def _idx_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise VqaudioError(f"cannot decompress {path} ({e}); download or copy it again") from e
    return data


def _is_idx(path: Path) -> bool:
    """IDX magic: two zero bytes, a known type code, then the number of dimensions."""
    if path.suffix.lower() in IMAGE_EXTENSIONS + (".npz",):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == b"\x1f\x8b":
                f.seek(0)
                with gzip.open(f) as g:
                    head = g.read(4)
    except (OSError, EOFError):
        return False
    return len(head) == 4 and head[:2] == b"\0\0" and head[2] in _IDX_TYPES and head[3] > 0


def _read_idx(path: Path) -> np.ndarray:
    """The IDX format (yann.lecun.com/exdb/mnist): magic, big-endian int32 dims, then data."""
    data = _idx_bytes(path)
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise VqaudioError(f"{path} is a damaged IDX file (its header is cut short); download or copy it again")
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = 4 + 4 * ndim + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise VqaudioError(
            f"{path} is a damaged IDX file: its header promises {expected} bytes, it has {len(data)}; "
            f"download or copy it again"
        )
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))
