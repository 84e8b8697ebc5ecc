import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close
from torch.utils.data import DataLoader

from vqaudio.data.images import (
    ImageDataset, grid_tiles, image_grid, load_images, read_image, split_images, write_image,
)
from vqaudio.errors import VqaudioError

KMNIST = Path(__file__).parents[1] / "data" / "kmnist"


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message
    return message


# --- image sets ----------------------------------------------------------------------------


def test_bundled_kmnist_with_its_labels():
    data = load_images(KMNIST / "kmnist-10k-imgs.npz")  # labels found beside it
    assert data.images.shape == (10000, 1, 28, 28) and data.images.dtype == torch.float32
    assert data.images.min() == 0 and data.images.max() == 1
    assert data.labels.dtype == torch.int64 and data.labels.shape == (10000,)
    assert torch.equal(data.labels.unique(), torch.arange(10))
    assert data.label_names == [str(i) for i in range(10)]

    train, val = split_images(data)
    assert (len(train.images), len(val.images)) == (9000, 1000)
    assert torch.equal(val.images, data.images[9000:]) and torch.equal(val.labels, data.labels[9000:])
    again, _ = split_images(load_images(KMNIST / "kmnist-10k-imgs.npz"))
    assert torch.equal(again.labels, train.labels)  # deterministic
    assert torch.bincount(val.labels).min() > 80  # the file is shuffled: every class in validation


