"""KFS: latent codes × tiny decoders trained with distribution matching (Lee et al., arXiv 2208.10494),
docs/spec.md §6.

No official code is public and the paper's decoder, initialisation and auxiliary term are
unverified (docs/spec.md §6a); what this trainer (:class:`CodesDecoders` ×
:class:`DiscriminativeDistributionMatching`) does:

* storage: per-class latent codes at ``1/scale`` of the image resolution and ``num_decoders`` tiny
  decoders (:class:`ddkernels.nn.LatentDecoderBank`); ``codes_per_class=None`` takes the most codes
  whose codes + decoders fit in the budget of ``ipc`` plain images per class;
* initialisation (``init="real"``): each code is a real image of its class, average-pooled by
  ``scale``, and the decoders start near the bilinear upsampling (small residual branch);
* loss: DM's (:func:`~ddkernels.distill.methods.dm.distribution_match`) on all ``C·M·K`` decoded images
  under a fresh random ConvNet with Siamese DSA per class, plus, with ``div_weight > 0``, a
  class-discriminative term: cross-entropy of the cosine similarities (temperature ``div_temp``)
  between each decoded image's feature and the real class means;
* optimizer: Adam, one param group for the codes (``lr_code``) and one for the decoders (``lr_dec``):
  with K decoders and M codes the per-image gradients are 1/(M·K) of DM's, and Adam's scale
  invariance keeps the two learning rates meaningful across budgets.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ...nn.latent import LatentDecoderBank, codes_for_budget
from .base import Distiller
from .dm import DistributionMatching
from .parts import Parameterization
from .presets import DSA_STRATEGY
from .registry import register


def _with_codes(bank: LatentDecoderBank, codes: torch.Tensor) -> LatentDecoderBank:
    """A copy of ``bank`` holding ``codes`` (whole classes, class-major) instead of its own."""
    new = copy.deepcopy(bank)
    new.num_classes = len(codes) // bank.codes_per_class
    new.codes = torch.nn.Parameter(codes.clone())
    return new


class CodesDecoders(Parameterization):
    """Per-class latent ``codes`` × shared tiny decoders (:class:`ddkernels.nn.LatentDecoderBank`; see
    the module doc), optimized with Adam (``lr_code``, ``lr_dec``). Class-parallel: codes split by
    class; the decoders' gradients are summed over ranks in ``image_step``."""

    stored_space = "latent codes (normalized, 1/scale resolution) and decoder weights"
    decodes = True
    per_class_params = ("codes",)
    optimizer = torch.optim.Adam

    def init(self) -> None:
        t, hp = self.t, self.t.hp
        ch, h, w = t.ds.train_x.shape[1:]
        budget = t.num_classes * t.ipc * ch * h * w
        geometry = dict(num_decoders=hp["num_decoders"], code_channels=hp["code_channels"] or ch,
                        hidden_channels=hp["hidden_channels"], out_channels=ch, scale=hp["scale"],
                        kernel_size=hp["kernel_size"])
        fit = codes_for_budget(budget, t.num_classes, image_size=(h, w), **geometry)
        m = hp["codes_per_class"]
        if m is None:
            if fit < 1:
                raise ValueError(f"ipc={t.ipc}: no code fits beside {hp['num_decoders']} decoders in the budget of "
                                 f"{budget} floats; lower num_decoders/hidden_channels or raise scale")
            m = fit
        elif m > fit:
            raise ValueError(f"codes_per_class={m} does not fit the budget of ipc={t.ipc} ({budget} floats): "
                             f"at most {fit} codes per class beside {hp['num_decoders']} decoders")
        seed = int(torch.randint(2 ** 62, (1,), generator=t.gen, device=t.device))
        self.bank = t.seeded(seed, lambda: LatentDecoderBank(t.num_classes, m, image_size=(h, w),
                                                             residual=hp["residual"], residual_init=hp["residual_init"],
                                                             backend=t.backend, device="cpu", **geometry))
        if len(t.classes) < t.num_classes:
            # Built for every class above, so the decoders' initial draw does not depend on the split;
            # the rank keeps its classes' codes.
            rows = torch.cat([torch.arange(c * m, (c + 1) * m, device=t.device) for c in t.classes])
            self.bank = _with_codes(self.bank, self.bank.codes.detach()[rows])
        if hp["init"] == "real":
            t.sampler.check(m, "codes_per_class")
            idx = t.init_indices(m).flatten()
            with torch.no_grad():
                self.bank.codes.copy_(F.avg_pool2d(t.ds.normalize(t.ds.train_x[idx]), hp["scale"]))
        elif hp["init"] != "noise":
            raise ValueError(f"init must be 'real' or 'noise' for kfs, got {hp['init']!r}")

    def params(self):
        return dict(self.bank.named_parameters())

    def param_groups(self):
        decoders = [p for n, p in self.bank.named_parameters() if n != "codes"]
        return [{"params": [self.bank.codes], "lr": self.t.hp["lr_code"]},
                {"params": decoders, "lr": self.t.hp["lr_dec"]}]

    def stored_labels(self):
        # One label per stored code (synthetic.png rows, synthetic.pt).
        return torch.tensor(self.t.classes, dtype=torch.int64, device=self.t.device)[self.bank.code_labels()]

    def replace(self, params):
        # A new bank for the gathered set (every class's codes), so the rank's own bank is untouched.
        self.bank = _with_codes(self.bank, params["codes"])
        with torch.no_grad():
            for name, p in self.bank.named_parameters():
                if name != "codes":
                    p.copy_(params[name])

    def class_batches(self, classes):
        x = self.bank()  # class-major: every owned class's codes through every decoder
        per = len(x) // len(self.t.classes)
        return [self.t.class_rows(x, c, per) for c in classes]

    def drawn_slots(self, idx, draw):
        x, y = self.bank(), self.t.labels.repeat_interleave(self.bank.num_decoders)
        return x[idx], y[idx]

    def num_slots(self):
        return len(self.t.labels) * self.bank.num_decoders

    def training_set(self):
        with torch.no_grad():
            return self.bank().detach(), self.t.stored_labels().repeat_interleave(self.bank.num_decoders)

    def pixel_images(self):
        with torch.no_grad():
            return self.t.ds.denormalize(self.bank.upsample(self.bank.codes)).clamp(0, 1)


