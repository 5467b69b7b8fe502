"""Class-parallel distillation: two gloo processes on localhost (spawned once for the module) against
single-process runs of the same classes; partitioning, refusals, join timeout, resume checks."""
import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from ddkernels.distill import data, distributed, runs
from ddkernels.distill.distributed import Shard, class_block
from ddkernels.distill.methods import METHODS, make_distiller

pytestmark = pytest.mark.usefixtures("single_thread")

WORLD, ITERS = 2, 2
# Trainer-level cases, each compared with a single-process run (world size 1, all classes) where exact:
# DM has no shared parameter; DC's inner training uses one batch per epoch (batch_train ≥ the set) and no
# augmentation, so the sum of the ranks' gradients is the whole set's; IDC with one inner step per outer
# iteration matches against a fresh (shared-stream) network before it trains on real data.
HABA = dict(base="dm", width=8, batch_real=8, hallucinators=2)
EXACT = {
    "dm": ("dm", 1, dict(width=8, batch_real=8)),
    "dc": ("dc", 2, dict(width=8, batch_real=8, outer_loop=2, inner_loop=2, batch_train=256)),
    "idc": ("idc", 1, dict(width=8, batch_real=8, inner_loop=1, n_data=16)),
    # KFS: codes per class, decoders shared (their gradients summed over ranks, then one Adam step).
    "kfs": ("kfs", 2, dict(width=8, batch_real=8, num_decoders=2, hidden_channels=4, codes_per_class=None)),
    # HaBa on DM without the contrastive constraint: bases per class, hallucinators shared (summed gradients).
    "haba": ("haba", 2, dict(HABA, lambda_club=0.0, lambda_cls=0.0, lambda_likeli=0.0, lambda_con=0.0)),
    # The same with latent bases (codes per class, the decoder shared like the hallucinators) and with
    # multi-formation bases (stored images per class, factor² bases each).
    "haba-latent": ("haba", 2, dict(HABA, base_kind="latent", lambda_club=0.0, lambda_cls=0.0, lambda_likeli=0.0,
                                    lambda_con=0.0)),
    "haba-mf": ("haba", 2, dict(HABA, base_kind="multi_formation", lambda_club=0.0, lambda_cls=0.0,
                                lambda_likeli=0.0, lambda_con=0.0)),
}
# IDC with two inner steps: the network trained on rank-local real batches is shared; not comparable
# with one process (other real batches), but identical on both ranks.
SHARED = ("idc", 1, dict(width=8, batch_real=8, inner_loop=2, n_data=32, batch_net=16))
# HaBa on DC with the contrastive constraint: rank-local contrastive chunks, so not comparable with one
# process; hallucinators and the extractor must stay identical on both ranks.
SHARED_HABA = ("haba", 2, dict(HABA, base="dc", outer_loop=2, inner_loop=1, batch_con=4))
RUN = dict(overrides={"width": 8, "batch_real": 8}, evaluate_after=False, progress=False, dist_timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poisoned(ds, classes):
    """The dataset with every training image outside ``classes`` set to NaN: a rank that read one
    would produce NaNs."""
    x = ds.train_x.clone()
    x[~torch.isin(ds.train_y, torch.tensor(classes))] = float("nan")
    return data.Dataset(ds.name, x, ds.train_y, ds.test_x, ds.test_y, ds.num_classes, ds.mean, ds.std, ds.classes)


def _worker(rank, port, tmp, single_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    distributed.join(WORLD, rank, timeout_s=60)
    ds = data.load_dataset("digits")
    shard = Shard.of(ds.num_classes, WORLD, rank)
    mine = poisoned(ds, shard.classes)
    out = {}
    for name, (method, ipc, kw) in {**EXACT, "shared": SHARED, "shared_haba": SHARED_HABA}.items():
        t = make_distiller(method, mine, ipc, "quick", seed=0, shard=shard, **kw)
        t.run(ITERS, progress=False)
        if method == "haba":
            out[name + "_extractor"] = t.extractor.state_dict()
        out[name] = {"params": {k: v.detach() for k, v in t.gathered().synthetic_params().items()},
                     "labels": t.gathered().labels, "history": t.history,
                     "net": getattr(t, "net", None) and t.net.state_dict()}
    # Run directories through runs.distill as torchrun would (the group already exists: it reuses it).
    # The DM case above in a run directory, killed after iteration 1 and resumed.
    runs.distill("dm", "digits", 1, f"{tmp}/split", iterations=1, **RUN)
    runs.distill("dm", "digits", 1, f"{tmp}/split", iterations=ITERS, resume=True, **RUN)
    try:
        runs.distill("dm", "digits", 1, single_dir, iterations=2, resume=True, **RUN)
    except ValueError as err:
        out["mismatch"] = str(err)
    torch.save(out, f"{tmp}/rank{rank}.pt")
    distributed.leave()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    single = str(tmp / "single")
    runs.distill("dm", "digits", 1, single, iterations=1, **RUN)
    ctx = mp.start_processes(_worker, args=(free_port(), str(tmp), single), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two gloo ranks did not finish within 120 s")
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("name", list(EXACT))
def test_per_class_results_equal_one_process(two_ranks, digits, name):
    _, ranks = two_ranks
    method, ipc, kw = EXACT[name]
    one = make_distiller(method, digits, ipc, "quick", seed=0, shard=Shard.of(10), **kw)
    before = {k: v.detach().clone() for k, v in one.synthetic_params().items()}
    one.run(ITERS, progress=False)
    assert torch.equal(ranks[0][name]["labels"], one.labels)
    for key, want in one.synthetic_params().items():
        got = ranks[0][name]["params"][key]
        assert torch.equal(got, ranks[1][name]["params"][key])  # every rank gathered the same set
        assert got.shape == want.shape and torch.isfinite(got).all()  # no rank read another's classes (NaN)
        moved = (want - before[key]).abs().max()
        assert moved > 1e-4, key
        # Equal up to float rounding: the ranks run the same per-class math in smaller batches.
        assert (got - want).abs().max() <= 1e-4 * moved, key
    for rank in ranks:
        assert torch.allclose(torch.tensor([h["loss"] for h in rank[name]["history"]]),
                              torch.tensor([h["loss"] for h in one.history]), rtol=1e-5)


def test_shared_network_identical_on_every_rank(two_ranks):
    _, ranks = two_ranks
    a, b = ranks[0]["shared"]["net"], ranks[1]["shared"]["net"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.isfinite(ranks[0]["shared"]["params"]["syn"]).all()
    # HaBa on DC with the contrastive constraint: the hallucinators and the adversary's extractor.
    a, b = ranks[0]["shared_haba_extractor"], ranks[1]["shared_haba_extractor"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    pa, pb = ranks[0]["shared_haba"]["params"], ranks[1]["shared_haba"]["params"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    labels = ranks[0]["shared_haba"]["labels"]
    assert len(pa["bases"]) == len(labels) and sorted(set(labels.tolist())) == list(range(10))


def test_run_directory_resume_and_world_size_checks(two_ranks, digits):
    tmp, ranks = two_ranks
    run = tmp / "split"
    stored = torch.load(run / "synthetic.pt", weights_only=False)
    assert stored["params"]["syn"].shape == (10, 1, 8, 8) and stored["labels"].tolist() == list(range(10))
    images, labels = torch.load(run / "images_labels.pt", weights_only=True)
    assert sorted(set(labels.tolist())) == list(range(10)) and torch.isfinite(images).all()
    # Resumed with the same world size: the uninterrupted run's set and losses (the trainer-level DM case).
    assert torch.equal(stored["params"]["syn"], ranks[0]["dm"]["params"]["syn"])
    manifest = torch.load(run / "checkpoint.pt", weights_only=False)
    assert manifest["world_size"] == 2 and manifest["classes"] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert manifest["iteration"] == ITERS and torch.equal(manifest["params"]["syn"], stored["params"]["syn"])
    for r in range(WORLD):
        state = torch.load(run / f"checkpoint-rank{r}.{manifest['slot']}.pt", weights_only=False)["trainer"]
        assert state["iteration"] == ITERS and state["shard"]["classes"] == list(class_block(10, 2, r))
        assert [h["loss"] for h in state["history"]] == [h["loss"] for h in ranks[r]["dm"]["history"]]
    # World size differs: a single-process run resumed on 2 ranks, and a 2-rank run resumed on one.
    assert all("distilled on 1 rank(s), this launch has 2" in r["mismatch"] for r in ranks)
    with pytest.raises(ValueError, match=r"distilled on 2 rank\(s\), this launch has 1; resume it with torchrun"):
        runs.distill("dm", "digits", 1, str(run), iterations=4, resume=True, **RUN)


def test_partition_and_streams():
    assert [class_block(10, 3, r) for r in range(3)] == [(0, 1, 2), (3, 4, 5), (6, 7, 8, 9)]
    with pytest.raises(ValueError, match="10 classes but the launch has 11 ranks"):
        class_block(10, 11, 0)
    # A class's stream does not depend on the world size; rank streams differ from class streams.
    _, per_class_2, rank_gen = Shard.of(10, 2, 1).generators(0)
    _, per_class_1, _ = Shard.of(10).generators(0)
    assert torch.equal(torch.rand(3, generator=per_class_2[7]), torch.rand(3, generator=per_class_1[7]))
    assert not torch.equal(torch.rand(3, generator=rank_gen), torch.rand(3, generator=per_class_1[1]))


def test_launch_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "11")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="10 classes but the launch has 11 ranks"):
        runs.distill("dm", "digits", 1, str(tmp_path / "a"), **RUN)  # fails before joining
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(METHODS["dm"], "class_parallel", False)
    monkeypatch.setattr(METHODS["dm"], "not_class_parallel_because", "every class enters one trajectory")
    with pytest.raises(ValueError, match="--method dm cannot run on 2 ranks.*one trajectory"):
        runs.distill("dm", "digits", 1, str(tmp_path / "b"), **RUN)
    with pytest.raises(ValueError, match="cannot split classes over ranks"):
        make_distiller("dm", data.load_dataset("digits"), 1, shard=Shard.of(10, 2, 0))
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 is not in WORLD_SIZE=2"):
        distributed.launched_world()


def test_rank_that_never_joins_times_out(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 0 of 2: not every rank joined .* within --dist-timeout 1 s"):
        distributed.join(2, 0, timeout_s=1)  # rank 1 is never started
    assert time.monotonic() - t0 < 30 and not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="--dist-timeout must be > 0"):
        distributed.join(2, 0, timeout_s=0)


@pytest.mark.parametrize("method", ["rtp", "mtt"])
def test_methods_that_do_not_split_by_class_say_why(method):
    with pytest.raises(ValueError, match=f"{method} cannot split classes over ranks: .*(unrolled|trajectory)"):
        make_distiller(method, data.load_dataset("digits"), 1, shard=Shard.of(10, 2, 0))
