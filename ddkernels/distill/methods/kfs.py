"""KFS: latent codes × tiny decoders trained with distribution matching (Lee et al., arXiv 2208.10494),
docs/spec.md §6.

No official code is public and the paper's decoder, initialisation and auxiliary term are
unverified (docs/spec.md §6a); what this trainer does:

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
from .dm import distribution_match


def _with_codes(bank: LatentDecoderBank, codes: torch.Tensor) -> LatentDecoderBank:
    """A copy of ``bank`` holding ``codes`` (whole classes, class-major) instead of its own."""
    new = copy.deepcopy(bank)
    new.num_classes = len(codes) // bank.codes_per_class
    new.codes = torch.nn.Parameter(codes.clone())
    return new


class KFS(Distiller):
    method = "kfs"
    stored_space = "latent codes (normalized, 1/scale resolution) and decoder weights"
    decodes = True
    per_class_params = ("codes",)
    # Codes split by class; the decoders are shared and their gradients summed over ranks in
    # image_step (DM's loss is a sum over classes, so the sum is the single-process gradient).
    class_parallel = True

    def init_synthetic(self) -> None:
        hp = self.hp
        ch, h, w = self.ds.train_x.shape[1:]
        budget = self.num_classes * self.ipc * ch * h * w
        geometry = dict(num_decoders=hp["num_decoders"], code_channels=hp["code_channels"] or ch,
                        hidden_channels=hp["hidden_channels"], out_channels=ch, scale=hp["scale"],
                        kernel_size=hp["kernel_size"])
        fit = codes_for_budget(budget, self.num_classes, image_size=(h, w), **geometry)
        m = hp["codes_per_class"]
        if m is None:
            if fit < 1:
                raise ValueError(f"ipc={self.ipc}: no code fits beside {hp['num_decoders']} decoders in the budget of "
                                 f"{budget} floats; lower num_decoders/hidden_channels or raise scale")
            m = fit
        elif m > fit:
            raise ValueError(f"codes_per_class={m} does not fit the budget of ipc={self.ipc} ({budget} floats): "
                             f"at most {fit} codes per class beside {hp['num_decoders']} decoders")
        if self.shard is not None and hp["div_weight"]:
            raise ValueError("div_weight > 0 compares each image with every class's real mean, which a rank split "
                             "by class does not hold; run it in one process or set div_weight=0")
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.bank = LatentDecoderBank(self.num_classes, m, image_size=(h, w), residual=hp["residual"],
                                          residual_init=hp["residual_init"], backend=self.backend, **geometry)
        if len(self.classes) < self.num_classes:
            # Built for every class above, so the decoders' initial draw does not depend on the split;
            # the rank keeps its classes' codes.
            rows = torch.cat([torch.arange(c * m, (c + 1) * m) for c in self.classes])
            self.bank = _with_codes(self.bank, self.bank.codes.detach()[rows])
        if hp["init"] == "real":
            self.sampler.check(m, "codes_per_class")
            idx = self.init_indices(m).flatten()
            with torch.no_grad():
                self.bank.codes.copy_(F.avg_pool2d(self.ds.normalize(self.ds.train_x[idx]), hp["scale"]))
        elif hp["init"] != "noise":
            raise ValueError(f"init must be 'real' or 'noise' for kfs, got {hp['init']!r}")
        decoders = [p for n, p in self.bank.named_parameters() if n != "codes"]
        self.opt = torch.optim.Adam([{"params": [self.bank.codes], "lr": hp["lr_code"]},
                                     {"params": decoders, "lr": hp["lr_dec"]}])
        self.aug = self.augment(hp["aug"])

    def synthetic_params(self) -> dict[str, torch.Tensor]:
        return dict(self.bank.named_parameters())

    def stored_labels(self) -> torch.Tensor:
        # One label per stored code (synthetic.png rows, synthetic.pt).
        return torch.tensor(self.classes, dtype=torch.int64)[self.bank.code_labels()]

    def replace_params(self, params: dict[str, torch.Tensor]) -> None:
        # A new bank for the gathered set (every class's codes), so the rank's own bank is untouched.
        self.bank = _with_codes(self.bank, params["codes"])
        with torch.no_grad():
            for name, p in self.bank.named_parameters():
                if name != "codes":
                    p.copy_(params[name])

    def step(self) -> float:
        hp = self.hp
        net = self.fresh_net()
        net.requires_grad_(False)
        loss, real_mean, syn_feat = distribution_match(self, net, self.bank(), self.aug)
        if hp["div_weight"]:
            loss = loss + hp["div_weight"] * self.discrimination(real_mean, syn_feat)
        self.image_step(loss)
        return float(loss.detach())

    def discrimination(self, real_mean: torch.Tensor, syn_feat: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each synthetic feature's cosine similarities to the real class means
        (``(C, d)``), temperature ``div_temp``; ``syn_feat`` is ``(C, n, d)``, row ``c`` of class ``c``."""
        k, n, _ = syn_feat.shape
        logits = F.normalize(syn_feat, dim=-1) @ F.normalize(real_mean, dim=-1).T / self.hp["div_temp"]
        return F.cross_entropy(logits.reshape(k * n, k), torch.arange(k).repeat_interleave(n))

    def training_set(self):
        with torch.no_grad():
            return self.bank().detach(), self.stored_labels().repeat_interleave(self.bank.num_decoders)

    def pixel_images(self):
        with torch.no_grad():
            return self.ds.denormalize(self.bank.upsample(self.bank.codes)).clamp(0, 1)


__all__ = ["KFS"]
