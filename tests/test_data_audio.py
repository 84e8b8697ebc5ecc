from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from vqaudio.data.audio import AudioDataset, label_of, split_files
from vqaudio.errors import VqaudioError

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd"  # bundled with the repository
FSDD_VAL = r"_[0-4]\.wav$"


def fsdd_names() -> list[Path]:
    """All 2,500 FSDD names, built rather than listed so the test needs no files."""
    speakers = ["george", "jackson", "nicolas", "theo", "yweweler"]
    return [Path(f"{d}_{s}_{i}.wav") for d in range(10) for s in speakers for i in range(50)]


# --- split -----------------------------------------------------------------------------------


def test_fsdd_regex_reproduces_the_dataset_split():
    names = fsdd_names()
    train, val = split_files(names, FSDD_VAL, val_fraction=0.5)  # fraction ignored with a regex
    assert len(val) == 10 * 5 * 5 and len(train) == 10 * 5 * 45
    assert Path("3_theo_2.wav") in val and Path("0_george_4.wav") in val
    # indices 10-14, 40-44 end in 0-4 but are training files: the regex anchors on "_"
    assert Path("3_theo_12.wav") in train and Path("7_jackson_40.wav") in train and Path("9_nicolas_5.wav") in train
    assert all(int(p.stem.split("_")[2]) < 5 for p in val)
    assert all(int(p.stem.split("_")[2]) >= 5 for p in train)


def test_regex_applies_to_the_name_not_the_folder():
    files = [Path("val_0/a_7.wav"), Path("x/3_theo_2.wav")]
    train, val = split_files(files, FSDD_VAL, 0.1)
    assert train == [Path("val_0/a_7.wav")] and val == [Path("x/3_theo_2.wav")]


def test_hash_split_is_deterministic_stable_and_about_the_fraction():
    names = fsdd_names()
    train, val = split_files(names, None, val_fraction=0.1)
    assert 0.07 < len(val) / len(names) < 0.13
    assert set(train) | set(val) == set(names) and not set(train) & set(val)
    assert split_files(list(reversed(names)), None, 0.1)[1] == list(reversed(val))  # order kept
    # a file's split depends on its name only: dropping other files does not move it
    sub_train, sub_val = split_files(names[::7], None, 0.1)
    assert set(sub_val) == set(val) & set(names[::7])
    # the folder does not matter either
    moved = split_files([Path("elsewhere") / p for p in names], None, 0.1)[1]
    assert [p.name for p in moved] == [p.name for p in val]


def test_split_errors():
    names = fsdd_names()
    with pytest.raises(VqaudioError, match="validation split is empty"):
        split_files(names, r"^nomatch$", 0.1)
    with pytest.raises(VqaudioError, match="training split is empty"):
        split_files(names, r"\.wav$", 0.1)
    with pytest.raises(VqaudioError, match="not a valid regular expression"):
        split_files(names, r"([", 0.1)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(VqaudioError, match="val_fraction"):
            split_files(names, None, bad)
    with pytest.raises(VqaudioError, match="split is empty"):
        split_files(names[:1], None, 0.5)


def test_label_of():
    assert label_of(Path("data/3_theo_2.wav"), r"^(\d)_") == "3"
    assert label_of("7_jackson_40.wav", r"_(\w+)_") == "jackson"
    with pytest.raises(VqaudioError, match="cannot take a label from file name 'x.wav'"):
        label_of("x.wav", r"^(\d)_")
    with pytest.raises(VqaudioError, match="first group"):
        label_of("3_theo_2.wav", r"^\d_")  # matches, but captures nothing


# --- dataset ---------------------------------------------------------------------------------


