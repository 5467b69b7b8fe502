"""``make demo``: a real IDC distillation of Fashion-MNIST on this machine.

IDC (multi-formation through ``ddkernels.multi_formation``, gradient matching through
``ddkernels.grad_distance``) distills Fashion-MNIST to 1 stored 28×28 image per class with the
``quick`` preset and the fused backends (``backend="auto"``), into ``runs/demo/``. It then trains
fresh ConvNets on the distilled set and on a random real subset with the same storage (1 image per
class) and prints both test accuracies.

Run it again with ``--resume`` to continue an interrupted run; any other option of
``ddkernels distill`` can be passed through ``--set KEY=VALUE``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from . import data
from .cli import main as cli_main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=data.FASHION_MNIST_DIR, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--out", default=os.path.join("runs", "demo"))
    ap.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    # One thread by default: on a shared 2-core machine two contended threads ran IDC 3.5x slower.
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a hyperparameter")
    ap.add_argument("--device", default="auto", help="auto (CUDA when visible, else CPU), cpu, cuda, cuda:N")
    args = ap.parse_args(argv)
    if not args.resume and os.path.isfile(os.path.join(args.out, "config.json")):
        shutil.rmtree(args.out)  # a previous demo run: start over (only folders holding a run are removed)
    t0 = time.time()
    print("ddkernels demo: IDC distills Fashion-MNIST to 1 image per class (quick preset, fused backends)\n")
    cmd = ["distill", "--method", "idc", "--dataset", "fashion-mnist", "--ipc", "1", "--preset", "quick",
           "--backend", "auto", "--device", args.device, "--data-dir", args.data_dir, "--out", args.out]
    cmd += ["--resume"] if args.resume else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    for item in args.set:
        cmd += ["--set", item]
    rc = cli_main(cmd)
    if rc == 0:
        print(f"\nrun directory: {args.out}/ (synthetic.png, decoded.png, images_labels.pt, metrics.json, log.txt)")
        print(f"demo finished in {time.time() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