def test_npz_keys_and_explicit_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", x=images, y=np.array([0, 2, 2, 1, 0]))
    data = load_images(tmp_path / "set.npz")  # labels from the same file
    assert data.images.shape == (5, 3, 8, 6)
    assert_close(data.images[1, 2], torch.from_numpy(images[1, :, :, 2]).float() / 255)
    assert data.labels.tolist() == [0, 2, 2, 1, 0] and data.label_names == ["0", "1", "2"]

    np.savez(tmp_path / "plain.npz", images=images[..., 0])
    assert load_images(tmp_path / "plain.npz").labels is None
    np.savez(tmp_path / "other.npz", np.array([1, 1, 0, 0, 1]))
    assert load_images(tmp_path / "plain.npz", tmp_path / "other.npz").labels.tolist() == [1, 1, 0, 0, 1]
    np.savez(tmp_path / "short.npz", np.array([1, 1]))
    with pytest.raises(VqaudioError, match="2 labels for 5 images") as e:
        load_images(tmp_path / "plain.npz", tmp_path / "short.npz")
    one_line(e)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    data = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_with_labels_beside(tmp_path, gz):
    images = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.array([3, 1, 4, 1]), gz)
    data = load_images(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert data.images.shape == (4, 1, 28, 28)
    assert_close(data.images[2, 0], torch.from_numpy(images[2]).float() / 255)
    assert data.labels.tolist() == [3, 1, 4, 1] and len(data.label_names) == 5


def test_damaged_idx_file(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, np.zeros((4, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(VqaudioError, match="damaged IDX") as e:
        load_images(path)
    one_line(e)


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_png_folder_labels_from_subfolders(tmp_path):
    rng = np.random.default_rng(2)
    for name, count in (("b", 2), ("a", 3)):
        for i in range(count):
            save_png(tmp_path / "set" / name / f"{i}.png", rng.integers(0, 256, (12, 10), dtype=np.uint8))
    (tmp_path / "set" / "notes.txt").write_text("not an image")  # ignored
    (tmp_path / "set" / "a" / "._0.png").write_bytes(b"macOS metadata")  # hidden: ignored
    data = load_images(tmp_path / "set")
    assert data.images.shape == (5, 1, 12, 10)
    assert data.label_names == ["a", "b"] and data.labels.tolist() == [0, 0, 0, 1, 1]
    first = np.asarray(Image.open(tmp_path / "set" / "a" / "0.png"), dtype=np.float32) / 255
    assert_close(data.images[0, 0], torch.from_numpy(first))

    ds = ImageDataset(data.images, data.labels)
    image, label = ds[4]
    assert image.shape == (1, 12, 10) and label.item() == 1
    images, labels = next(iter(DataLoader(ImageDataset(data.images), batch_size=5)))
    assert images.shape == (5, 1, 12, 10) and labels.tolist() == [-1] * 5  # -1: unlabelled


def test_png_folder_flat_colour_and_errors(tmp_path):
    rng = np.random.default_rng(3)
    save_png(tmp_path / "flat" / "x.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save_png(tmp_path / "flat" / "y.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    data = load_images(tmp_path / "flat")
    assert data.images.shape == (2, 3, 8, 8) and data.labels is None  # gray promoted to RGB

    save_png(tmp_path / "mixed" / "x.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "mixed" / "c" / "y.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "sizes" / "x.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "sizes" / "y.png", np.zeros((9, 8), np.uint8))
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for folder, message in (("mixed", "both at its top level and in subfolders"),
                            ("sizes", "same size"), ("empty", "no images")):
        with pytest.raises(VqaudioError, match=message) as e:
            load_images(tmp_path / folder)
        one_line(e)


def test_bad_image_sets(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "wrong.npz", weights=np.zeros(3))
    np.savez(tmp_path / "flat.npz", np.zeros((10, 784), np.uint8))
    cases = [
        ("missing.npz", "does not exist"),
        ("broken.npz", "cannot read .* as a numpy .npz file"),
        ("notes.txt", "not an image set"),
        ("wrong.npz", "no images array: expected one of the keys arr_0, x, images, found weights"),
        ("flat.npz", r"shape \(10, 784\), not images"),
    ]
    for name, message in cases:
        with pytest.raises(VqaudioError, match=message) as e:
            load_images(tmp_path / name)
        one_line(e)
    data = load_images(KMNIST / "kmnist-10k-imgs.npz")
    for count in (0, 10000, 1.5):
        with pytest.raises(VqaudioError, match="val_count must be between 1 and 9999"):
            split_images(data, count)


# --- one image in, grids out ---------------------------------------------------------------


def test_read_image_happy_paths(tmp_path):
    glyph = np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8)
    x = read_image(save_png(tmp_path / "glyph.png", glyph), channels=1, size=28)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert_close(x[0], torch.from_numpy(glyph).float() / 255)
    # Lossless conversions only: gray to an RGB model, RGB with equal channels to a gray one.
    assert_close(read_image(tmp_path / "glyph.png", 3, (28, 28)), x.expand(3, 28, 28))
    gray_rgb = save_png(tmp_path / "gray_rgb.png", np.repeat(glyph[:, :, None], 3, axis=2))
    assert_close(read_image(gray_rgb, 1, 28), x)
    with_alpha = save_png(tmp_path / "alpha.png", np.dstack([glyph, np.full_like(glyph, 128)]))
    assert_close(read_image(with_alpha, 1, 28), x)  # LA: alpha dropped
    wide = glyph.astype(np.uint16) * 257  # 16-bit PNG: 255 -> 65535
    assert_close(read_image(save_png(tmp_path / "16bit.png", wide), 1, 28), x)


def test_read_image_bad_inputs(tmp_path):
    rng = np.random.default_rng(5)
    big_rgb = save_png(tmp_path / "glyph.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    small = save_png(tmp_path / "small.png", np.zeros((20, 24), np.uint8))
    colour = save_png(tmp_path / "colour.png", rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    (tmp_path / "notes.png").write_text("I am text")
    cases = [
        (big_rgb, "glyph.png: 32x32 RGB, but this model takes 28x28 grayscale images; "
                  "resize it to 28x28 and convert it to grayscale first"),
        (small, "small.png: 24x20 grayscale, but this model takes 28x28 grayscale images; resize it to 28x28 first"),
        (colour, "colour.png: 28x28 RGB, but this model takes 28x28 grayscale images; convert it to grayscale first"),
        (tmp_path / "notes.png", "cannot read .*notes.png as an image .*; give an undamaged PNG or JPEG file"),
        (tmp_path / "missing.png", "image file .*missing.png does not exist; check the path"),
        (tmp_path, "is a folder, not an image file"),
    ]
    for path, message in cases:
        with pytest.raises(VqaudioError, match=message) as e:
            read_image(path, channels=1, size=28)
        one_line(e)


def test_image_grid_layout():
    images = torch.rand(5, 3, 4, 6)
    grid = image_grid(images, nrow=3, padding=1, pad_value=0.25)
    assert grid.shape == (3, 2 * (4 + 1) + 1, 3 * (6 + 1) + 1)
    assert_close(grid[:, 1:5, 1:7], images[0])
    assert_close(grid[:, 6:10, 8:14], images[4])  # second row, second column
    assert (grid[:, 0] == 0.25).all() and (grid[:, 6:10, 15:] == 0.25).all()  # border, empty slot
    assert image_grid(torch.rand(2, 1, 28, 28)).shape == (1, 32, 62)  # fewer images than nrow


def test_grid_tiles_inverts_image_grid():
    images = torch.rand(7, 1, 28, 28)
    grid = image_grid(images, nrow=3)
    assert_close(grid_tiles(grid, 7, (28, 28), nrow=3), images)
    with pytest.raises(VqaudioError, match="not a grid of 8"):
        grid_tiles(grid, 8, (28, 28), nrow=4)


def test_write_image_png_atomically(tmp_path, monkeypatch):
    image = torch.rand(3, 10, 12)
    target = tmp_path / "grid.png"
    write_image(target, image)
    with Image.open(target) as png:
        assert png.format == "PNG" and png.size == (12, 10) and png.mode == "RGB"
        assert_close(torch.from_numpy(np.array(png)).permute(2, 0, 1).float() / 255, image, atol=1 / 255, rtol=0)
    write_image(tmp_path / "gray.png", torch.rand(28, 28))
    assert Image.open(tmp_path / "gray.png").mode == "L"

    # A failed write leaves the old file whole and no temporary file behind.
    before = target.read_bytes()

    def fail(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(VqaudioError, match="cannot write .*grid.png: disk full"):
        write_image(target, torch.zeros(3, 10, 12))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gray.png", "grid.png"]


def test_write_image_bad_inputs(tmp_path):
    cases = [
        (tmp_path / "grid.bmp", torch.rand(1, 4, 4), "name the file \\*.png"),
        (tmp_path / "grid.png", torch.rand(2, 4, 4), r"shape \(C, H, W\) with C = 1 or 3"),
        (tmp_path / "grid.png", torch.full((1, 4, 4), float("nan")), "NaN"),
        (tmp_path / "no" / "grid.png", torch.rand(1, 4, 4), "does not exist; create it first"),
    ]
    for path, image, message in cases:
        with pytest.raises(VqaudioError, match=message) as e:
            write_image(path, image)
        one_line(e)
