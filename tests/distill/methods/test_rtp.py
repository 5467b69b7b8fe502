"""RTP: the addressable memory (decode, budget, storage) and BPTT's reverse pass against plain autograd."""
import pytest
import torch
import torch.nn.functional as F

from ddkernels.distill import runs
from ddkernels.nn.memory import addressable_decode, rows_for_budget
from ddkernels.distill.methods import make_distiller, preset
from ddkernels.distill.methods.rtp import FlatParams, bptt_meta_gradient, unroll_momentum_sgd
from ddkernels.distill.methods.unroll import PRODUCTS
from ddkernels.nn.convnet import ConvNet
from ddkernels.nn import AddressableMemory

pytestmark = pytest.mark.usefixtures("single_thread")

# digits are 8×8: bases are 4×4 at downsample 2; 4 bases leave r = (2·10·64 − 4·16) / 40 = 30 rows per class.
TINY = dict(num_bases=4, width=4, inner_steps=3, batch_syn=2, batch_real=4)


def _naive_decode(mem: AddressableMemory, rows) -> torch.Tensor:
    """The paper's decode row by row: (A[row] @ M) reshaped to the bases' size, then upsampled."""
    c, h, w = mem.image_shape
    s = mem.downsample
    out = []
    for row in rows:
        low = (mem.addressing[row] @ mem.bases).view(1, c, h // s, w // s)
        out.append(F.interpolate(low, scale_factor=s, mode="bilinear", align_corners=False)[0] if s > 1 else low[0])
    return torch.stack(out)


@pytest.mark.parametrize("shape,ds", [((2, 8, 6), 2), ((3, 12, 12), 3), ((1, 5, 7), 1)])
def test_decode_equals_naive_loop(shape, ds):
    mem = AddressableMemory(3, 4, 5, shape, ds, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert mem.bases.shape == (4, shape[0] * (shape[1] // ds) * (shape[2] // ds)) and mem.addressing.shape == (15, 4)
    rows = torch.tensor([14, 0, 7, 7, 3])
    want = _naive_decode(mem, rows.tolist())
    for upsample_first in (True, False):
        assert torch.allclose(mem.decode(rows, upsample_first=upsample_first), want, atol=1e-12)
    assert torch.allclose(mem(), _naive_decode(mem, range(15)), atol=1e-12)
    assert mem.labels(rows).tolist() == [2, 0, 1, 1, 0]


def test_budget_and_storage():
    # docs/spec.md §5a: CIFAR-10 at budget IPC 1 with K = 16, ds = 2 gives 115 rows per class and 30,688 floats.
    assert rows_for_budget(1, 10, (3, 32, 32), 16, 2) == 115
    mem = AddressableMemory.from_budget(1, 10, 16, (3, 32, 32), 2)
    assert mem.rows_per_class == 115 and mem.num_images == 1150 and mem.num_stored() == 30688
    # Fashion-MNIST quick presets: 30 bases of 14×14 leave 6 rows per class of the 7,840-float budget.
    assert rows_for_budget(1, 10, (1, 28, 28), 30, 2) == 6
    q = preset("rtp", "fashion-mnist", 10, "quick")  # IPC 10: 80 full-resolution bases, 19 rows per class
    assert rows_for_budget(10, 10, (1, 28, 28), q["num_bases"], q["downsample"]) == 19
    with pytest.raises(ValueError, match="num_bases=41 bases"):
        rows_for_budget(1, 10, (1, 28, 28), 41, 2)
    with pytest.raises(ValueError, match="downsample=3 must divide"):
        AddressableMemory(10, 4, 2, (1, 28, 28), 3)
    with pytest.raises(ValueError, match="image_shape must be"):
        AddressableMemory(10, 4, 2, (28, 28), 2)
    with pytest.raises(ValueError, match="coefficients must be"):
        addressable_decode(mem.bases, torch.zeros(3, 5), (3, 32, 32), 2)


def test_trainer_storage_and_rows(digits):
    d = make_distiller("rtp", digits, 2, "quick", seed=0, **TINY)
    r = d.memory.rows_per_class
    assert r == 30 and d.per_class_params == ("addressing",)
    s = d.storage()
    assert s["stored_floats"] == 4 * 16 + 10 * r * 4 <= s["budget_floats"] == 1280
    images, labels = d.training_set()
    assert images.shape == (300, 1, 8, 8) and torch.equal(labels, torch.arange(10).repeat_interleave(r))
    rows = d.memory.sample_rows(5, torch.Generator().manual_seed(0))
    for c, block in enumerate(rows.view(10, 5)):
        assert block.tolist() == sorted(set(block.tolist())) and all(c * r <= i < (c + 1) * r for i in block.tolist())
    assert make_distiller("rtp", digits, 2, "quick", rows_per_class=7, **TINY).storage()["stored_floats"] == 64 + 280
    with pytest.raises(ValueError, match=r"rows_per_class must be an int in \[1, 30\]"):
        make_distiller("rtp", digits, 2, "quick", rows_per_class=31, **TINY)
    with pytest.raises(ValueError, match="init must be"):
        make_distiller("rtp", digits, 2, "quick", init="pca", **TINY)
    assert preset("rtp", "cifar10", 1, "paper")["inner_steps"] == 150


def test_init_from_images_reproduces_low_rank_images(digits):
    mem = AddressableMemory(2, 6, 3, (1, 8, 8), 2, dtype=torch.float64)
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    mem.init_from_images(x)  # 6 images, 6 bases: the pooled images are reproduced exactly
    want = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(mem.decode(), want, atol=1e-10)
    assert torch.allclose(mem.bases.norm(dim=1).mean(), mem.addressing.norm(dim=1).mean(), rtol=0.5)
    with pytest.raises(ValueError, match=r"images must be \(6, 1, 8, 8\)"):
        mem.init_from_images(x[:5])


def test_unroll_is_pytorch_momentum_sgd():
    net = ConvNet(1, 3, width=4, im_size=(8, 8)).double()
    f = FlatParams(net)
    theta0 = f.flat()
    xs = torch.randn(3, 5, 1, 8, 8, dtype=torch.float64)
    ys = torch.randint(3, (3, 5))
    theta, snaps = unroll_momentum_sgd(f, theta0, lambda t: (xs[t], ys[t]), 3, lr=0.05, momentum=0.9)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for t in range(3):
        assert torch.allclose(snaps[t], f.flat(), atol=1e-12)
        opt.zero_grad()
        F.cross_entropy(net(xs[t]), ys[t]).backward()
        opt.step()
    assert torch.allclose(theta, f.flat(), atol=1e-12)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("upsample_first", [True, False])
def test_reverse_pass_equals_autograd_through_the_unrolled_loop(upsample_first, product):
    """The recompute-per-step reverse pass gives the meta-gradient that plain autograd through the
    whole unrolled momentum-SGD graph gives (float64), with either second-derivative product (the
    forward-mode one keeps the last step's graph from the forward)."""
    torch.manual_seed(0)
    net = ConvNet(1, 3, width=4, im_size=(8, 8)).double()
    f = FlatParams(net)
    mem = AddressableMemory(3, 3, 4, (1, 8, 8), 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        mem.bases.mul_(20)  # Xavier's tiny values give near-zero images; make the steps matter
    rows = torch.stack([mem.sample_rows(2, torch.Generator().manual_seed(t)) for t in range(4)])
    real_x, real_y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    lr, mu = 0.1, 0.9
    loss, g_bases, g_table = bptt_meta_gradient(f, f.flat(), mem, rows, real_x, real_y, lr=lr, momentum=mu,
                                                upsample_first=upsample_first, product=product)
    # Plain autograd: one graph through all four steps.
    theta = f.flat().requires_grad_(True)
    v = torch.zeros_like(theta)
    for t in range(4):
        step_loss = F.cross_entropy(f(theta, mem.decode(rows[t])), mem.labels(rows[t]))
        (g,) = torch.autograd.grad(step_loss, theta, create_graph=True)
        v = mu * v + g
        theta = theta - lr * v
    want_loss = F.cross_entropy(f(theta, real_x), real_y)
    want_bases, want_table = torch.autograd.grad(want_loss, (mem.bases, mem.addressing))
    assert torch.allclose(loss, want_loss.detach(), rtol=1e-12)
    assert float(want_bases.abs().max()) > 1e-4 and float(want_table.abs().max()) > 1e-4
    assert torch.allclose(g_bases, want_bases, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g_table, want_table, rtol=1e-9, atol=1e-12)
    assert mem.bases.grad is None and mem.addressing.grad is None  # the tables are only read


def test_reference_vs_fused_decode_run(digits):
    """RTP calls no ddkernels op with backends; ``backend`` picks the decode order. A few outer
    iterations from one seed agree (the two orders differ only by float32 rounding)."""
    runs_ = {}
    for backend in ("reference", "auto"):
        d = make_distiller("rtp", digits, 2, "quick", backend=backend, seed=0, init="real", **TINY)
        d.run(3, progress=False)
        runs_[backend] = d
    ref, fused = runs_["reference"], runs_["auto"]
    assert torch.allclose(torch.tensor([h["loss"] for h in fused.history]),
                          torch.tensor([h["loss"] for h in ref.history]), rtol=1e-4)
    start = make_distiller("rtp", digits, 2, "quick", seed=0, init="real", **TINY)
    for name, p in ref.synthetic_params().items():
        moved = (p - start.synthetic_params()[name]).abs().max()
        assert moved > 1e-4
        assert (fused.synthetic_params()[name] - p).abs().max() <= 1e-3 * moved


def _full_and_split(tmp_path, overrides):
    """``synthetic.pt`` of 3 iterations straight and of 2, then resumed to 3."""
    def go(out, iterations, resume=False):
        return runs.distill("rtp", "digits", 2, str(tmp_path / out), iterations=iterations, resume=resume,
                            overrides=overrides, evaluate_after=False, progress=False)
    go("full", 3)
    go("split", 2)
    go("split", 3, resume=True)
    return [torch.load(tmp_path / n / "synthetic.pt", weights_only=False) for n in ("full", "split")]


def test_resume_reaches_the_uninterrupted_result(tmp_path):
    full, split = _full_and_split(tmp_path, TINY)
    assert set(full["params"]) == {"bases", "addressing"}
    for k in full["params"]:
        assert torch.equal(full["params"][k], split["params"][k])
    assert torch.equal(full["images"], split["images"]) and full["images"].shape == (300, 1, 8, 8)
    assert full["storage"]["stored_floats"] == 64 + 300 * 4


# -- learned labels (issue 20): label_mode "soft" and "embedding" ------------------------------------------

def _naive_coefficients(mem: AddressableMemory, rows) -> torch.Tensor:
    """Row by row: the table's row (one-hot and soft), or code(class) · matrix(i) summed over d_y by hand."""
    out = []
    for row in rows:
        if mem.label_mode != "embedding":
            out.append(mem.addressing[row])
            continue
        c, i = divmod(row, mem.rows_per_class)
        out.append(sum(mem.label_codes[c, j] * mem.addressing[i, j] for j in range(mem.label_dim)))
    return torch.stack(out)


@pytest.mark.parametrize("mode,dim", [("soft", None), ("embedding", 2), ("embedding", None)])
def test_label_modes_decode_and_targets_equal_naive_loops(mode, dim):
    mem = AddressableMemory(3, 4, 5, (2, 8, 6), 2, label_mode=mode, label_dim=dim,
                            generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():  # off the init, so every entry of the label tensors matters
        for p in mem.tables().values():
            p.add_(torch.randn(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(p.numel())))
    rows = torch.tensor([14, 0, 7, 7, 3])
    coeffs = _naive_coefficients(mem, rows.tolist())
    c, h, w = mem.image_shape
    low = (coeffs @ mem.bases).view(-1, c, h // 2, w // 2)
    want = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
    for upsample_first in (True, False):
        assert torch.allclose(mem.decode(rows, upsample_first=upsample_first), want, atol=1e-12)
    assert torch.allclose(mem.coefficients(), _naive_coefficients(mem, range(15)), atol=1e-12)
    assert mem.labels(rows).tolist() == [2, 0, 1, 1, 0]
    if mode == "soft":
        naive = torch.stack([torch.exp(mem.label_logits[r]) / torch.exp(mem.label_logits[r]).sum() for r in rows])
        assert torch.allclose(mem.targets(rows), naive, atol=1e-12)
    else:
        assert mem.label_dim == (dim or 3) and mem.addressing.shape == (5, mem.label_dim, 4)
        assert torch.equal(mem.targets(rows), mem.labels(rows))


def test_soft_labels_start_near_one_hot_and_embedding_with_identity_codes_is_onehot():
    soft = AddressableMemory(4, 2, 3, (1, 4, 4), label_mode="soft")
    q = soft.targets()
    assert q.shape == (12, 4) and torch.allclose(q.sum(1), torch.ones(12))
    assert torch.equal(q.argmax(1), soft.labels()) and torch.allclose(q.max(1).values, torch.full((12,), 0.9))
    # d_y = C and y_c = e_c: the paper's one-hot query, so the decode is the one-hot memory's
    emb = AddressableMemory(4, 2, 3, (1, 4, 4), label_mode="embedding", dtype=torch.float64)
    one = AddressableMemory(4, 2, 3, (1, 4, 4), dtype=torch.float64)
    with torch.no_grad():
        emb.label_codes.copy_(torch.eye(4))
        emb.bases.copy_(one.bases)
        one.addressing.copy_(emb.addressing.transpose(0, 1).reshape(12, 2))  # row c·r+i = A_i[c]
    assert torch.allclose(emb.decode(), one.decode(), atol=1e-14)


def test_embedding_init_from_images_is_the_best_rank_dy_fit():
    x = torch.randn(3 * 4, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    one = AddressableMemory(3, 5, 4, (1, 8, 8), 2, dtype=torch.float64).init_from_images(x)
    full = AddressableMemory(3, 5, 4, (1, 8, 8), 2, label_mode="embedding", dtype=torch.float64).init_from_images(x)
    assert torch.allclose(full.decode(), one.decode(), atol=1e-10)  # d_y = C: the one-hot memory
    assert torch.equal(full.label_codes, torch.eye(3, dtype=torch.float64))
    low = AddressableMemory(3, 5, 4, (1, 8, 8), 2, label_mode="embedding", label_dim=2,
                            dtype=torch.float64).init_from_images(x)
    table = one.addressing.detach().view(3, 4 * 5)
    u, s, vh = torch.linalg.svd(table, full_matrices=False)
    best = (u[:, :2] * s[:2]) @ vh[:2]  # Eckart–Young: the best rank-2 approximation over classes
    assert torch.allclose(low.coefficients().detach().view(3, 20), best, atol=1e-10)
    assert torch.allclose(low.label_codes.norm(), low.addressing.norm(), rtol=1e-9)  # balanced factors


def test_label_modes_storage_and_budget(digits):
    # Fashion-MNIST quick, IPC 1 (30 bases of 14×14 = 5,880 of 7,840 floats): one-hot 6 rows per class;
    # soft rows cost 30 + 10 floats: 4; embedding d_y = 5: 50 code floats, 150 a row: 12.
    shape = (1, 28, 28)
    assert rows_for_budget(1, 10, shape, 30, 2, label_mode="soft") == (7840 - 5880) // 400 == 4
    assert rows_for_budget(1, 10, shape, 30, 2, label_mode="embedding", label_dim=5) == (7840 - 5880 - 50) // 150 == 12
    assert rows_for_budget(10, 10, shape, 80, 1, label_mode="soft") == (78400 - 62720) // 900 == 17
    assert rows_for_budget(10, 10, shape, 80, 1, label_mode="embedding", label_dim=5) == (78400 - 62720 - 50) // 400
    with pytest.raises(ValueError, match="label_dim=196 codes"):
        rows_for_budget(1, 10, shape, 30, 2, label_mode="embedding", label_dim=196)
    mem = AddressableMemory.from_budget(1, 10, 30, shape, 2, label_mode="soft")
    assert mem.rows_per_class == 4 and mem.num_stored() == 5880 + 40 * 30 + 40 * 10 <= 7840
    # The trainer: every stored tensor counted, under the budget; the decoded set has C·r images.
    for mode, dim, r, stored in (("soft", None, 8, 64 + 80 * 4 + 80 * 10),
                                 ("embedding", 3, 98, 64 + 98 * 3 * 4 + 10 * 3),
                                 ("embedding", None, 27, 64 + 27 * 10 * 4 + 100)):
        d = make_distiller("rtp", digits, 2, "quick", seed=0, label_mode=mode, label_dim=dim, **TINY)
        assert d.memory.rows_per_class == r, mode
        s = d.storage()
        assert s["stored_floats"] == stored <= s["budget_floats"] == 1280, mode
        assert set(d.synthetic_params()) == set(d.memory.tables()) and len(d.training_set()[0]) == 10 * r
        with pytest.raises(ValueError, match=rf"rows_per_class must be an int in \[1, {r}\]"):
            make_distiller("rtp", digits, 2, "quick", rows_per_class=r + 1, label_mode=mode, label_dim=dim, **TINY)


def test_bad_label_mode_or_dim_is_named_before_any_work(digits, tmp_path, monkeypatch):
    import ddkernels.distill.data as data_mod

    monkeypatch.setattr(data_mod, "load_dataset", lambda *a, **k: pytest.fail("data loaded before the check"))
    for bad, match in ((dict(label_mode="hard"), "label_mode must be one of"),
                       (dict(label_mode="embedding", label_dim=0), "label_dim must be"),
                       (dict(label_dim=-2), "label_dim must be")):
        with pytest.raises(ValueError, match=match):
            runs.distill("rtp", "fashion-mnist", 1, str(tmp_path / "x"), overrides=bad, progress=False)
        with pytest.raises(ValueError, match=match):
            make_distiller("rtp", digits, 2, "quick", **bad, **TINY)
    for bad, match in ((dict(label_mode="soft", lr_label=0), "lr_label must be a positive number"),
                       (dict(lr_label=1.0), "lr_label is the learned labels' step size")):
        with pytest.raises(ValueError, match=match):
            runs.distill("rtp", "fashion-mnist", 1, str(tmp_path / "x"), overrides=bad, progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="label_mode must be one of"):
        AddressableMemory(3, 2, 2, (1, 4, 4), label_mode="one-hot")
    with pytest.raises(ValueError, match="label_dim must be"):
        AddressableMemory(3, 2, 2, (1, 4, 4), label_mode="embedding", label_dim=0)
    with pytest.raises(ValueError, match="label_mode='soft' learns the labels through BPTT"):
        from ddkernels.distill.methods import AddressableMemories, Distiller, DistributionMatching
        from ddkernels.distill.methods.presets import DSA_STRATEGY
        Distiller(digits, 2, dict(preset("rtp", "digits", 2, "quick"), aug=DSA_STRATEGY, label_mode="soft", **TINY),
                  parameterization=AddressableMemories, objective=DistributionMatching)


def _autograd_meta_gradient(f, mem, rows, real_x, real_y, lr, mu):
    """Plain autograd through the whole unrolled momentum-SGD graph, every stored tensor a leaf."""
    theta = f.flat().requires_grad_(True)
    v = torch.zeros_like(theta)
    for t in range(len(rows)):
        step_loss = F.cross_entropy(f(theta, mem.decode(rows[t])), mem.targets(rows[t]))
        (g,) = torch.autograd.grad(step_loss, theta, create_graph=True)
        v = mu * v + g
        theta = theta - lr * v
    loss = F.cross_entropy(f(theta, real_x), real_y)
    return loss, torch.autograd.grad(loss, list(mem.tables().values()))


@pytest.mark.parametrize("mode,dim", [("soft", None), ("embedding", 2)])
@pytest.mark.parametrize("upsample_first", [True, False])
def test_learned_labels_get_the_exact_meta_gradient(mode, dim, upsample_first):
    """float64: the reverse pass's gradient of every stored tensor (label logits / codes included)
    equals plain autograd's through the unrolled loop."""
    torch.manual_seed(0)
    f = FlatParams(ConvNet(1, 3, width=4, im_size=(8, 8)).double())
    mem = AddressableMemory(3, 3, 4, (1, 8, 8), 2, label_mode=mode, label_dim=dim,
                            generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        mem.bases.mul_(20)
        if mode == "soft":  # distinct distributions per row
            mem.label_logits.add_(torch.randn(mem.label_logits.shape, dtype=torch.float64))
    rows = torch.stack([mem.sample_rows(2, torch.Generator().manual_seed(t)) for t in range(4)])
    real_x, real_y = torch.randn(6, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    loss, *grads = bptt_meta_gradient(f, f.flat(), mem, rows, real_x, real_y, lr=0.1, momentum=0.9,
                                      upsample_first=upsample_first)
    want_loss, want = _autograd_meta_gradient(f, mem, rows, real_x, real_y, 0.1, 0.9)
    assert torch.allclose(loss, want_loss.detach(), rtol=1e-12) and len(grads) == len(want) == 3
    for name, g, w in zip(mem.tables(), grads, want):
        assert float(w.abs().max()) > 1e-6, name
        assert float((g - w).abs().max() / w.abs().max()) <= 1e-10, name
    assert all(p.grad is None for p in mem.tables().values())


def test_label_tables_gradcheck():
    """The decode's and the targets' derivatives in the label tensors (torch.autograd.gradcheck)."""
    emb = AddressableMemory(3, 2, 2, (1, 4, 4), 2, label_mode="embedding", label_dim=2, dtype=torch.float64)
    rows = torch.tensor([5, 0, 3])
    assert torch.autograd.gradcheck(lambda codes, a: emb.coefficients(rows, {"label_codes": codes, "addressing": a}),
                                    (emb.label_codes.detach().clone().requires_grad_(True),
                                     emb.addressing.detach().clone().requires_grad_(True)))
    soft = AddressableMemory(3, 2, 2, (1, 4, 4), 2, label_mode="soft", dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: soft.targets(rows, {"label_logits": z}),
                                    (soft.label_logits.detach().clone().requires_grad_(True),))


@pytest.mark.parametrize("mode", ["soft", "embedding"])
def test_label_mode_runs_resume_and_save_their_labels(digits, tmp_path, mode):
    over = dict(TINY, label_mode=mode, label_dim=3 if mode == "embedding" else None)
    full, split = _full_and_split(tmp_path, over)
    extra = "label_logits" if mode == "soft" else "label_codes"
    assert set(full["params"]) == {"bases", "addressing", extra}
    start = make_distiller("rtp", digits, 2, "quick", seed=0, **over).synthetic_params()
    for k in full["params"]:
        assert torch.equal(full["params"][k], split["params"][k]), k
        assert (full["params"][k] - start[k]).abs().max() > 0, k  # the meta-gradient reaches every tensor
    a = full["params"]["addressing"]
    r = a.shape[0] if mode == "embedding" else a.shape[0] // 10
    mem = AddressableMemory(10, 4, r, (1, 8, 8), 2, label_mode=mode, label_dim=over["label_dim"])
    mem.load_state_dict(full["params"])
    images, labels = torch.load(tmp_path / "full" / "images_labels.pt", weights_only=True)
    assert torch.allclose(images, mem.decode().detach(), atol=1e-6)
    assert torch.equal(full["labels"], mem.labels())  # the class of each stored row
    if mode == "soft":
        assert full["label_kind"] == "soft" and labels.shape == (len(images), 10)
        assert torch.allclose(labels, mem.targets().detach()) and torch.equal(full["image_labels"], labels)
    else:
        assert full["label_kind"] == "hard" and torch.equal(labels, mem.labels())
    assert full["storage"]["stored_floats"] == mem.num_stored()


def test_soft_label_run_is_evaluated_and_recorded_as_soft(tmp_path):
    """A soft-label run trains its evaluation networks on the stored distributions and records
    ``labels: soft`` beside the accuracy (the random-real baseline: ``hard``); so does ``ddkernels
    evaluate``; the DD-Ranking export carries the distributions."""
    from ddkernels.distill.evaluate import SOFT_LOSS
    from ddkernels.distill.export import export_run

    out = str(tmp_path / "soft")
    m = runs.distill("rtp", "digits", 2, out, iterations=1, overrides=dict(TINY, label_mode="soft", eval_epochs=2),
                     eval_nets=1, progress=False)
    assert m["labels"] == "soft" and m["eval_loss"] == SOFT_LOSS and m["train_labels"] == "soft"
    assert m["random_real"]["labels"] == "hard"
    record = runs.evaluate_dir(out, eval_nets=1, baseline=False, progress=False, device="cpu")
    assert record["labels"] == "soft" and record["accuracy"]["n"] == 1
    ex = export_run(out, "ddranking")
    soft = torch.load(tmp_path / "soft" / "export" / "ddranking" / "soft_labels.pt", weights_only=True)
    hard = torch.load(tmp_path / "soft" / "export" / "ddranking" / "labels.pt", weights_only=True)
    assert soft.shape == (80, 10) and torch.equal(soft.argmax(1), hard) and ex["per_class"] == [8] * 10


def test_lr_label_gives_the_labels_their_own_step(digits):
    """``lr_label``: the label tensors in a group of their own; ``None`` keeps one group at ``lr_syn``."""
    for mode, name in (("soft", "label_logits"), ("embedding", "label_codes")):
        one = make_distiller("rtp", digits, 2, "quick", seed=0, label_mode=mode, **TINY)
        assert len(one.opt.param_groups) == 1 and len(one.opt.param_groups[0]["params"]) == 3
        two = make_distiller("rtp", digits, 2, "quick", seed=0, label_mode=mode, lr_label=50.0, **TINY)
        groups = two.opt.param_groups
        assert [g["lr"] for g in groups] == [two.hp["lr_syn"], 50.0]
        assert groups[1]["params"] == [getattr(two.memory, name)] and len(groups[0]["params"]) == 2
        start = {k: v.detach().clone() for k, v in two.synthetic_params().items()}
        two.run(1, progress=False)
        one.run(1, progress=False)
        for k in ("bases", "addressing"):  # the same first step for the other tensors
            assert torch.equal(two.synthetic_params()[k], one.synthetic_params()[k]), k
        moved = [(p.detach() - start[name]).abs().max() for p in (two.synthetic_params()[name],
                                                                  one.synthetic_params()[name])]
        assert moved[0] > 0 and torch.allclose(moved[0], moved[1] * 50.0 / two.hp["lr_syn"], rtol=1e-3), mode


def test_embedding_with_dy_c_starts_as_the_onehot_memory(digits):
    """d_y = C: the codes start as the one-hot queries without a random draw and the matrices hold the
    one-hot table's rows, so the memory decodes to the one-hot memory's images, and a trainer with as
    many rows draws the same real images (init='real') and leaves its random stream where one-hot does."""
    emb = AddressableMemory(3, 2, 4, (1, 8, 8), 2, label_mode="embedding", generator=torch.Generator().manual_seed(5))
    one = AddressableMemory(3, 2, 4, (1, 8, 8), 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(emb.label_codes, torch.eye(3)) and torch.equal(emb.decode(), one.decode())
    for init in ("xavier", "real"):
        e = make_distiller("rtp", digits, 2, "quick", seed=0, init=init, label_mode="embedding", **TINY)
        o = make_distiller("rtp", digits, 2, "quick", seed=0, init=init, rows_per_class=27, **TINY)
        assert e.memory.rows_per_class == 27  # the codes' 100 floats cost 3 rows of the 30
        assert torch.allclose(e.training_set()[0], o.training_set()[0], atol=1e-5), init
        assert torch.equal(e.gen.get_state(), o.gen.get_state()), init
