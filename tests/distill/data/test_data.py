"""Datasets from disk (IDX, CIFAR batches, image folders), normalization, class-balanced sampling."""
import gzip
import os
import pickle
import re

import numpy as np
import pytest
import torch

from ddkernels.distill import data
from ddkernels.distill.data.imageio import class_grid, read_png, write_png


def test_digits_split_and_normalization():
    ds = data.load_dataset("digits")
    assert ds.train_x.shape[1:] == (1, 8, 8) and len(ds.train_x) + len(ds.test_x) == 1797
    assert ds.num_classes == 10 and ds.channels == 1 and ds.im_size == (8, 8)
    z = ds.normalize(ds.train_x)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    assert torch.allclose(ds.denormalize(z), ds.train_x, atol=1e-6)


def test_class_sampler():
    y = torch.tensor([2, 0, 1, 2, 0, 2, 1, 0, 2])
    s = data.ClassSampler(y, 3)
    idx = s.indices_all(2, torch.Generator().manual_seed(0))
    assert idx.shape == (3, 2) and all((y[idx[c]] == c).all() for c in range(3))
    assert len(set(s.indices(2, 4).tolist())) == 4
    with pytest.raises(ValueError, match="n=3 is larger than class 1, which holds 2"):
        s.indices_all(3)


def _write_idx(path, arr):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    ds = data.load_dataset("mnist", str(tmp_path))
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.mean == (0.1307,) and ds.test_y.tolist()[:3] == [0, 1, 2]


def test_cifar_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / f, "wb") as fh:
            pickle.dump({b"data": np.full((2, 3072), 255, np.uint8), b"labels": [0, 9]}, fh)
    ds = data.load_dataset("cifar10", str(tmp_path))
    assert ds.train_x.shape == (10, 3, 32, 32) and float(ds.train_x.max()) == 1.0 and ds.num_classes == 10
    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"nothing": 1}, fh)
    with pytest.raises(ValueError, match="not a cifar10 python batch"):
        data.load_dataset("cifar10", str(tmp_path))


