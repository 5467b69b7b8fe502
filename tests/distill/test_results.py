"""Self-describing results (issue 17): evaluation records, --protocol, DD-Ranking's scores, exports,
the report, labelled PNG grids and the bitmap font (digits, tiny networks)."""
import json
import math
import os

import numpy as np
import pytest
import torch

from ddkernels.distill import cli, data, evaluate as evaluate_mod, runs, scores
from ddkernels.distill.data.imageio import labelled_grid, read_png, write_png
from ddkernels.distill.data.raster import Canvas, text_mask, text_width
from ddkernels.distill.export import export_run
from ddkernels.distill.methods import preset
from ddkernels.distill.report import report

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"width": 8, "batch_real": 8, "eval_epochs": 2}


@pytest.fixture
def dm_run(tmp_path):
    out = str(tmp_path / "dm")
    runs.distill("dm", "digits", 2, out, iterations=1, overrides=TINY, eval_nets=2, progress=False)
    return out


def test_font_glyphs_and_text_size():
    a = text_mask("A")
    assert a.shape == (7, 5) and a[0].tolist() == [False, True, True, True, False] and a[3].all()
    assert np.array_equal(text_mask("a"), a)  # lower case is drawn as capitals
    assert np.array_equal(text_mask("\u00e9"), text_mask("?"))  # no glyph: a question mark
    m = text_mask("AB 7", scale=2)
    assert m.shape == (14, text_width("AB 7", 2)) == (14, 46) and not m[:, 10:12].any()  # one blank column
    c = Canvas(20, 30)
    c.text(2, 2, "I", colour=(1, 0, 0))
    assert (c.image[2, 3:6] == (1, 0, 0)).all() and (c.image[0] == 1).all()  # the I's top bar, nothing above it
    c.band([5, 25], [15, 15], [10, 10], (0, 0, 0), alpha=0.5)
    assert np.allclose(c.image[12, 5:26], 0.5) and (c.image[9, 5:26] == 1).all()  # shaded once, between bounds


def test_labelled_grid_is_readable():
    images = torch.rand(6, 1, 8, 8)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    g = labelled_grid(images, labels, 3, ("cat", "dog"))  # the third class has no name: its index
    factor = 8  # 8-pixel images enlarged to the 64 px minimum
    assert g.dim() == 2 and g.shape[0] == 3 * (8 * factor + 2) + 2
    margin = g.shape[1] - (2 * (8 * factor + 2) + 2)
    # nearest neighbour: each source pixel is a factor × factor block
    first = g[2:2 + 8 * factor, margin + 2:margin + 2 + 8 * factor]
    assert torch.allclose(first, images[0, 0].repeat_interleave(factor, 0).repeat_interleave(factor, 1))
    # each row carries its label, drawn black in the margin, vertically within its row
    for k, name in enumerate(["CAT", "DOG", "2"]):
        row = g[2 + k * (8 * factor + 2):2 + k * (8 * factor + 2) + 8 * factor, :margin]
        ys, xs = torch.nonzero(row == 0, as_tuple=True)
        mask = torch.from_numpy(text_mask(name, 2))
        my, mx = torch.nonzero(mask, as_tuple=True)
        drawn = row[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == 0
        assert torch.equal(drawn, mask[my.min():my.max() + 1, mx.min():mx.max() + 1]), name
    rgb = labelled_grid(torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), 2, ("a", "b"))
    assert rgb.shape[0] == 3 and rgb.shape[1] == 2 * (64 + 2) + 2


