"""``make demo``: IDC's multi-formation on real Fashion-MNIST, end to end on this machine.

Same storage budget two ways, 10 stored 28×28 images per class:
  * real      - 10 random training images per class;
  * IDC init  - each stored image packs 4 real images as 14×14 tiles (IDC's "mix" initialization),
                decoded by ``ddkernels.multi_formation`` (factor 2) into 40 training images per class.
It checks every available backend against the reference on the real batch, times them side by side,
trains small ConvNets on both sets (decoding on every step, as IDC does), reports Fashion-MNIST test
accuracy, and writes stored/decoded image grids to ``demo_out/``. Synthetic-set *optimization*
(DC/DSA/DM/IDC trainers) is not part of this demo yet.
"""
from __future__ import annotations

import argparse
import os
import struct
import time
import zlib

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import ddkernels
from ddkernels import data, dispatch
from ddkernels.testing import assert_close


def mix_init(images: torch.Tensor, labels: torch.Tensor, ipc: int, factor: int, gen: torch.Generator) -> torch.Tensor:
    """IDC "mix" init: per class, ipc·factor² real images, each nearest-resized into one tile."""
    n, c, h, w = images.shape
    sizes = [h // factor + (1 if i < h % factor else 0) for i in range(factor)]  # first h%f tiles are larger
    out = torch.empty(10 * ipc, c, h, w)
    for cls in range(10):
        pool = (labels == cls).nonzero().squeeze(1)
        pick = pool[torch.randperm(len(pool), generator=gen)[: ipc * factor * factor]]
        src = images[pick].reshape(ipc, factor * factor, c, h, w)
        for k in range(factor * factor):
            i, j = divmod(k, factor)
            y0, x0 = sum(sizes[:i]), sum(sizes[:j])
            tile = F.interpolate(src[:, k], size=(sizes[i], sizes[j]), mode="nearest")
            out[cls * ipc:(cls + 1) * ipc, :, y0:y0 + sizes[i], x0:x0 + sizes[j]] = tile
    return out


def small_convnet() -> nn.Module:
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(o, o), nn.ReLU(), nn.AvgPool2d(2)]
    return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 7 * 7, 10))


def train_and_test(stored, labels, decode, test_x, test_y, steps, seed, desc) -> float:
    torch.manual_seed(seed)
    net = small_convnet()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in tqdm(range(steps), desc=desc, leave=False, mininterval=1.0):
        x, y = decode(stored, labels)  # decoded afresh every step, as in IDC
        idx = torch.randint(0, len(x), (64,))
        xb = x[idx]
        flip = torch.rand(len(xb)) < 0.5  # cheap augmentation: horizontal flips
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = F.cross_entropy(net((xb - 0.286) / 0.353), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net((b - 0.286) / 0.353).argmax(1) for b in test_x.split(2000)])
    return 100.0 * (pred == test_y).float().mean().item()


def write_png(path: str, img: torch.Tensor) -> None:
    """Grayscale PNG from a (H, W) tensor in [0, 1] (no imaging dependency)."""
    a = (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in a)

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def grid(images: torch.Tensor, ncol: int) -> torch.Tensor:
    n, _, h, w = images.shape
    nrow = -(-n // ncol)
    g = torch.ones(nrow * (h + 2), ncol * (w + 2))
    for k in range(n):
        r, c = divmod(k, ncol)
        g[r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = images[k, 0]
    return g


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=data.FASHION_MNIST_DIR, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--ipc", type=int, default=10, help="stored images per class")
    ap.add_argument("--steps", type=int, default=300, help="training steps per network")
    ap.add_argument("--seeds", type=int, default=3, help="networks trained per set")
    ap.add_argument("--out", default="demo_out")
    args = ap.parse_args(argv)
    t0 = time.time()

    print(f"ddkernels {ddkernels.__version__} demo — IDC multi-formation on Fashion-MNIST")
    x_train, y_train = data.load_fashion_mnist(args.data_dir, train=True)
    x_test, y_test = data.load_fashion_mnist(args.data_dir, train=False)
    print(f"loaded Fashion-MNIST from {args.data_dir}: train {tuple(x_train.shape)}, test {tuple(x_test.shape)}")

    gen = torch.Generator().manual_seed(0)
    f = 2
    labels = torch.arange(10).repeat_interleave(args.ipc)
    stored_idc = mix_init(x_train, y_train, args.ipc, f, gen)
    stored_real = torch.cat([x_train[(y_train == c).nonzero().squeeze(1)[torch.randperm(int((y_train == c).sum()), generator=gen)[:args.ipc]]]
                             for c in range(10)])

    # 1. every available backend against the reference, forward and backward, on the real batch.
    op = dispatch.OpBackends.registry["multi_formation"]
    backends = [b for b in dispatch.BACKENDS if not op.reasons(b, torch.device("cpu"), torch.float32)]
    ref_in = stored_idc.clone().requires_grad_()
    ref = ddkernels.multi_formation(ref_in, f, backend="reference")
    g = torch.randn_like(ref)
    ref.backward(g)
    print(f"\ndecode {tuple(stored_idc.shape)} -> {tuple(ref.shape)}; backends available here: {', '.join(backends)}")
    for b in backends:
        xb = stored_idc.clone().requires_grad_()
        start = time.perf_counter()
        reps = 20
        for _ in range(reps):
            y = ddkernels.multi_formation(xb, f, backend=b)
            xb.grad = None
            y.backward(g)
        ms = (time.perf_counter() - start) / reps * 1e3
        assert_close(y, ref, name=f"{b} forward")
        assert_close(xb.grad, ref_in.grad, name=f"{b} grad")
        print(f"  {b:<10} matches reference (fwd+bwd); {ms:7.3f} ms per decode+backward")

    # 2. same storage, two training sets; test accuracy on the 10k test images.
    best = "cpu" if "cpu" in backends else "reference"
    decoders = {
        f"real ({args.ipc}/class)": lambda s, y: (s, y),
        f"IDC init, decoded f=2 ({args.ipc * 4}/class)": lambda s, y: (ddkernels.multi_formation(s, f, backend=best),
                                                                      ddkernels.multi_formation_targets(y, f)),
    }
    stored = {k: v for k, v in zip(decoders, (stored_real, stored_idc))}
    print(f"\ntraining {args.seeds} small ConvNets per set for {args.steps} steps (decode backend: {best})")
    results = {}
    for name, decode in decoders.items():
        accs = torch.tensor([train_and_test(stored[name], labels, decode, x_test, y_test, args.steps, s, name)
                             for s in range(args.seeds)])
        results[name] = accs
        print(f"  {name:<36} test accuracy {accs.mean():5.2f} ± {accs.std(unbiased=False):4.2f} %")

    os.makedirs(args.out, exist_ok=True)
    write_png(os.path.join(args.out, "stored_idc.png"), grid(stored_idc[:: args.ipc], 10))
    write_png(os.path.join(args.out, "decoded_idc.png"), grid(ref.detach()[:: args.ipc], 10))
    print(f"\nimage grids written to {args.out}/ (stored_idc.png: one stored image per class; decoded_idc.png: its 4 decodes)")
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
