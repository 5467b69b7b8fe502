"""Hyperparameters: ``paper`` (the original code's values, docs/spec.md §1b, §2b, §3, §4b and §5b) and ``quick`` (sized
for a 2-core CPU: narrower network, fewer real images and iterations; see each entry's comment).

``preset(method, dataset, ipc, name)`` returns a dict; every key can be overridden. Keys every
method has: ``zca`` (whiten the data, :mod:`ddkernels.distill.data.zca`; off in DC/DSA/DM/IDC's code) and the
``eval*`` keys of the evaluation protocol (:func:`ddkernels.distill.runs.eval_protocol`).
"""
from __future__ import annotations

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
PRESET_NAMES = ("paper", "quick")


def get_loops(ipc: int) -> tuple[int, int]:
    """VICO ``get_loops``: (outer_loop, inner_loop) by IPC."""
    table = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
    if ipc in table:
        return table[ipc]
    # Other IPCs: VICO exits; use the nearest listed setting instead of failing.
    return table[min(table, key=lambda k: abs(k - ipc))]


def _idc_lr(dataset: str, ipc: int) -> float:
    # IDC's base lr_img, scaled by IPC/10 (argument.py); (size/base_size)² is 1 for these datasets.
    base = 1e-4 if dataset in ("mnist", "fashion-mnist", "digits") else 5e-3
    return base * ipc / 10