def test_run_outputs_name_their_classes(tmp_path, dm_run):
    stored = torch.load(os.path.join(dm_run, "synthetic.pt"), weights_only=False)
    metrics = json.loads(open(os.path.join(dm_run, "metrics.json")).read())
    assert stored["classes"] == metrics["classes"] == [str(k) for k in range(10)]  # digits has no names
    assert metrics["device"]["threads"] == 1 and metrics["protocol"] == "quick"
    png = read_png(os.path.join(dm_run, "synthetic.png"))
    assert png.shape[0] == 10 * (64 + 2) + 2 and png.shape[1] > 2 * (64 + 2)  # 8×8 digits shown at 64 px
    # an image folder's class names (its sub-folders) travel into synthetic.pt and metrics.json
    root = tmp_path / "pets"
    for split in ("train", "test"):
        for cname in ("cat", "dog"):
            (root / split / cname).mkdir(parents=True)
            for i in range(3):
                write_png(str(root / split / cname / f"{i}.png"), torch.rand(1, 8, 8))
    out = str(tmp_path / "folder")
    runs.distill("dm", "folder", 1, out, data_dir=str(root), iterations=1, overrides=TINY, evaluate_after=False,
                 progress=False)
    assert torch.load(os.path.join(out, "synthetic.pt"), weights_only=False)["classes"] == ["cat", "dog"]
    assert json.loads(open(os.path.join(out, "metrics.json")).read())["classes"] == ["cat", "dog"]


def test_evaluate_writes_numbered_records_and_keeps_metrics(dm_run, capsys):
    before = open(os.path.join(dm_run, "metrics.json")).read()
    distilled = json.loads(before)
    first = runs.evaluate_dir(dm_run, eval_nets=2, progress=False, device="cpu")
    # the default protocol reproduces the distillation's evaluation exactly
    assert first["accuracy"]["accuracies"] == distilled["accuracy"]["accuracies"]
    assert first["random_real"]["accuracies"] == distilled["random_real"]["accuracies"]
    assert first["record"] == os.path.join("evaluations", "001.json") and first["protocol"] == "quick"
    assert first["eval_device"]["threads"] == 1 and first["eval_device"]["device"] == "cpu" and first["classes"][3] == "3"
    assert cli.main(["evaluate", dm_run, "--eval-nets", "1", "--no-baseline", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "random real" not in out and "distillation" not in out  # nothing stale, nothing not measured here
    assert os.path.join(dm_run, "evaluations", "002.json") in out
    second = json.loads(open(os.path.join(dm_run, "evaluations", "002.json")).read())
    assert "random_real" not in second and second["accuracy"]["n"] == 1
    assert open(os.path.join(dm_run, "metrics.json")).read() == before
    third = runs.evaluate_dir(dm_run, eval_nets=1, baseline=False, progress=False, epochs=1)
    assert third["eval_protocol"]["epochs"] == 1 and third["record"] == os.path.join("evaluations", "003.json")
    with pytest.raises(ValueError, match="--epochs must be"):
        runs.evaluate_dir(dm_run, epochs=0)
    assert [r["record"] for r in runs.evaluation_records(dm_run)] == [os.path.join("evaluations", f"00{i}.json")
                                                                       for i in (1, 2, 3)]


def test_protocol_paper_is_the_methods_own(dm_run, monkeypatch):
    hp = preset("idc", "fashion-mnist", 10, "quick")
    paper_hp, name = runs.protocol_hp("idc", "fashion-mnist", 10, hp, "quick", "paper")
    proto = runs.eval_protocol(paper_hp, name)
    assert (name, proto.width, proto.epochs, proto.test_limit, proto.n_nets) == ("paper", 128, 1000, None, 3)
    assert paper_hp["width"] == hp["width"]  # only the evaluation keys change
    assert runs.protocol_hp("idc", "fashion-mnist", 10, hp, "quick", None) == (hp, "quick")
    assert runs.protocol_hp("idc", "fashion-mnist", 10, hp, "quick", "quick") == (hp, "quick")
    for method, n in (("dm", 20), ("rtp", 10)):
        h, p = runs.protocol_hp(method, "fashion-mnist", 1, preset(method, "fashion-mnist", 1, "quick"), "quick",
                                "paper")
        assert runs.eval_protocol(h, p).n_nets == n and runs.eval_protocol(h, p).width == 128
    # wired through evaluate_dir: the networks are trained with the paper protocol
    seen = []

    def fake(images, labels, ds, protocol, **kw):
        seen.append(protocol)
        return {"mean": 50.0, "std": 0.0, "n": protocol.n_nets, "accuracies": [50.0] * protocol.n_nets,
                "protocol": {"epochs": protocol.epochs}}
    monkeypatch.setattr(runs, "evaluate", fake)
    rec = runs.evaluate_dir(dm_run, protocol="paper", progress=False)
    assert rec["protocol"] == "paper" and len(seen) == 2
    assert all((p.width, p.epochs, p.test_limit, p.n_nets) == (128, 1000, None, 20) for p in seen)


def test_bad_protocol_fails_before_any_work(tmp_path, dm_run, capsys, monkeypatch):
    def no_data(*a, **kw):
        raise AssertionError("data loaded before the options were checked")
    monkeypatch.setattr(data, "load_dataset", no_data)
    assert cli.main(["evaluate", dm_run, "--protocol", "slow"]) == 2
    assert "--protocol must be one of paper, quick (got 'slow')" in capsys.readouterr().err
    assert cli.main(["evaluate", dm_run, "--protocol", "paper", "--preset", "quick"]) == 2
    assert "give one" in capsys.readouterr().err
    assert cli.main(["evaluate", dm_run, "--scores", "--no-baseline"]) == 2
    assert "drop --no-baseline" in capsys.readouterr().err
    assert cli.main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--eval-protocol", "x",
                     "--out", str(tmp_path / "x")]) == 2
    assert "--eval-protocol must be one of paper, quick" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_distill_eval_protocol_is_recorded_and_resumed(tmp_path, monkeypatch):
    seen = []
    real = runs.evaluate

    def spy(images, labels, ds, protocol, **kw):
        seen.append(protocol)
        return real(images, labels, ds, protocol, **kw)
    monkeypatch.setattr(runs, "evaluate", spy)
    out = str(tmp_path / "run")
    # quick, named: the run's own protocol (its --set eval_epochs stays)
    m = runs.distill("dm", "digits", 1, out, iterations=1, overrides=TINY, eval_nets=1, baseline=False,
                     progress=False, eval_protocol="quick")
    assert m["protocol"] == "quick" and seen[-1].epochs == 2 and seen[-1].width == 64
    assert json.loads(open(os.path.join(out, "config.json")).read())["eval_protocol"] == "quick"
    assert runs.saved_options(out)["eval_protocol"] == "quick"


