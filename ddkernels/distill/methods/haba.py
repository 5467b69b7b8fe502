"""HaBa: dataset distillation via factorization (Liu et al., NeurIPS 2022), docs/spec.md §4.

Stored: per-class **bases** and a shared :class:`ddkernels.nn.HallucinatorBank` of ``Hn``
hallucinators; an image is a hallucinator applied to a base, so the bases and hallucinators stand
for up to ``Hn·|B|`` images. Distillation (official ``distill_fac.py``, ``base="mtt"``): every
student step of the MTT unroll takes a chunk of bases and **one** random hallucinator for the whole
chunk; the adversarial contrastive constraint adds ``λ_club·mean((cos(e⁰, e¹) + 1)/2)`` over two
distinct hallucinations of the same bases in a feature extractor's space, and the extractor is
trained on its own batch with ``λ_cls·CE + λ_likeli·mean((1 − cos)/2) + λ_con·SupCon`` (it learns
to make two styles of a base alike; the hallucinators play against it). ``base="dm"`` / ``"dc"``
put the same factorization under the DM or gradient-matching loss (their code in :mod:`.dm` /
:mod:`.dc`), with the same per-step hallucinator draw.

Budget (``budget`` hp): ``"total"`` (default) counts bases + hallucinator parameters + ``syn_lr``
against ``ipc`` plain images per class and picks the largest bases-per-class that fits;
``"bases"`` is the official accounting (only the bases count: ``ipc`` bases per class, hallucinators
on top). ``base_downsample = s`` stores bases at ``H/s × W/s`` and upsamples them bilinearly before
the hallucinators (a deviation from HaBa, which only has full-size bases; it is what lets a
1-channel dataset hold one base per class *and* hallucinators in an IPC-1 budget, the gray analogue
of HaBa's single-channel IPC-1 script).

Evaluation (``training_set``): the decoded product, all ``Hn`` hallucinations of every base,
base-major. With ``product=False`` (default) evaluation follows the official code: each epoch uses
every base once through a random hallucinator (protocol ``choose=Hn``); ``product=True`` trains on
all ``Hn·|B|`` images every epoch.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ...nn.hallucinator import HallucinatorBank
from .dc import match_and_train
from .dm import dm_loss
from .mtt import MTT

BASES = ("mtt", "dm", "dc")
BUDGETS = ("total", "bases")


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07,
                base_temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al.), ``contrast_mode="all"``.

    Args:
        features: ``(N, V, D)``, ``V`` L2-normalized views of each of ``N`` samples.
        labels: ``(N,)``.

    Every one of the ``N·V`` views is an anchor; its positives are the other views with its label;
    the softmax denominator runs over every view but itself.
    """
    n, v, _ = features.shape
    f = features.transpose(0, 1).reshape(n * v, -1)
    y = labels.repeat(v)
    logits = f @ f.T / temperature
    logits = logits - logits.max(1, keepdim=True).values.detach()  # stability only; cancels below
    not_self = ~torch.eye(n * v, dtype=torch.bool, device=f.device)
    positive = (y[:, None] == y[None, :]) & not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(1, keepdim=True))
    mean_pos = (log_prob * positive).sum(1) / positive.sum(1)
    return -(temperature / base_temperature) * mean_pos.mean()


