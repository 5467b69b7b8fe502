"""KFS: latent codes × tiny decoders trained with distribution matching (Lee et al., arXiv 2208.10494),
spec §6.

No official code is public and the paper's decoder, initialisation and auxiliary term are
unverified (spec §6a); what this trainer does:

* storage: per-class latent codes at ``1/scale`` of the image resolution and ``num_decoders`` tiny
  decoders (:class:`ddkernels.nn.LatentDecoderBank`); ``codes_per_class=None`` takes the most codes
  whose codes + decoders fit in the budget of ``ipc`` plain images per class;
* initialisation (``init="real"``): each code is a real image of its class, average-pooled by
  ``scale``, and the decoders start near the bilinear upsampling (small residual branch);
* loss: DM's (:func:`~ddkernels.methods.dm.distribution_match`) on all ``C·M·K`` decoded images
  under a fresh random ConvNet with Siamese DSA per class, plus, with ``div_weight > 0``, a
  class-discriminative term: cross-entropy of the cosine similarities (temperature ``div_temp``)
  between each decoded image's feature and the real class means;
* optimizer: Adam, one param group for the codes (``lr_code``) and one for the decoders (``lr_dec``):
  with K decoders and M codes the per-image gradients are 1/(M·K) of DM's, and Adam's scale
  invariance keeps the two learning rates meaningful across budgets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..latent import LatentDecoderBank, codes_for_budget
from .base import Distiller
from .dm import distribution_match


class KFS(Distiller):
    method = "kfs"
    stored_space = "latent codes (normalized, 1/scale resolution) and decoder weights"
    decodes = True
    per_class_params = ("codes",)
    not_class_parallel_because = ("its decoders are shared by all classes and trained on every class's loss "
                                  "(their gradients would need a sum over ranks, not implemented)")

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
        seed = int(torch.randint(2 ** 62, (1,), generator=self.gen))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.bank = LatentDecoderBank(self.num_classes, m, image_size=(h, w), residual=hp["residual"],
                                          residual_init=hp["residual_init"], backend=self.backend, **geometry)
        if hp["init"] == "real":
            self.sampler.check(m, "codes_per_class")
            idx = self.init_indices(m).flatten()
            with torch.no_grad():
                self.bank.codes.copy_(F.avg_pool2d(self.ds.normalize(self.ds.train_x[idx]), hp["scale"]))
        elif hp["init"] != "noise":
            raise ValueError(f"init must be 'real' or 'noise' for kfs, got {hp['init']!r}")
        self.labels = self.bank.code_labels()  # one label per stored code (synthetic.png rows, synthetic.pt)
        decoders = [p for n, p in self.bank.named_parameters() if n != "codes"]
        self.opt = torch.optim.Adam([{"params": [self.bank.codes], "lr": hp["lr_code"]},
                                     {"params": decoders, "lr": hp["lr_dec"]}])
        self.aug = self.augment(hp["aug"])

    def synthetic_params(self) -> dict[str, torch.Tensor]:
        return dict(self.bank.named_parameters())

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
            return self.bank().detach(), self.bank.targets()

    def pixel_images(self):
        with torch.no_grad():
            return self.ds.denormalize(self.bank.upsample(self.bank.codes)).clamp(0, 1)


__all__ = ["KFS"]
