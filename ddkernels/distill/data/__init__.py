"""Real datasets, read offline from disk. Nothing is ever downloaded.

* Fashion-MNIST: the original IDX gzip files, as installed by Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``) or any folder holding the same four files.
* digits: scikit-learn's bundled 8×8 digits (for fast tests), split 80/20 with a fixed seed.
* User data (``load_dataset(name, data_dir)``): MNIST/Fashion-MNIST IDX files, CIFAR-10/100
  python batches, or an image folder (``train/<class>/`` and ``test/<class>/`` holding ``.png``,
  ``.npy`` or ``.pt`` images, all of one shape; any other file in a class folder is an error naming it,
  hidden files such as ``.DS_Store`` are ignored).

:func:`load_dataset` returns a :class:`Dataset` (images in [0, 1] plus the normalization the
trainers use); :class:`ClassSampler` draws real images per class from index tensors.
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from .zca import ZCA

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


# Per-channel (mean, std) the original repos normalize with; digits and folders use their train split's.
MEAN_STD = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
}
DATASETS = ("fashion-mnist", "mnist", "digits", "cifar10", "cifar100", "folder")
FOLDER_EXTENSIONS = (".png", ".npy", ".pt")


@dataclass
class Dataset:
    """A labelled train/test split. Images are float32 ``(N, C, H, W)`` in [0, 1], labels int64.

    :meth:`normalize` maps [0, 1] images into the space networks see: ``(x − mean)/std`` per
    channel, or, on a :meth:`whitened` dataset, the ZCA transform fitted on the training images
    (MTT's ``--zca``: no mean/std step). :meth:`denormalize` is its inverse.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()
    zca: ZCA | None = None
    data_dir: str | None = None  # the folder it was read from (None: the default one), for hints

    @property
    def channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def im_size(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[2:])

    def _stats(self, x):
        shape = (1, -1, 1, 1)
        return (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape),
                torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.zca is not None:
            return self.zca(x)
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.zca is not None:
            return self.zca.inverse(x)
        mean, std = self._stats(x)
        return x * std + mean

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device) -> "Dataset":
        """This dataset with its images, labels (and ZCA matrices) on ``device``: one copy, made when
        a run starts (the field's datasets are at most ~200 MB as float32; one that does not fit
        the GPU fails here, with CUDA's out-of-memory error, before any work)."""
        device = torch.device(device)
        if self.train_x.device == device:
            return self
        return dataclasses.replace(self, train_x=self.train_x.to(device), train_y=self.train_y.to(device),
                                   test_x=self.test_x.to(device), test_y=self.test_y.to(device),
                                   zca=None if self.zca is None else self.zca.to(device))

    def whitened(self, zca: ZCA | float = 0.1, *, progress: bool = False) -> "Dataset":
        """This dataset with ZCA whitening as its normalization.

        Args:
            zca: a fitted :class:`~ddkernels.distill.data.zca.ZCA` (e.g. loaded from a run directory), or the
                regularization to fit one on the training images with (MTT: 0.1).
            progress: progress bar while fitting.
        """
        if not isinstance(zca, ZCA):
            zca = ZCA.fit(self.train_x, zca, progress=progress)
        if zca.shape != tuple(self.train_x.shape[1:]):
            raise ValueError(f"zca is for images {zca.shape}, {self.name} has {tuple(self.train_x.shape[1:])}")
        return dataclasses.replace(self, zca=zca)


def _channel_stats(x: torch.Tensor):
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def _make(name, train, test, num_classes=None, classes=()):
    (tx, ty), (vx, vy) = train, test
    k = num_classes or int(max(ty.max(), vy.max())) + 1
    mean, std = MEAN_STD.get(name) or _channel_stats(tx)
    if len(mean) != tx.shape[1]:
        raise ValueError(f"{name}: images have {tx.shape[1]} channels but the dataset's statistics have {len(mean)}")
    return Dataset(name, tx, ty, vx, vy, k, mean, std, tuple(classes))