def test_scores_follow_dd_ranking():
    # alpha = 0.5 (IOR - HLR) / 100; LRS = (e^alpha - e^-1) / (e - e^-1)
    s = scores.label_robust_score([80.0, 82.0], [70.0, 70.0], 90.0)
    assert s["hlr"]["values"] == [10.0, 8.0] and s["ior"]["values"] == [10.0, 12.0]
    e = math.e
    assert s["lrs"]["values"] == pytest.approx([(1 - 1 / e) / (e - 1 / e), (math.exp(0.02) - 1 / e) / (e - 1 / e)])
    assert scores.label_robust_score([100.0], [0.0], 100.0)["lrs"]["mean"] == pytest.approx((math.exp(0.5) - 1 / e)
                                                                                            / (e - 1 / e))
    assert scores.label_robust_score([100.0], [0.0], 100.0, w=1.0)["lrs"]["mean"] == pytest.approx(1.0)
    assert scores.label_robust_score([0.0], [100.0], 100.0, w=1.0)["lrs"]["mean"] == pytest.approx(0.0)
    a = scores.augmentation_robust_score([80.0], [70.0], [60.0], [50.0])
    assert a["ars"]["mean"] == pytest.approx((math.exp(0.1) - 1 / e) / (e - 1 / e))
    assert a["with_aug"]["mean"] == a["without_aug"]["mean"] == 10.0
    with pytest.raises(ValueError, match="w must be in"):
        scores.label_robust_score([1.0], [1.0], 1.0, w=2)
    with pytest.raises(ValueError, match="paired"):
        scores.label_robust_score([1.0], [1.0, 2.0], 1.0)
    off = scores.without_augmentation(evaluate_mod.get_protocol("idc", "quick"))
    assert (off.aug, off.dc_aug, off.cutmix_p) == ("", "", 0.0)