class DiscriminativeDistributionMatching(DistributionMatching):
    """DM's loss plus, with hp ``div_weight > 0``, :meth:`discrimination` (KFS's auxiliary term as we
    read it, docs/spec.md §6a)."""

    def init(self):
        super().init()
        if self.t.shard is not None and self.t.hp["div_weight"]:
            raise ValueError("div_weight > 0 compares each image with every class's real mean, which a rank split "
                             "by class does not hold; run it in one process or set div_weight=0")

    def loss(self) -> torch.Tensor:
        loss, real_mean, syn_feat = self.match()
        if self.t.hp["div_weight"]:
            loss = loss + self.t.hp["div_weight"] * self.discrimination(real_mean, syn_feat)
        return loss

    def discrimination(self, real_mean: torch.Tensor, syn_feat: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each synthetic feature's cosine similarities to the real class means
        (``(C, d)``), temperature ``div_temp``; ``syn_feat`` is ``(C, n, d)``, row ``c`` of class ``c``."""
        k, n, _ = syn_feat.shape
        logits = F.normalize(syn_feat, dim=-1) @ F.normalize(real_mean, dim=-1).T / self.t.hp["div_temp"]
        return F.cross_entropy(logits.reshape(k * n, k), torch.arange(k, device=logits.device).repeat_interleave(n))


def paper(dataset: str, ipc: int) -> dict:
    # docs/spec.md §6b: nothing is verifiable; the DM protocol (§2b) with our decoder choices (see the module doc).
    return dict(iterations=20000, batch_real=256, width=128, aug=DSA_STRATEGY, init="real", num_decoders=4,
                codes_per_class=None, code_channels=None, scale=2, hidden_channels=8, kernel_size=3, residual=True,
                residual_init=0.1, lr_code=0.01, lr_dec=0.001, div_weight=0.0, div_temp=0.1, eval="dsa",
                eval_epochs=1000, eval_aug=None, eval_width=None, zca=False, precision="fp32")


def quick(dataset: str, ipc: int) -> dict:
    # DM's quick sizes; above IPC 1, 2 decoders and 2·IPC codes per class (4·IPC decoded images per class).
    hp = dict(paper(dataset, ipc), iterations=200 if ipc == 1 else 100, batch_real=64, width=64, eval_epochs=300)
    if ipc > 1:
        hp.update(num_decoders=2, codes_per_class=2 * ipc)
    return hp


@register
class KFS(Distiller):
    """KFS: :class:`CodesDecoders` × :class:`DiscriminativeDistributionMatching`."""

    method = "kfs"
    PARAMETERIZATION = CodesDecoders
    OBJECTIVE = DiscriminativeDistributionMatching
    PRESETS = {"paper": paper, "quick": quick}


__all__ = ["CodesDecoders", "DiscriminativeDistributionMatching", "KFS"]