def _load_digits_split() -> Dataset:
    x, y = load_digits()
    # a fixed split for every run and device, drawn on the CPU
    perm = torch.randperm(len(x), generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
    cut = int(0.8 * len(x))
    return _make("digits", (x[perm[:cut]], y[perm[:cut]]), (x[perm[cut:]], y[perm[cut:]]), 10)


def _load_cifar(root: str, name: str) -> Dataset:
    if name == "cifar10":
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, key = ["test_batch"], b"labels"
    else:
        train_files, test_files, key = ["train"], ["test"], b"fine_labels"
    for sub in ("", "cifar-10-batches-py", "cifar-100-python"):
        if all(os.path.isfile(os.path.join(root, sub, f)) for f in train_files + test_files):
            root = os.path.join(root, sub)
            break
    else:
        raise FileNotFoundError(f"{name}: expected the python batches {train_files + test_files} in {root!r} "
                                f"(or in its cifar-10-batches-py/ or cifar-100-python/ folder)")

    def read(files):
        xs, ys = [], []
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                d = pickle.load(fh, encoding="bytes")  # the official format is a pickle: trusted files only
            if b"data" not in d or key not in d:
                raise ValueError(f"{os.path.join(root, f)}: not a {name} python batch (no {b'data'!r}/{key!r} entries)")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[key], dtype=np.int64))
        return torch.from_numpy(np.concatenate(xs)).float() / 255.0, torch.from_numpy(np.concatenate(ys))

    return _make(name, read(train_files), read(test_files), 10 if name == "cifar10" else 100)


def _read_image(path: str) -> torch.Tensor:
    if path.lower().endswith(".pt"):
        t = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
            raise ValueError(f"{path}: expected a (C, H, W) or (H, W) tensor")
        t = t.float()
        return (t if t.dim() == 3 else t.unsqueeze(0)) / (255.0 if t.max() > 1 else 1.0)
    from .imageio import read_png

    a = np.load(path) if path.lower().endswith(".npy") else read_png(path)
    if a.ndim not in (2, 3):
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) image, got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a)).float() / (255.0 if a.dtype == np.uint8 or a.max() > 1 else 1.0)
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)


def _load_folder(root: str) -> Dataset:
    splits = {}
    for split in ("train", "test"):
        base = os.path.join(root, split)
        if not os.path.isdir(base):
            raise FileNotFoundError(f"image folder {root!r}: expected {split}/<class name>/ sub-folders holding "
                                    f"{', '.join(FOLDER_EXTENSIONS)} images; {base!r} is missing")
        classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
        if not classes:
            raise ValueError(f"image folder {base!r} has no class sub-folders")
        xs, ys, paths = [], [], []
        for k, cname in enumerate(classes):
            files = _class_files(os.path.join(base, cname))
            xs += [_read_named(p) for p in files]
            ys += [k] * len(files)
            paths += files
        by_shape = {}
        for x, p in zip(xs, paths):
            by_shape.setdefault(tuple(x.shape), []).append(p)
        if len(by_shape) != 1:
            raise ValueError(f"image folder {base!r}: every image must have the same shape; found "
                             f"{_shapes_text(by_shape)}")
        splits[split] = (torch.stack(xs), torch.tensor(ys), tuple(classes), by_shape)
    if splits["train"][2] != splits["test"][2]:
        raise ValueError(f"image folder {root!r}: train/ and test/ must hold the same class folders")
    if set(splits["train"][3]) != set(splits["test"][3]):
        raise ValueError(f"image folder {root!r}: train/ and test/ images must have the same shape; found "
                         f"{_shapes_text({**splits['train'][3], **splits['test'][3]})}")
    return _make("folder", splits["train"][:2], splits["test"][:2], len(splits["train"][2]), splits["train"][2])