def test_scores_in_a_record_and_the_cached_full_data_accuracy(dm_run, tmp_path):
    cache = str(tmp_path / "cache")
    rec = runs.evaluate_dir(dm_run, eval_nets=2, progress=False, scores=True, cache_dir=cache, full_epochs=1)
    s = rec["scores"]
    assert not s["full_data"]["cached"] and s["full_data"]["train_images"] == len(data.load_dataset("digits").train_y)
    assert s["lrs"]["full_data"] == s["full_data"]["mean"]
    assert s["lrs"]["ior"]["values"] == [a - b for a, b in zip(rec["accuracy"]["accuracies"],
                                                                rec["random_real"]["accuracies"])]
    assert s["ars"]["without_aug"]["values"] == [a - b for a, b in zip(s["synthetic_no_aug"]["accuracies"],
                                                                        s["random_real_no_aug"]["accuracies"])]
    assert all(0.0 <= v <= 1.0 for v in s["lrs"]["lrs"]["values"] + s["ars"]["ars"]["values"])
    again = runs.evaluate_dir(dm_run, eval_nets=2, progress=False, scores=True, cache_dir=cache, full_epochs=1)
    assert again["scores"]["full_data"]["cached"] and again["scores"]["full_data"]["mean"] == s["full_data"]["mean"]
    assert again["scores"]["lrs"] == s["lrs"]  # everything else is seeded: the same scores
    stored = json.loads(open(os.path.join(cache, scores.CACHE_FILE)).read())
    assert list(stored) == [s["full_data"]["key"]] and "digits|ConvNet|dsa|" in s["full_data"]["key"]


def test_exports_load_as_the_tools_load_them(dm_run, tmp_path):
    images, labels = torch.load(os.path.join(dm_run, "images_labels.pt"), weights_only=True)
    order = torch.sort(labels, stable=True).indices
    m = export_run(dm_run, "dcbench")
    # DC-BENCH's DCDataLoader: torch.load(path)['data'][-1]
    path = os.path.join(dm_run, "export", "dcbench", "DM", "digits", "IPC2", "res_DM_digits_ConvNet_2ipc.pt")
    x, y = torch.load(path, weights_only=False)["data"][-1]
    assert torch.equal(x, images[order]) and torch.equal(y, labels[order]) and m["per_class"] == [2] * 10
    # DD-Ranking: image_tensor = torch.load('images.pt'), hard_labels class-sorted (ipc per class here)
    m = export_run(dm_run, "ddranking", str(tmp_path / "dd"))
    x = torch.load(tmp_path / "dd" / "images.pt", weights_only=True)
    y = torch.load(tmp_path / "dd" / "labels.pt", weights_only=True)
    assert torch.equal(x, images[order]) and y.tolist() == [k for k in range(10) for _ in range(2)]
    assert not (tmp_path / "dd" / "lr.pt").exists() and m["classes"] == [str(k) for k in range(10)]
    assert json.loads((tmp_path / "dd" / "export.json").read_text())["format"] == "ddranking"
    with pytest.raises(ValueError, match="--format must be one of ddranking, dcbench"):
        export_run(dm_run, "tfrecord")
    with pytest.raises(FileNotFoundError, match="has no synthetic.pt"):
        export_run(str(tmp_path), "dcbench")


def test_report_table_and_plot(tmp_path, dm_run, capsys):
    out1 = str(tmp_path / "dm1")
    runs.distill("dm", "digits", 1, out1, iterations=1, overrides=TINY, eval_nets=2, progress=False)
    runs.evaluate_dir(dm_run, eval_nets=1, baseline=False, progress=False, archs="convnet,mlp")
    assert cli.main(["report", out1, dm_run, "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep.md").read_text()
    assert text == capsys.readouterr().out.split("wrote ")[0]
    lines = text.splitlines()
    assert len(lines) == 2 + 4  # dm1, dm (metrics.json) and dm's record for ConvNet and MLP
    assert "| dm | evaluations/001.json | dm | digits | 2 | quick, 2 ep., width 64 | MLP |" in text
    png = read_png(str(tmp_path / "rep.png"))
    assert png.ndim == 3 and png.shape[1] == 2 * 380 and png.shape[0] == 300 + 40  # two panels, one row
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 5  # lines, points, band and text were drawn
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