def bases_per_class(hp: dict, num_classes: int, ipc: int, image_shape: tuple[int, int, int],
                    hallucinator_floats: int) -> int:
    """Bases per class for ``hp`` (see the module doc's "Budget"); raises if none fits."""
    c, h, w = image_shape
    s = hp["base_downsample"]
    base = c * (h // s) * (w // s)
    if hp["bases_per_class"] is not None:
        return hp["bases_per_class"]
    if hp["budget"] == "bases":
        return ipc * c * h * w // base
    room = num_classes * ipc * c * h * w - hallucinator_floats - (hp["base"] == "mtt")  # the learned lr
    n = room // (num_classes * base)
    if n < 1:
        raise ValueError(f"budget: {hallucinator_floats} hallucinator floats leave {room} of the IPC-{ipc} budget "
                         f"({num_classes * ipc * c * h * w} floats), not one {base}-float base per class; lower "
                         f"hallucinators/mid_channels, raise base_downsample, or set budget='bases'")
    return n


class HaBa(MTT):
    """Bases × hallucinators under the MTT (default), DM or DC loss, with the adversarial contrastive
    constraint (see the module doc). ``extra_state`` holds the feature extractor and its optimizer."""

    method = "haba"
    decodes = True
    per_class_params = ("bases",)
    not_class_parallel_because = (
        "on MTT every class's images enter one student trajectory (each student step mixes classes); "
        "HaBa on DM or DC (--set base=dm|dc) splits its bases by class")

    @property
    def class_parallel(self) -> bool:
        # On DM/DC: bases split by class; hallucinators and extractor shared, their gradients summed.
        return self.hp["base"] != "mtt"

    def stored_labels(self) -> torch.Tensor:
        return torch.tensor(self.classes, dtype=torch.int64).repeat_interleave(self.n)

    def replace_params(self, params: dict[str, torch.Tensor]) -> None:
        # The gathered view gets every class's bases and its own bank with the shared values.
        self.bases = params["bases"]
        self.bank = copy.deepcopy(self.bank)
        with torch.no_grad():
            for k, v in self.bank.named_parameters():
                v.copy_(params[f"hallucinator.{k}"])
        if "syn_lr" in params:
            self.syn_lr = params["syn_lr"]

    def _world(self) -> int:
        return self.shard.world_size if self.shard is not None else 1

    def init_synthetic(self) -> None:
        hp = self.hp
        if hp["base"] not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {hp['base']!r}")
        if hp["budget"] not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {hp['budget']!r}")
        c, h, w = self.ds.train_x.shape[1:]
        s = hp["base_downsample"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 1 or h % s or w % s:
            raise ValueError(f"base_downsample must be a positive int dividing the image size {h}x{w}, got {s!r}")
        k = hp["kernel_size"]
        self.bank = HallucinatorBank(hp["hallucinators"], c, hp["mid_channels"], c, k, (h - k + 1, w - k + 1),
                                     normalize=hp["normalize"], backend=self.backend)
        with torch.random.fork_rng():
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=self.gen)))
            self.bank.reset_parameters()
        if hp["hallucinator_init"] == "identity":
            self._identity_init()
        elif hp["hallucinator_init"] != "default":
            raise ValueError(f"hallucinator_init must be 'default' or 'identity', got {hp['hallucinator_init']!r}")
        self.n = bases_per_class(hp, self.num_classes, self.ipc, (c, h, w),
                                 sum(p.numel() for p in self.bank.parameters()))
        self.sampler.check(self.n, "bases_per_class")
        bases = self.initial_images(self.n)  # pix_init: real (default) or noise
        if s > 1:
            bases = F.avg_pool2d(bases, s)
        self.bases = bases.clone().requires_grad_(True)
        groups = [{"params": [self.bases], "lr": hp["lr_img"], "momentum": hp["momentum_img"]},
                  {"params": list(self.bank.parameters()), "lr": hp["lr_style"], "momentum": hp["momentum_style"]}]
        if hp["base"] == "mtt":
            self.init_student()
            groups.append(self.lr_group())
        else:
            self.aug = self.augment(hp["aug"])
            self._chunks = []
        self.opt = torch.optim.SGD(groups)
        self.extractor = self.fresh_net()
        self.extractor_opt = torch.optim.SGD(self.extractor.parameters(), lr=hp["lr_extractor"],
                                             momentum=hp["momentum_extractor"])

    @torch.no_grad()
    def _identity_init(self) -> None:
        """Every hallucinator starts as (nearly) the identity: centre-tap encoder/decoder kernels
        (encoded channel ``j`` copies base channel ``j mod C``, output channel ``o`` averages the
        encoded channels that copied it), plus N(0, 0.01²) kernel noise from the run's generator so
        the hallucinators can diverge. The 1-pixel frame the valid conv drops decodes to 0 (the
        dataset mean). Not HaBa's init (PyTorch's conv default), which starts every hallucination as a
        randomly filtered copy of its base: an option for short runs (the ``quick`` preset)."""
        bank, c, mid, k = self.bank, self.bank.in_channels, self.bank.mid_channels, self.bank.kernel_size
        if mid < c:
            raise ValueError(f"hallucinator_init='identity' needs mid_channels >= image channels ({c}), got {mid}")
        for w in (bank.enc_weight, bank.dec_weight):
            w.copy_(0.01 * torch.randn(w.shape, generator=self.gen))
        bank.enc_bias.zero_()
        bank.dec_bias.zero_()
        counts = torch.bincount(torch.arange(mid) % c, minlength=c)
        for h in range(bank.num_hallucinators):
            for j in range(mid):
                bank.enc_weight[h * mid + j, j % c, k // 2, k // 2] += 1.0
                bank.dec_weight[h * mid + j, j % c, k // 2, k // 2] += 1.0 / float(counts[j % c])

    # -- decoding --------------------------------------------------------------------------------
    def upsampled(self, bases: torch.Tensor) -> torch.Tensor:
        s = self.hp["base_downsample"]
        return F.interpolate(bases, scale_factor=s, mode="bilinear", align_corners=False) if s > 1 else bases

    def hallucinate(self, idx: torch.Tensor, style: int) -> torch.Tensor:
        """Hallucinator ``style`` applied to bases ``idx`` (HaBa's per-step sampling)."""
        b = self.upsampled(self.bases[idx])
        return self.bank(b, index=torch.full((len(idx),), style, dtype=torch.long))

    def decode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every hallucinator on every base, base-major (row ``b·Hn + k``), and the labels."""
        return self.bank(self.upsampled(self.bases)), self.bank.targets(self.labels)

    def random_style(self) -> int:
        return int(torch.randint(self.bank.num_hallucinators, (1,), generator=self.gen))

    def student_batch(self):
        idx = self.next_chunk(len(self.bases))
        return self.hallucinate(idx, self.random_style()), self.labels[idx]

    def class_batches(self) -> list[torch.Tensor]:
        """Per class, its bases through one random hallucinator (drawn per call, as a student step)."""
        x = self.hallucinate(torch.arange(len(self.bases)), self.random_style())
        return list(x.split(self.n))

    # -- the adversarial contrastive constraint ------------------------------------------------
    def _two_styles(self, into_synthetic: bool):
        """A fresh chunk of ``batch_con`` bases under two distinct hallucinators, augmented per sample,
        through the extractor: ``(logits, e⁰, e¹, labels)``. ``into_synthetic=False`` builds the views
        without a graph into bases and hallucinators: the official code discards the gradients the
        extractor's loss sends there (the next ``zero_grad``), so this is the same and cheaper."""
        # On a shard the chunk comes from the rank's own bases (rank stream; the one generator in a
        # plain run): the contrastive batch over all ranks is world × batch_con.
        m = self.hp["batch_con"] or len(self.bases)
        idx = torch.randperm(len(self.bases), generator=self.rank_gen)[:m]
        s0, s1 = torch.randperm(self.bank.num_hallucinators, generator=self.rank_gen)[:2].tolist()
        with torch.set_grad_enabled(into_synthetic):
            x = torch.cat([self.hallucinate(idx, s0), self.hallucinate(idx, s1)])
        if self.aug is not None:
            x = self.aug(x, generator=self.rank_gen)
        e = self.extractor.embed(x)
        e0, e1 = e.chunk(2)
        return self.extractor.classifier(e), e0, e1, self.labels[idx]

    def contrastive_on(self) -> bool:
        return self.bank.num_hallucinators > 1 and any(
            self.hp[k] > 0 for k in ("lambda_club", "lambda_cls", "lambda_likeli", "lambda_con"))

    def club_loss(self) -> torch.Tensor:
        """The hallucinators' side: push two hallucinations of one base apart in the extractor's space
        (gradients reach only the stored parameters: :meth:`image_step` differentiates those)."""
        _, e0, e1, _ = self._two_styles(True)
        # / world: the ranks' summed hallucinator gradients are those of the mean over all ranks' chunks.
        return self.hp["lambda_club"] * ((F.cosine_similarity(e0, e1) + 1) / 2).mean() / self._world()

    def extractor_step(self) -> float:
        """The adversary's side: one SGD step on the extractor only."""
        hp = self.hp
        logits, e0, e1, y = self._two_styles(False)
        feats = torch.stack([F.normalize(e0, dim=1), F.normalize(e1, dim=1)], dim=1)
        loss = (hp["lambda_cls"] * F.cross_entropy(logits, torch.cat([y, y]))
                + hp["lambda_likeli"] * ((1 - F.cosine_similarity(e0, e1)) / 2).mean()
                + hp["lambda_con"] * supcon_loss(feats, y, hp["temperature"], hp["temperature"]))
        self.extractor_opt.zero_grad(set_to_none=True)
        (loss / self._world()).backward()
        self.sum_grads(self.extractor.parameters())  # the shared extractor: the mean over ranks' chunks
        self.extractor_opt.step()
        return float(loss.detach())

    # -- Distiller ---------------------------------------------------------------------------------
    def step(self) -> float:
        """One iteration (official order): the base loss, plus the club term inside
        :meth:`image_step`, one step on bases, hallucinators (and ``syn_lr``), then the extractor's."""
        hp = self.hp
        if hp["base"] == "mtt":
            loss = self.trajectory_loss()
            self.image_step(loss)
            with torch.no_grad():
                self.syn_lr.clamp_(min=hp["min_syn_lr"])
            value = float(loss.detach())
        elif hp["base"] == "dm":
            loss = dm_loss(self, self.class_batches())
            self.image_step(loss)
            value = float(loss.detach())
        else:
            value = match_and_train(self, self.class_batches, self._decoded_detached)
        if self.contrastive_on():
            self.extractor_step()
        return value

    def image_step(self, loss: torch.Tensor, params=None) -> None:
        # Every step on the synthetic parameters carries the club term (DC takes several per iteration).
        if self.contrastive_on() and self.hp["lambda_club"] > 0:
            loss = loss + self.club_loss()
        super().image_step(loss, params)

    def _decoded_detached(self):
        with torch.no_grad():
            return self.decode_all()

    def synthetic_params(self) -> dict[str, torch.Tensor]:
        params = {"bases": self.bases}
        params.update({f"hallucinator.{k}": v for k, v in self.bank.named_parameters()})
        if self.hp["base"] == "mtt":
            params["syn_lr"] = self.syn_lr  # DM/DC have no learned lr: evaluation uses the protocol's
        return params

    def extra_state(self) -> dict:
        return {**super().extra_state(), "extractor": self.extractor.state_dict(),
                "extractor_opt": self.extractor_opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.extractor.load_state_dict(state["extractor"])
        self.extractor_opt.load_state_dict(state["extractor_opt"])

    def eval_overrides(self) -> dict:
        out = super().eval_overrides() if self.hp["base"] == "mtt" else {}
        if not self.hp["product"]:
            out["choose"] = self.bank.num_hallucinators
        return out

    def training_set(self):
        with torch.no_grad():
            x, y = self.decode_all()
        return x.detach(), y

    def pixel_images(self):
        return self.ds.denormalize(self.upsampled(self.bases.detach())).clamp(0, 1)


__all__ = ["BASES", "BUDGETS", "HaBa", "bases_per_class", "supcon_loss"]
