"""HaBa: dataset distillation via factorization (Liu et al., NeurIPS 2022), docs/spec.md §4.

Stored: per-class **bases** and a shared :class:`ddkernels.nn.HallucinatorBank` of ``Hn``
hallucinators; an image is a hallucinator applied to a base, so the bases and hallucinators stand
for up to ``Hn·|B|`` images. Distillation (official ``distill_fac.py``, ``base="mtt"``): every
student step of the MTT unroll takes a chunk of bases and **one** random hallucinator for the whole
chunk; the adversarial contrastive constraint adds ``λ_club·mean((cos(e⁰, e¹) + 1)/2)`` over two
distinct hallucinations of the same bases in a feature extractor's space, and the extractor is
trained on its own batch with ``λ_cls·CE + λ_likeli·mean((1 − cos)/2) + λ_con·SupCon`` (it learns
to make two styles of a base alike; the hallucinators play against it). The parameterization
(:class:`BasesHallucinators`, with the constraint) runs under any objective; HaBa's hp ``base``
picks one: ``"mtt"`` (:class:`~.mtt.TrajectoryMatching`), ``"dm"``
(:class:`~.dm.DistributionMatching`) or ``"dc"`` (:class:`~.matching.GradientMatching`), each
student step / per-class batch drawing one random hallucinator.

Budget (``budget`` hp): ``"total"`` (default) counts bases + hallucinator parameters + what the
objective stores (MTT's ``syn_lr``) against ``ipc`` plain images per class and picks the largest bases-per-class that fits;
``"bases"`` is the official accounting (only the bases count: ``ipc`` bases per class, hallucinators
on top). ``base_downsample = s`` stores bases at ``H/s × W/s`` and upsamples them bilinearly before
the hallucinators (a deviation from HaBa, which only has full-size bases; it is what lets a
1-channel dataset hold one base per class *and* hallucinators in an IPC-1 budget, the gray analogue
of HaBa's single-channel IPC-1 script).

Base kinds (hp ``base_kind``, issue 20; deviations from HaBa, all budget-accounted like the rest):
``"images"`` (default) stores the bases themselves; ``"latent"`` stores them as KFS-style latent
codes at ``H/s × W/s`` decoded by **one** shared tiny decoder
(:class:`ddkernels.nn.LatentDecoderBank`, ``latent_hidden`` channels, residual onto the bilinear
upsampled code) before the hallucinators, the decoder trained in the hallucinators' param group;
``"multi_formation"`` stores images at ``H/s × W/s`` whose ``factor × factor`` tiles are the bases
(IDC's decode, :func:`ddkernels.multi_formation`, each tile resized bilinearly to ``H × W``), so a
stored image holds ``factor²`` bases. The stored per-class tensor is always the param ``bases``
(base images, codes or stored images); bases are class-major, stored image ``r``'s tile ``k``
being base ``r·factor² + k``.

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
from ...nn.latent import LatentDecoderBank, decoder_floats
from ...ops.multi_formation import multi_formation
from . import mtt
from .. import precision as amp
from .base import Distiller
from .dm import DistributionMatching
from .idc import mix_init
from .matching import GradientMatching
from .mtt import TrajectoryMatching
from .parts import Parameterization
from .presets import get_loops, default_expert_dir
from .registry import register

OBJECTIVES = {"mtt": TrajectoryMatching, "dm": DistributionMatching, "dc": GradientMatching}
BASES = tuple(OBJECTIVES)
BUDGETS = ("total", "bases")
BASE_KINDS = ("images", "latent", "multi_formation")
LATENT_KERNEL = 3  # the latent decoder's output conv (KFS's default)


def stored_row(hp: dict, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """``(floats, bases)`` of one stored row of the per-class tensor: a base image / a code of
    ``C × H/s × W/s``, or a stored multi-formation image of that size holding ``factor²`` bases."""
    c, h, w = image_shape
    s = hp["base_downsample"]
    return c * (h // s) * (w // s), hp["factor"] ** 2 if hp["base_kind"] == "multi_formation" else 1


def shared_floats(hp: dict, image_shape: tuple[int, int, int], hallucinator_floats: int) -> int:
    """Floats shared by all classes: the hallucinators and, for latent bases, the decoder."""
    if hp["base_kind"] != "latent":
        return hallucinator_floats
    c = image_shape[0]
    return hallucinator_floats + decoder_floats(1, c, hp["latent_hidden"], c, hp["base_downsample"], LATENT_KERNEL)


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
                    hallucinator_floats: int, other_floats: int = 0) -> int:
    """Bases per class for ``hp`` (see the module doc's "Budget" and "Base kinds"; a multiple of
    ``factor²`` for multi-formation bases); ``hallucinator_floats``: the hallucinators' (a latent
    decoder's are added here), ``other_floats``: what the objective stores (MTT's learned lr). Raises
    if none fits, or if a given ``bases_per_class`` exceeds budget ``"total"``."""
    c, h, w = image_shape
    row, per_row = stored_row(hp, image_shape)
    shared = shared_floats(hp, image_shape, hallucinator_floats)
    total = num_classes * ipc * c * h * w
    room = total - shared - other_floats
    fit = room // (num_classes * row) * per_row
    what = "stored image" if per_row > 1 else "code" if hp["base_kind"] == "latent" else "base"
    n = hp["bases_per_class"]
    if n is not None:
        if n < 1 or n % per_row:
            raise ValueError(f"bases_per_class must be a positive multiple of factor² = {per_row} "
                             f"(base_kind={hp['base_kind']!r}), got {n}")
        if hp["budget"] == "total" and n > fit:
            raise ValueError(f"bases_per_class={n} does not fit budget 'total' at IPC {ipc} ({total} floats): "
                             f"{shared + other_floats} shared floats leave room for {fit} bases per class")
        return n
    if hp["budget"] == "bases":
        return ipc * c * h * w // row * per_row
    if fit < 1:
        raise ValueError(f"budget: {shared} hallucinator{' + decoder' if shared > hallucinator_floats else ''} "
                         f"floats leave {room} of the IPC-{ipc} budget ({total} floats), not one {row}-float "
                         f"{what} per class; lower hallucinators/mid_channels"
                         f"{'/latent_hidden' if shared > hallucinator_floats else ''}, raise base_downsample, "
                         f"or set budget='bases'")
    return fit


class BasesHallucinators(Parameterization):
    """Per-class ``bases`` × a shared :class:`ddkernels.nn.HallucinatorBank`, with the adversarial
    contrastive constraint (see the module doc): its club term joins every step on the stored
    tensors, the extractor takes one step after each outer iteration. ``extra_state`` holds the
    feature extractor and its optimizer. Class-parallel: bases split by class; hallucinators and
    extractor shared, their gradients summed over ranks."""

    decodes = True
    per_class_params = ("bases",)

    def rows_per_class(self) -> int:
        return self.n // self.per_row  # stored rows (a multi-formation image holds factor² bases)

    def _shared(self) -> dict:
        """The shared modules by param prefix: the hallucinators and, for latent bases, the decoder."""
        return {"hallucinator": self.bank, **({"decoder": self.decoder} if self.decoder is not None else {})}

    def replace(self, params):
        # The gathered view gets every class's bases and its own modules with the shared values.
        self.bases = params["bases"]
        for prefix, module in self._shared().items():
            module = copy.deepcopy(module)
            with torch.no_grad():
                for k, v in _stored(module):
                    v.copy_(params[f"{prefix}.{k}"])
            setattr(self, "bank" if prefix == "hallucinator" else "decoder", module)

    def _world(self) -> int:
        return self.t.shard.world_size if self.t.shard is not None else 1

    def init(self) -> None:
        t, hp = self.t, self.t.hp
        if hp["budget"] not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {hp['budget']!r}")
        if hp["base_kind"] not in BASE_KINDS:
            raise ValueError(f"base_kind must be one of {BASE_KINDS}, got {hp['base_kind']!r}")
        c, h, w = t.ds.train_x.shape[1:]
        s = hp["base_downsample"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 1 or h % s or w % s:
            raise ValueError(f"base_downsample must be a positive int dividing the image size {h}x{w}, got {s!r}")
        kind, f = hp["base_kind"], hp["factor"]
        if kind == "multi_formation" and (isinstance(f, bool) or not isinstance(f, int) or f < 1
                                          or (h // s) % f or (w // s) % f):
            raise ValueError(f"factor must be a positive int dividing the stored image size {h // s}x{w // s} "
                             f"(image {h}x{w} / base_downsample {s}), got {f!r}")
        if kind == "latent" and (isinstance(hp["latent_hidden"], bool) or not isinstance(hp["latent_hidden"], int)
                                 or hp["latent_hidden"] < 1):
            raise ValueError(f"latent_hidden must be a positive int, got {hp['latent_hidden']!r}")
        self.image_size, self.per_row = (h, w), stored_row(hp, (c, h, w))[1]
        self.decoder = None
        k = hp["kernel_size"]
        self.bank = HallucinatorBank(hp["hallucinators"], c, hp["mid_channels"], c, k, (h - k + 1, w - k + 1),
                                     normalize=hp["normalize"], backend=t.backend, device="cpu")  # init on the host
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=t.gen, device=t.device)))
            self.bank.reset_parameters()
        self.bank.to(t.device)
        if hp["hallucinator_init"] == "identity":
            self._identity_init()
        elif hp["hallucinator_init"] != "default":
            raise ValueError(f"hallucinator_init must be 'default' or 'identity', got {hp['hallucinator_init']!r}")
        self.n = bases_per_class(hp, t.num_classes, t.ipc, (c, h, w), sum(p.numel() for p in self.bank.parameters()),
                                 t.objective.stored_floats())
        t.sampler.check(self.n, "bases_per_class")
        if kind == "latent":
            # Decoders alone (no codes of its own): the codes are ``bases``. Drawn after the
            # hallucinators, so the other kinds' streams are unchanged.
            seed = int(torch.randint(2 ** 62, (1,), generator=t.gen, device=t.device))
            self.decoder = t.seeded(seed, lambda: LatentDecoderBank(
                t.num_classes, 0, 1, c, (h, w), scale=s, hidden_channels=hp["latent_hidden"],
                kernel_size=LATENT_KERNEL, backend=t.backend, device="cpu"))
        if kind == "multi_formation" and hp["init"] == "real":
            # IDC's "mix" init: factor² real images per stored image, one (nearest-resized) per tile.
            m = self.n // self.per_row
            bases = t.ds.normalize(mix_init(t.ds.train_x, t.sampler, m, f, indices=t.init_indices(self.n)))
        else:
            # pix_init: real (default) or noise; a code starts as its (downsampled) image, as KFS's
            bases = t.initial_images(self.rows_per_class())
        if s > 1:
            bases = F.avg_pool2d(bases, s)
        self.bases = bases.clone().requires_grad_(True)
        self.aug = t.augment(hp["aug"])  # of the contrastive views
        self.extractor = t.fresh_net()
        self.extractor_opt = torch.optim.SGD(self.extractor.parameters(), lr=hp["lr_extractor"],
                                             momentum=hp["momentum_extractor"])

    def params(self):
        params = {"bases": self.bases}
        for prefix, module in self._shared().items():
            params.update({f"{prefix}.{k}": v for k, v in _stored(module)})
        return params

    def param_groups(self):
        hp = self.t.hp
        # The latent decoder is shared like the hallucinators, and learns at their rate.
        shared = [v for m in self._shared().values() for _, v in _stored(m)]
        return [{"params": [self.bases], "lr": hp["lr_img"], "momentum": hp["momentum_img"]},
                {"params": shared, "lr": hp["lr_style"], "momentum": hp["momentum_style"]}]

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
            w.copy_(0.01 * torch.randn(w.shape, generator=self.t.gen, device=self.t.device))
        bank.enc_bias.zero_()
        bank.dec_bias.zero_()
        counts = torch.bincount(torch.arange(mid, device="cpu") % c, minlength=c)  # host ints for the loop
        for h in range(bank.num_hallucinators):
            for j in range(mid):
                bank.enc_weight[h * mid + j, j % c, k // 2, k // 2] += 1.0
                bank.dec_weight[h * mid + j, j % c, k // 2, k // 2] += 1.0 / float(counts[j % c])

    # -- decoding --------------------------------------------------------------------------------
    def upsampled(self, bases: torch.Tensor) -> torch.Tensor:
        s = self.t.hp["base_downsample"]
        return F.interpolate(bases, scale_factor=s, mode="bilinear", align_corners=False) if s > 1 else bases

    def num_bases(self) -> int:
        return len(self.bases) * self.per_row

    def base_labels(self) -> torch.Tensor:
        """The label of every base (class-major, ``n`` a class)."""
        return self.t.labels.repeat_interleave(self.per_row)

    def base_images(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Bases ``idx`` (all when ``None``) at the image size, as the hallucinators take them."""
        kind = self.t.hp["base_kind"]
        if kind == "multi_formation":
            f2 = self.per_row
            rows = self.bases if idx is None else self.bases[idx // f2]
            # Decoded tile-major (row k·N + r is tile k of stored row r); bases are row-major.
            tiles = multi_formation(rows, self.t.hp["factor"], self.image_size, backend=self.t.backend)
            if idx is None:
                return tiles.view(f2, len(rows), *tiles.shape[1:]).transpose(0, 1).reshape(-1, *tiles.shape[1:])
            return tiles[(idx % f2) * len(rows) + torch.arange(len(rows), device=rows.device)]
        stored = self.bases if idx is None else self.bases[idx]
        return self.decoder.decode(stored) if kind == "latent" else self.upsampled(stored)

    def hallucinate(self, idx: torch.Tensor, style: int) -> torch.Tensor:
        """Hallucinator ``style`` applied to bases ``idx`` (HaBa's per-step sampling)."""
        b = self.base_images(idx)
        return self.bank(b, index=torch.full((len(idx),), style, dtype=torch.long, device=b.device))

    def decode_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every hallucinator on every base, base-major (row ``b·Hn + k``), and the labels."""
        return self.bank(self.base_images()), self.bank.targets(self.base_labels())

    def random_style(self) -> int:
        return int(torch.randint(self.bank.num_hallucinators, (1,), generator=self.t.gen, device=self.t.device))

    def num_slots(self):
        return self.num_bases()

    def slot_draw(self, idx):
        return self.random_style()  # HaBa's student step: one random hallucinator for the chunk

    def drawn_slots(self, idx, draw):
        """Bases ``idx`` through hallucinator ``draw``."""
        return self.hallucinate(idx, draw), self.base_labels()[idx]

    def class_batches(self, classes):
        """Per class, its bases through one random hallucinator (drawn per call, as a student step)."""
        t = self.t
        if list(classes) == t.classes:
            idx = torch.arange(self.num_bases(), device=t.device)
        else:
            idx = torch.cat([torch.arange(t._slot[c] * self.n, (t._slot[c] + 1) * self.n, device=t.device)
                             for c in classes])
        return list(self.hallucinate(idx, self.random_style()).split(self.n))

    # -- the adversarial contrastive constraint ------------------------------------------------
    def _two_styles(self, into_synthetic: bool):
        """A fresh chunk of ``batch_con`` bases under two distinct hallucinators, augmented per sample,
        through the extractor: ``(logits, e⁰, e¹, labels)``. ``into_synthetic=False`` builds the views
        without a graph into bases and hallucinators: the official code discards the gradients the
        extractor's loss sends there (the next ``zero_grad``), so this is the same and cheaper."""
        # On a shard the chunk comes from the rank's own bases (rank stream; the one generator in a
        # plain run): the contrastive batch over all ranks is world × batch_con.
        gen = self.t.rank_gen
        m = self.t.hp["batch_con"] or self.num_bases()
        idx = torch.randperm(self.num_bases(), generator=gen, device=self.t.device)[:m]
        s0, s1 = torch.randperm(self.bank.num_hallucinators, generator=gen, device=self.t.device)[:2].tolist()
        with torch.set_grad_enabled(into_synthetic):
            x = torch.cat([self.hallucinate(idx, s0), self.hallucinate(idx, s1)])
        if self.aug is not None:
            x = self.aug(x, generator=gen)
        e = self.extractor.embed(x)
        e0, e1 = e.chunk(2)
        return self.extractor.classifier(e), e0, e1, self.base_labels()[idx]

    def contrastive_on(self) -> bool:
        return self.bank.num_hallucinators > 1 and any(
            self.t.hp[k] > 0 for k in ("lambda_club", "lambda_cls", "lambda_likeli", "lambda_con"))

    def club_loss(self) -> torch.Tensor:
        """The hallucinators' side: push two hallucinations of one base apart in the extractor's space
        (gradients reach only the stored parameters: ``image_step`` differentiates those)."""
        _, e0, e1, _ = self._two_styles(True)
        # / world: the ranks' summed hallucinator gradients are those of the mean over all ranks' chunks.
        return self.t.hp["lambda_club"] * ((F.cosine_similarity(e0, e1) + 1) / 2).mean() / self._world()

    def regularizer(self):
        return self.club_loss() if self.contrastive_on() and self.t.hp["lambda_club"] > 0 else None

    def extractor_step(self) -> float:
        """The adversary's side: one SGD step on the extractor only."""
        hp = self.t.hp
        logits, e0, e1, y = self._two_styles(False)
        feats = torch.stack([F.normalize(e0, dim=1), F.normalize(e1, dim=1)], dim=1)
        loss = (hp["lambda_cls"] * F.cross_entropy(logits, torch.cat([y, y]))
                + hp["lambda_likeli"] * ((1 - F.cosine_similarity(e0, e1)) / 2).mean()
                + hp["lambda_con"] * supcon_loss(feats, y, hp["temperature"], hp["temperature"]))
        self.extractor_opt.zero_grad(set_to_none=True)
        amp.scaled(loss / self._world(), self.t.net_scaler).backward()
        self.t.sum_grads(self.extractor.parameters())  # the shared extractor: the mean over ranks' chunks
        amp.step(self.extractor_opt, self.t.net_scaler)
        return float(loss.detach())

    def after_step(self) -> None:
        # Official order: the objective's step on bases and hallucinators, then the extractor's.
        if self.contrastive_on():
            self.extractor_step()

    def extra_state(self) -> dict:
        return {"extractor": self.extractor.state_dict(), "extractor_opt": self.extractor_opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.extractor.load_state_dict(state["extractor"])
        self.extractor_opt.load_state_dict(state["extractor_opt"])

    def eval_overrides(self) -> dict:
        return {} if self.t.hp["product"] else {"choose": self.bank.num_hallucinators}

    def training_set(self):
        with torch.no_grad():
            x, y = self.decode_all()
        return x.detach(), y

    def pixel_images(self):
        """One image per stored row: the base (latent: decoded) or the whole multi-formation image."""
        with torch.no_grad():
            if self.decoder is not None:
                x = self.decoder.decode(self.bases)
            else:
                x = F.interpolate(self.bases, size=self.image_size, mode="bilinear", align_corners=False)
        return self.t.ds.denormalize(x.detach()).clamp(0, 1)


def _stored(module: torch.nn.Module):
    """A shared module's stored parameters (a decoder bank's empty ``codes`` are not stored)."""
    return [(k, v) for k, v in module.named_parameters() if v.numel()]


def paper(dataset: str, ipc: int, name: str = "paper") -> dict:
    """run_cifar10_ipc{1,10,50}_style5.sh and distill_fac.py defaults (docs/spec.md §4b); the dm/dc keys
    are DM's/DC's for ``--set base=dm|dc``."""
    outer, inner = get_loops(ipc)
    return dict(mtt.paper(dataset, ipc), iterations=15000, base="mtt", hallucinators=5, mid_channels=3,
                kernel_size=3, normalize=False, hallucinator_init="default", budget="bases", bases_per_class=None,
                base_downsample=1, base_kind="images", factor=2, latent_hidden=8, product=False, syn_steps=50 if ipc == 1 else 30, expert_epochs=2,
                max_start_epoch=2 if ipc == 1 else 20, lr_img=100.0, momentum_img=0.95, lr_style=100.0,
                momentum_style=0.95, lr_lr=1e-7 if ipc == 1 else 1e-5, momentum_lr=0.9,
                lr_teacher=0.001 if ipc == 10 else 0.01, min_syn_lr=0.001, lambda_club=0.1, lambda_con=0.1,
                lambda_cls=1.0, lambda_likeli=0.1, temperature=0.07, batch_con=None, lr_extractor=0.001,
                momentum_extractor=0.9, lr_net=0.01, outer_loop=outer, inner_loop=inner, batch_train=256,
                metric="ours", layers="weights", expert_dir=default_expert_dir(dataset, name))


def quick(dataset: str, ipc: int) -> dict:
    # CPU-sized with the quick experts: all storage counted (budget "total"), half-resolution bases,
    # near-identity hallucinators at lr_style 1 (the official 100 diverged), DC's capped loops.
    hp = paper(dataset, ipc, "quick")
    hp.update(iterations=60, hallucinator_init="identity", lr_style=1.0, budget="total", base_downsample=2,
              hallucinators=2 if ipc == 1 else 5, mid_channels=1, width=32, syn_steps=10, expert_epochs=2,
              max_start_epoch=4, lr_teacher=0.01, lr_lr=1e-5, batch_syn=20, batch_con=20, batch_real=64,
              eval_epochs=300, eval_width=32, outer_loop=min(hp["outer_loop"], 5),
              inner_loop=min(hp["inner_loop"], 10))
    return hp


@register
class HaBa(Distiller):
    """HaBa: :class:`BasesHallucinators` × the objective hp ``base`` picks (MTT by default, DM or DC)."""

    method = "haba"
    PARAMETERIZATION = BasesHallucinators
    OBJECTIVE = OBJECTIVES
    OBJECTIVE_KEY = "base"
    PRESETS = {"paper": paper, "quick": quick}
    # reverse came later (issue 16), base kinds later still (issue 20), then the reverse's forward-mode product
    HP_SINCE = {**Distiller.HP_SINCE, "unroll": "autograd", "unroll_pinned": False, "unroll_product": "backward",
                "base_kind": "images", "factor": 2, "latent_hidden": 8}
    EXTRA_STATE_DEFAULTS = {"chunks": []}  # HaBa checkpoints have always carried MTT's chunk list

    @classmethod
    def check_hp(cls, hp: dict) -> None:
        mtt.check_unroll_hp(hp)


__all__ = ["BASES", "BASE_KINDS", "BUDGETS", "BasesHallucinators", "HaBa", "OBJECTIVES", "bases_per_class", "supcon_loss"]