def _class_files(folder: str) -> list[str]:
    """The image files of a class folder, sorted; anything else (but hidden files) is an error naming it."""
    names = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    others = [f for f in names if not f.lower().endswith(FOLDER_EXTENSIONS)
              or not os.path.isfile(os.path.join(folder, f))]
    if others:
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        raise ValueError(f"class folder {folder!r} holds {', '.join(repr(f) for f in others[:5])}{more}, which "
                         f"{'is not an image' if len(others) == 1 else 'are not images'} it can read (only "
                         f"{', '.join(FOLDER_EXTENSIONS)} files): convert or move them out")
    if not names:
        raise ValueError(f"class folder {folder!r} holds no {'/'.join(FOLDER_EXTENSIONS)} images")
    return [os.path.join(folder, f) for f in names]


def _read_named(path: str) -> torch.Tensor:
    try:
        return _read_image(path)
    except Exception as err:  # numpy, zlib and torch errors name no file
        if path in str(err):
            raise
        raise ValueError(f"{path}: cannot be read as an image ({type(err).__name__}: {err})") from err


def _shapes_text(by_shape: dict) -> str:
    """``(1, 8, 8) in 3 files (e.g. 'a.png'), (3, 8, 8) in 1 file ('b.png')``."""
    return ", ".join(f"{s} in {len(p)} file{'s' if len(p) > 1 else ''} ({'e.g. ' if len(p) > 1 else ''}{p[0]!r})"
                     for s, p in sorted(by_shape.items()))


def _load_idx_pair(root: str, name: str) -> Dataset:
    train, test = load_fashion_mnist(root, train=True), load_fashion_mnist(root, train=False)
    return _make(name, train, test, 10, FASHION_MNIST_CLASSES if name == "fashion-mnist" else tuple(map(str, range(10))))


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Load a dataset by name (see :data:`DATASETS`), from ``data_dir`` when given.

    ``fashion-mnist`` defaults to the Debian package's folder; ``mnist``, ``cifar10``, ``cifar100``
    and ``folder`` need ``data_dir``; ``digits`` comes with scikit-learn.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if name == "digits":
        return _load_digits_split()
    if data_dir is None and name != "fashion-mnist":
        raise ValueError(f"dataset {name!r} is read from disk: pass data_dir (--data-dir) with its files")
    root = data_dir or FASHION_MNIST_DIR
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data dir {root!r} for dataset {name!r} does not exist")
    if name in ("fashion-mnist", "mnist"):
        ds = _load_idx_pair(root, name)
    elif name in ("cifar10", "cifar100"):
        ds = _load_cifar(root, name)
    else:
        ds = _load_folder(root)
    ds.data_dir = data_dir
    return ds


class ClassSampler:
    """Random real images per class from a labels tensor, without Python lists of images.

    Labels are sorted once into per-class index ranges; a draw is one ``randperm`` per class and one
    gather from the image tensor.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int):
        self.order = torch.argsort(labels, stable=True)
        # class sizes and offsets are read by Python on every draw: host ints, so a draw on a GPU
        # costs no device-to-host copy
        self.sizes = torch.bincount(labels, minlength=num_classes).tolist()
        self.starts = [0, *itertools.accumulate(self.sizes)][:-1]
        self.num_classes = num_classes

    def check(self, n: int, what: str = "n") -> None:
        """Raise if some class holds fewer than ``n`` images."""
        smallest = min(self.sizes)
        if n > smallest:
            c = self.sizes.index(smallest)
            raise ValueError(f"{what}={n} is larger than class {c}, which holds {smallest} images")

    def indices(self, c: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` distinct random indices of class ``c`` (all of them, shuffled, if the class is smaller)."""
        pick = torch.randperm(self.sizes[c], generator=generator, device=self.order.device)[:n]
        return self.order[self.starts[c] + pick]

    def indices_all(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(num_classes, n)`` indices, ``n`` distinct images per class, class-major."""
        self.check(n)
        return torch.stack([self.indices(c, n, generator) for c in range(self.num_classes)])