def preset(method: str, dataset: str, ipc: int, name: str) -> dict:
    """The hyperparameters of ``method`` on ``dataset`` at ``ipc`` for preset ``name``."""
    if name not in PRESET_NAMES:
        raise ValueError(f"preset must be one of {PRESET_NAMES}, got {name!r}")
    gray = dataset in ("mnist", "fashion-mnist", "digits")
    quick = name == "quick"
    if method in ("dc", "dsa"):
        outer, inner = get_loops(ipc)
        hp = dict(iterations=1000, lr_img=0.1, momentum_img=0.5, lr_net=0.01, batch_real=256, batch_train=256,
                  init="noise" if method == "dc" else "real", metric="ours", layers="weights",
                  aug="" if method == "dc" else DSA_STRATEGY, outer_loop=outer, inner_loop=inner, width=128,
                  eval="dsa", eval_epochs=300 if method == "dc" else 1000, eval_aug="" if method == "dc" else None,
                  eval_dc_aug="", eval_width=None, zca=False)
        if method == "dc" and dataset == "mnist":
            # VICO get_daparam: DC (no DSA) evaluates MNIST with its per-image crop/scale/rotate aug,
            # and then for 1000 epochs (epoch_eval_train is 1000 whenever an aug is used).
            hp.update(eval_dc_aug="crop_scale_rotate", eval_epochs=1000)
        if quick:
            # Real init (noise needs hundreds of iterations), 64 real images per class, width 64,
            # at most 5 outer/10 inner loops per iteration.
            hp.update(iterations=20, batch_real=64, width=64, init="real", outer_loop=min(outer, 5),
                      inner_loop=min(inner, 10), eval_epochs=300)
        return hp
    if method == "dm":
        hp = dict(iterations=20000, lr_img=1.0, momentum_img=0.5, batch_real=256, init="real", aug=DSA_STRATEGY,
                  width=128, eval="dsa", eval_epochs=1000, eval_aug=None, eval_width=None, zca=False)
        if quick:
            hp.update(iterations=200, batch_real=64, width=64, eval_epochs=300)
        return hp
    if method == "idc":
        hp = dict(iterations=2000, inner_loop=100, factor=2, lr_img=_idc_lr(dataset, ipc), momentum_img=0.5,
                  batch_real=64, batch_syn_max=128, batch_net=64, n_data=2000 if dataset.startswith("cifar") else 500,
                  lr_net=0.01, metric="l1" if gray else "mse", layers="conv",
                  aug_match="color_crop" if dataset == "mnist" else "color_crop_cutout",
                  aug_net="color_crop", cutmix_p=0.0 if dataset == "mnist" else 0.5,
                  class_steps="sequential", decode_type="single", width=128, eval="idc", eval_epochs=1000,
                  eval_aug=None, eval_width=None, zca=False)
        if quick:
            # Width 32, 20 outer × 10 inner iterations, 32 real images per class, all classes matched in
            # one step (one batched distance call). lr_img ×300 for the ~1000× fewer image steps: on
            # Fashion-MNIST IPC 1, ×10/×100/×300 gave 70.5/74.2/75.9% (mix init alone: 69.6%).
            hp.update(iterations=20, inner_loop=10, batch_real=32, n_data=128, width=32, class_steps="batched",
                      lr_img=hp["lr_img"] * 300, eval_epochs=300, eval_width=32)
        return hp
    if method == "kfs":
        # docs/spec.md §6b: nothing is verifiable; the DM protocol (§2b) with our decoder choices (see kfs.py).
        hp = dict(iterations=20000, batch_real=256, width=128, aug=DSA_STRATEGY, init="real", num_decoders=4,
                  codes_per_class=None, code_channels=None, scale=2, hidden_channels=8, kernel_size=3, residual=True,
                  residual_init=0.1, lr_code=0.01, lr_dec=0.001, div_weight=0.0, div_temp=0.1, eval="dsa",
                  eval_epochs=1000, eval_aug=None, eval_width=None, zca=False)
        if quick:
            # DM's quick sizes. Above IPC 1: 2 decoders and 2·IPC codes per class (half the budget), so
            # the decoded set has 4·IPC images per class (IDC's factor-2 size) and its 300-epoch CPU
            # evaluation stays in minutes; the full budget at 4 decoders would decode 15.6·IPC per class.
            hp.update(iterations=200 if ipc == 1 else 100, batch_real=64, width=64, eval_epochs=300)
            if ipc > 1:
                hp.update(num_decoders=2, codes_per_class=2 * ipc)
        return hp
    if method == "rtp":
        # docs/spec.md §5b: K = 16 bases at half resolution, r from the budget, T = 150 inner steps of SGD(0.01,
        # momentum 0.9) on 32 rows per class, 64 real images per class in the meta loss, outer SGD(0.1,
        # momentum 0.5) after clipping the gradient norm to 2, 500k outer iterations (the config's n_iters).
        hp = dict(iterations=500000, num_bases=16, downsample=2, rows_per_class=None, init="xavier", inner_steps=150,
                  inner_lr=0.01, inner_momentum=0.9, batch_syn=32, batch_real=64, lr_syn=0.1, momentum_syn=0.5,
                  clip=2.0, width=128, eval="rtp", eval_epochs=300, eval_aug=None, eval_width=None)
        if quick:
            # Sized for a 2-core CPU, where evaluation cost grows with the decoded set (C·r images): more
            # bases and so fewer rows, a warm start from real images (rank-K fit; Xavier noise needs far
            # more than CPU-many iterations), T = 10 steps on 6 rows and 20 real images per class, width 32.
            # IPC < 10: K = 30 half-resolution bases (r = 6 on Fashion-MNIST), 40 iterations at lr_syn ×30
            # (one seed: ×1/×10/×30 gave meta loss 1.50/1.41/1.37 after 12 iterations). IPC ≥ 10:
            # full-resolution bases, K = 80 (r = 19), 20 iterations at lr_syn ×3 — K = 160 half-resolution
            # bases at lr_syn ×30 scored below random real (63.2 % vs 75.4 %; docs/results.md, RTP). Digits: 4 bases.
            if ipc < 10:
                hp.update(iterations=40, num_bases=30, lr_syn=3.0)
            else:
                hp.update(iterations=20, num_bases=80, downsample=1, lr_syn=0.3)
            if dataset == "digits":
                hp.update(num_bases=4)
            hp.update(init="real", inner_steps=10, batch_syn=6, batch_real=20, width=32, eval_width=32)
        return hp
    if method == "mtt":
        return _mtt(dataset, ipc, name)
    if method == "haba":
        return _haba(dataset, ipc, name)
    raise ValueError(f"unknown method {method!r}; expected one of dc, dsa, dm, idc, kfs, mtt, haba, rtp")


def default_expert_dir(dataset: str, name: str) -> str:
    """Where ``ddkernels experts --dataset D --preset P`` is told to write by docs/methods.md."""
    return f"runs/experts-{dataset}-{name}"


