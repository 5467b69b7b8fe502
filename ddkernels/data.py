"""Real datasets, read offline from disk. Nothing is ever downloaded.

* Fashion-MNIST: the original IDX gzip files, as installed by Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or any folder holding the same four files.
* digits: scikit-learn's bundled 8×8 digits (for fast tests).
"""
from __future__ import annotations

import gzip
import os

import numpy as np
import torch

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} ({int(np.prod(dims))} items) but holds {arr.size}")
    return arr.reshape(dims)


def load_fashion_mnist(root: str = FASHION_MNIST_DIR, train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as ``(images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,))``."""
    prefix = "train" if train else "t10k"
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = []
    for n in names:
        cands = [os.path.join(root, n + ext) for ext in (".gz", "")]
        found = next((p for p in cands if os.path.isfile(p)), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {n}[.gz] not found in {root!r}. Install Debian's package "
                f"'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or pass the folder "
                f"holding the four original IDX files.")
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"unexpected Fashion-MNIST shapes: images {images.shape}, labels {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits as ``(float32 (1797, 1, 8, 8) in [0, 1], int64 labels)``."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    return x, torch.from_numpy(d.target.astype(np.int64))