def test_image_folder_png_npy_pt(tmp_path):
    img = torch.rand(3, 5, 7)
    for split in ("train", "test"):
        for k, cname in enumerate(("cat", "dog")):
            d = tmp_path / split / cname
            d.mkdir(parents=True)
            write_png(str(d / "a.png"), img)
            np.save(d / "b.npy", (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            torch.save(img, d / "c.pt")
    ds = data.load_dataset("folder", str(tmp_path))
    assert ds.classes == ("cat", "dog") and ds.train_x.shape == (6, 3, 5, 7)
    assert torch.allclose(ds.train_x[0], ds.train_x[1]) and torch.allclose(ds.train_x[0], img, atol=1 / 255)


def test_png_roundtrip_and_filters(tmp_path):
    g = torch.rand(6, 9)
    write_png(str(tmp_path / "g.png"), g)
    assert np.array_equal(read_png(str(tmp_path / "g.png")), (g * 255).round().to(torch.uint8).numpy())
    grid = class_grid(torch.rand(4, 1, 3, 3), torch.tensor([0, 0, 1, 1]), 2)
    assert grid.shape == (2 * 4 + 1, 2 * 4 + 1)
    # A Paeth-filtered row (type 4), built by hand: the decoder must undo it.
    import struct
    import zlib
    rows = np.array([[10, 20, 30], [11, 25, 40]], np.int32)
    raw = b"\x00" + bytes(rows[0].astype(np.uint8))
    paeth = []
    for i in range(3):
        a = rows[1][i - 1] if i else 0
        b, c = rows[0][i], rows[0][i - 1] if i else 0
        p = a + b - c
        pred = a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else (b if abs(p - b) <= abs(p - c) else c)
        paeth.append((rows[1][i] - pred) & 255)
    raw += b"\x04" + bytes(paeth)

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
    path = tmp_path / "p.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    assert np.array_equal(read_png(str(path)), rows.astype(np.uint8))


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load_dataset("imagenet")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_dataset("fashion-mnist", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        data.load_dataset("fashion-mnist", str(tmp_path))
    with pytest.raises(ValueError, match="pass data_dir"):
        data.load_dataset("cifar10")
    with pytest.raises(FileNotFoundError, match="expected the python batches"):
        data.load_dataset("cifar100", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train/<class name>/"):
        data.load_dataset("folder", str(tmp_path))
    os.makedirs(tmp_path / "train" / "a")
    os.makedirs(tmp_path / "test" / "a")
    with pytest.raises(ValueError, match="holds no"):
        data.load_dataset("folder", str(tmp_path))


def _folder(root, shape=(1, 5, 7)):
    for split in ("train", "test"):
        for cname in ("cat", "dog"):
            d = root / split / cname
            d.mkdir(parents=True)
            write_png(str(d / "a.png"), torch.rand(shape))
    return root


def test_image_folder_names_the_files_it_cannot_use(tmp_path):
    root = _folder(tmp_path / "a")
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are no images, and no error
    write_png(str(root / "train" / "cat" / "B.PNG"), torch.rand(1, 5, 7))  # extensions in any case
    ds = data.load_dataset("folder", str(root))
    assert ds.train_x.shape == (3, 1, 5, 7) and ds.data_dir == str(root)
    (root / "train" / "dog" / "c.jpg").write_bytes(b"\xff\xd8")
    (root / "train" / "dog" / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as e:
        data.load_dataset("folder", str(root))
    assert f"class folder {str(root / 'train' / 'dog')!r} holds 'c.jpg', 'notes.txt', which are not images" \
        in str(e.value) and ".png, .npy, .pt" in str(e.value)

    root = _folder(tmp_path / "b")
    odd = root / "train" / "dog" / "odd.png"
    write_png(str(odd), torch.rand(3, 5, 7))
    with pytest.raises(ValueError, match="every image must have the same shape") as e:
        data.load_dataset("folder", str(root))
    assert f"(3, 5, 7) in 1 file ({str(odd)!r})" in str(e.value) and "(1, 5, 7) in 2 files (e.g. " in str(e.value)

    root = _folder(tmp_path / "c")
    for cname in ("cat", "dog"):
        write_png(str(root / "test" / cname / "a.png"), torch.rand(1, 6, 7))
    with pytest.raises(ValueError, match="train/ and test/ images must have the same shape") as e:
        data.load_dataset("folder", str(root))
    assert "test" in str(e.value) and "(1, 6, 7)" in str(e.value)

    root = _folder(tmp_path / "d")
    bad = root / "test" / "cat" / "a.png"
    bad.write_bytes(bad.read_bytes()[:40])  # cut short inside the image data
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        data.load_dataset("folder", str(root))
    np.save(root / "test" / "cat" / "a.npy", np.zeros((2, 3, 4, 5)))
    os.remove(bad)
    with pytest.raises(ValueError, match=re.escape(str(root / "test" / "cat" / "a.npy"))):
        data.load_dataset("folder", str(root))


@pytest.mark.parametrize("shape", [(5, 7), (1, 5, 7), (2, 5, 7), (3, 5, 7), (4, 5, 7)])
def test_write_png_reads_back(tmp_path, shape):
    img = torch.rand(shape)
    write_png(str(tmp_path / "x.png"), img)
    a = read_png(str(tmp_path / "x.png"))
    expect = (img * 255).round().to(torch.uint8)
    expect = expect[:3].permute(1, 2, 0) if len(shape) == 3 and shape[0] >= 3 else expect.reshape(-1, *shape[-2:])[0]
    assert np.array_equal(a, expect.numpy())


def test_write_png_rejects_other_shapes(tmp_path):
    for shape in [(5, 5, 7), (1, 1, 5, 7), (7,), (0, 3)]:
        with pytest.raises(ValueError, match=re.escape(f"got shape {shape}")):
            write_png(str(tmp_path / "x.png"), torch.rand(shape))