@pytest.fixture
def ramp_files(tmp_path):
    """Two files whose samples encode their positions: a ramp of 1,000 and a short one of 300."""
    long = (np.arange(1000, dtype=np.float32) + 1) / 2000  # 1-based so padding zeros stand out
    short = np.full(300, 0.25, np.float32)
    sf.write(tmp_path / "long.wav", long, 8000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", short, 8000, subtype="FLOAT")
    return [tmp_path / "long.wav", tmp_path / "short.wav"], long, short


def test_fixed_crop_from_start_and_padding(ramp_files):
    files, long, short = ramp_files
    ds = AudioDataset(files, sample_rate=8000, segment_samples=500, random_crop=False)
    assert len(ds) == 2 and ds.files == files
    assert [w.shape for w in ds.waveforms] == [(1000,), (300,)]
    assert all(w.dtype == torch.float32 and w.ndim == 1 for w in ds.waveforms)
    a, b = ds[0], ds[1]
    assert a.shape == (1, 500) and b.shape == (1, 500) and a.dtype == torch.float32
    torch.testing.assert_close(a[0], torch.from_numpy(long[:500]))
    torch.testing.assert_close(b[0, :300], torch.from_numpy(short))
    assert (b[0, 300:] == 0).all()  # zero-padded at the end
    torch.testing.assert_close(ds[0], a)  # deterministic


def test_items_do_not_alias_the_stored_waveform(ramp_files):
    ds = AudioDataset(ramp_files[0], 8000, 500, random_crop=False)
    ds[0].zero_()
    assert ds.waveforms[0][:500].abs().sum() > 0


def test_random_crop_is_a_window_and_follows_the_seed(ramp_files):
    files, long, _ = ramp_files
    ds = AudioDataset(files, 8000, 200, random_crop=True)
    torch.manual_seed(0)
    first = [ds[0] for _ in range(20)]
    torch.manual_seed(0)
    again = [ds[0] for _ in range(20)]
    for x, y in zip(first, again):
        torch.testing.assert_close(x, y)
    starts = [round(float(x[0, 0]) * 2000) - 1 for x in first]  # the ramp tells where it starts
    assert len(set(starts)) > 5 and min(starts) >= 0 and max(starts) <= 800
    for x, s in zip(first, starts):  # each item is a contiguous window of the file
        torch.testing.assert_close(x[0], torch.from_numpy(long[s : s + 200]))
    assert ds[1].shape == (1, 200)  # a file longer than the segment: crop, not padding


def test_random_crop_of_a_short_file_is_padded(ramp_files):
    ds = AudioDataset(ramp_files[0], 8000, 1200, random_crop=True)
    a, b = ds[0], ds[1]
    assert a.shape == b.shape == (1, 1200)
    assert (a[0, 1000:] == 0).all() and (b[0, 300:] == 0).all() and (a[0, :1000] > 0).all()


def test_dataloader_is_deterministic_under_a_seed(ramp_files):
    ds = AudioDataset(ramp_files[0] * 4, 8000, 100, random_crop=True)

    def run() -> torch.Tensor:
        torch.manual_seed(1234)
        return torch.cat(list(DataLoader(ds, batch_size=3, shuffle=True)))

    x, y = run(), run()
    assert x.shape == (8, 1, 100)
    torch.testing.assert_close(x, y)


def test_dataset_resamples(tmp_path):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    ds = AudioDataset([tmp_path / "a.wav"], sample_rate=8000, segment_samples=4000, random_crop=False)
    assert ds.waveforms[0].shape == (8000,) and ds.sample_rate == 8000


def test_dataset_errors(tmp_path, ramp_files):
    with pytest.raises(VqaudioError, match="no files"):
        AudioDataset([], 8000, 100, random_crop=False)
    for bad in (0, -5, 1.5):
        with pytest.raises(VqaudioError, match="segment_samples"):
            AudioDataset(ramp_files[0], 8000, bad, random_crop=False)
    (tmp_path / "bad.wav").write_text("not audio")
    with pytest.raises(VqaudioError, match="bad.wav"):
        AudioDataset([tmp_path / "bad.wav"], 8000, 100, random_crop=False)


# --- real data -------------------------------------------------------------------------------


def test_bundled_fsdd_loads():
    from vqaudio.audio_io import list_audio_files

    files = list_audio_files(FSDD)
    assert len(files) == 2500
    assert (FSDD / "README.md").is_file()  # the CC BY-SA attribution travels with the files
    train, val = split_files(files, FSDD_VAL, 0.1)
    assert (len(train), len(val)) == (2250, 250)
    some = files[::125]  # 20 files across digits and speakers
    ds = AudioDataset(some, sample_rate=8000, segment_samples=4000, random_crop=False)
    assert len(ds) == 20
    assert all(1000 < w.numel() < 20000 for w in ds.waveforms)  # 0.125-2.5 s at 8 kHz
    assert all(0.01 < w.abs().max() <= 1.0 for w in ds.waveforms)
    batch = torch.stack([ds[i] for i in range(len(ds))])
    assert batch.shape == (20, 1, 4000) and torch.isfinite(batch).all()
    assert sorted({label_of(f, r"^(\d)_") for f in some}) == [str(d) for d in range(10)]