def _mtt(dataset: str, ipc: int, name: str) -> dict:
    # MTT distill.py defaults (docs/spec.md §3); max_start_epoch 20 as in mtt-distillation's README commands.
    hp = dict(iterations=5000, lr_img=1000.0, momentum_img=0.5, lr_lr=1e-5, momentum_lr=0.5, lr_teacher=0.01,
              syn_steps=20, expert_epochs=3, max_start_epoch=20, batch_syn=None, init="real", aug=DSA_STRATEGY,
              zca=False, expert_dir=default_expert_dir(dataset, name), width=128, batch_real=256,
              eval="dsa", eval_epochs=1000, eval_aug=None, eval_width=None)
    if name == "quick":
        # The quick experts (width 32, 8 short epochs of 40 SGD steps: ddkernels.distill.experts): start
        # within their first 4 epochs, match 2; 10 student steps.
        hp.update(iterations=100, lr_img=100.0, syn_steps=10, expert_epochs=2, max_start_epoch=4, width=32,
                  eval_epochs=300, eval_width=32)
    return hp


def _haba(dataset: str, ipc: int, name: str) -> dict:
    outer, inner = get_loops(ipc)
    # run_cifar10_ipc{1,10,50}_style5.sh and distill_fac.py defaults (docs/spec.md §4b); the dm/dc keys are
    # DM's/DC's for --set base=dm|dc.
    hp = dict(_mtt(dataset, ipc, "paper"), iterations=15000, base="mtt", hallucinators=5, mid_channels=3,
              kernel_size=3, normalize=False, hallucinator_init="default", budget="bases", bases_per_class=None, base_downsample=1,
              product=False, syn_steps=50 if ipc == 1 else 30, expert_epochs=2, max_start_epoch=2 if ipc == 1 else 20,
              lr_img=100.0, momentum_img=0.95, lr_style=100.0, momentum_style=0.95,
              lr_lr=1e-7 if ipc == 1 else 1e-5, momentum_lr=0.9, lr_teacher=0.001 if ipc == 10 else 0.01,
              min_syn_lr=0.001, lambda_club=0.1, lambda_con=0.1, lambda_cls=1.0, lambda_likeli=0.1,
              temperature=0.07, batch_con=None, lr_extractor=0.001, momentum_extractor=0.9,
              lr_net=0.01, outer_loop=outer, inner_loop=inner, batch_train=256, metric="ours", layers="weights")
    hp["expert_dir"] = default_expert_dir(dataset, name)
    if name == "quick":
        hp.update(_QUICK_HABA, outer_loop=min(outer, 5), inner_loop=min(inner, 10))  # as DC's quick
        hp.update(_QUICK_HABA_IPC1 if ipc == 1 else {})
    return hp


# Sized for a 2-core CPU with the quick experts; storage counted in full (bases + hallucinators +
# learned lr within the IPC budget: budget "total"); near-identity hallucinators (HaBa's random conv
# kernels start every hallucination as a filtered copy of its base, with 60 iterations to repair it);
# lr_style 1: with the official 100 the hallucinator kernels and biases grew to ~100 within 40
# iterations on Fashion-MNIST IPC 1 and the student stopped learning (loss stuck at 1.0). Bases are stored at half resolution so a
# 1-channel IPC-1 budget holds bases for every class and hallucinators (see haba.py, "Budget").
_QUICK_HABA = dict(iterations=60, hallucinator_init="identity", lr_style=1.0, budget="total", base_downsample=2, hallucinators=5, mid_channels=1, width=32,
                   syn_steps=10, expert_epochs=2, max_start_epoch=4, lr_teacher=0.01, lr_lr=1e-5, batch_syn=20,
                   batch_con=20, batch_real=64, eval_epochs=300, eval_width=32)
# IPC 1 (7,840 floats on Fashion-MNIST): 2 hallucinators (2,744 floats) and 2 half-size bases per class.
_QUICK_HABA_IPC1 = dict(hallucinators=2)


__all__ = ["DSA_STRATEGY", "PRESET_NAMES", "default_expert_dir", "get_loops", "preset"]
