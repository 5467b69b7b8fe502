"""Run directories, checkpoints and resume, the CLI and its errors (digits, a couple of iterations)."""
import json
import os

import pytest
import torch

from ddkernels.distill import cli, data, runs
from ddkernels.distill.methods import METHODS, preset
from ddkernels.distill.data.zca import ZCA

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"width": 8, "batch_real": 8, "inner_loop": 1, "n_data": 16, "eval_epochs": 5}


def _distill(out, iterations, resume=False, evaluate_after=False):
    return runs.distill("idc", "digits", 1, str(out), iterations=iterations, resume=resume, overrides=TINY,
                        evaluate_after=evaluate_after, eval_nets=1, progress=False)


def test_resume_reaches_the_uninterrupted_result(tmp_path):
    _distill(tmp_path / "straight", 3)
    _distill(tmp_path / "split", 1)  # a run killed after iteration 1 leaves its checkpoint ...
    os.remove(tmp_path / "split" / "synthetic.pt")
    _distill(tmp_path / "split", 3, resume=True)  # ... and --resume continues it
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["trainer"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=False)["trainer"]
    assert torch.equal(a["params"]["syn"], b["params"]["syn"]) and a["iteration"] == b["iteration"] == 3
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    ia, la = torch.load(tmp_path / "straight" / "images_labels.pt", weights_only=True)
    ib, lb = torch.load(tmp_path / "split" / "images_labels.pt", weights_only=True)
    assert torch.equal(ia, ib) and torch.equal(la, lb)
    assert not [f for f in os.listdir(tmp_path / "split") if ".tmp-" in f]  # atomic writes leave no temporaries


def test_run_directory_contents_and_evaluate(tmp_path):
    m = _distill(tmp_path / "run", 1, evaluate_after=True)
    for name in ("config.json", "checkpoint.pt", "synthetic.pt", "images_labels.pt", "synthetic.png", "decoded.png",
                 "metrics.json", "log.txt"):
        assert (tmp_path / "run" / name).is_file(), name
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("method", "dataset", "ipc", "backend", "seconds", "accuracy", "random_real", "versions"):
        assert key in saved
    assert set(saved["accuracy"]) >= {"mean", "std", "n"} and saved["random_real"]["n"] == 1 == m["accuracy"]["n"]
    images, labels = torch.load(tmp_path / "run" / "images_labels.pt", weights_only=True)
    assert images.shape == (40, 1, 8, 8) and labels.dtype == torch.int64
    stored = torch.load(tmp_path / "run" / "synthetic.pt", weights_only=False)
    assert stored["stored"].shape == (10, 1, 8, 8) and stored["factor"] == 2 and stored["space"] == "pixels [0, 1]"
    assert torch.equal(stored["params"]["syn"], stored["stored"]) and torch.equal(stored["images"], images)
    assert stored["storage"] == saved["storage"] == {"stored_floats": 640, "budget_floats": 640, "ratio": 1.0}
    again = runs.evaluate_dir(str(tmp_path / "run"), eval_nets=1, baseline=False, progress=False)
    assert again["accuracy"]["accuracies"] == saved["accuracy"]["accuracies"]
    # IDC's protocol tests every epochs//4 epochs: metrics hold the final and the best, labelled
    best, rr = saved["accuracy_best"], saved["random_real"]["best"]
    assert saved["accuracy"]["at"] == "final epoch" and "best test accuracy" in best["at"]
    assert best["accuracies"] == [max(c) for c in best["curves"]] and [c[-1] for c in best["curves"]] == \
        saved["accuracy"]["accuracies"]
    assert best["mean"] >= saved["accuracy"]["mean"] and rr["mean"] >= saved["random_real"]["mean"]


def test_cli_distill_and_errors(tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"method": "dm", "dataset": "digits", "ipc": 1, "iterations": 1,
                               "overrides": {"width": 8, "batch_real": 8}}))
    out = str(tmp_path / "dm")
    assert cli.main(["distill", "--config", str(cfg), "--out", out, "--no-eval", "--set", "lr_img=0.5"]) == 0
    assert json.loads(open(os.path.join(out, "config.json")).read())["hp"]["lr_img"] == 0.5
    # Re-running into the same folder without --resume is refused, naming the option.
    assert cli.main(["distill", "--config", str(cfg), "--out", out, "--no-eval"]) == 2
    assert "--resume" in capsys.readouterr().err
    bad = [(["--method", "dc", "--dataset", "digits", "--ipc", "1000"], "ipc=1000 is larger than class"),
           (["--method", "dc", "--dataset", "fashion-mnist", "--ipc", "1", "--data-dir", str(tmp_path / "none")],
            "does not exist"),
           (["--method", "dc", "--dataset", "cifar10", "--ipc", "1"], "pass data_dir"),
           (["--method", "dc", "--ipc", "1"], "distill needs --dataset"),
           (["--method", "dc", "--dataset", "digits", "--ipc", "1", "--set", "nonsense"], "--set expects KEY=VALUE")]
    for args, message in bad:
        assert cli.main(["distill", *args, "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err, message
    with pytest.raises(SystemExit):
        cli.main(["distill", "--method", "kip", "--dataset", "digits", "--ipc", "1", "--out", out])
    assert "invalid choice: 'kip'" in capsys.readouterr().err
    assert cli.main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--method: unknown method"):
        runs.distill("kip", "digits", 1, out)
    with pytest.raises(ValueError, match="--dataset: unknown dataset"):
        runs.distill("dc", "imagenet", 1, out)
    with pytest.raises(FileNotFoundError, match="--resume: no checkpoint.pt"):
        runs.distill("dc", "digits", 1, str(tmp_path / "fresh"), resume=True)


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    assert "grad_distance" in capsys.readouterr().out


def test_zca_run_directory(tmp_path):
    out = tmp_path / "zca"
    m = runs.distill("dm", "digits", 1, str(out), iterations=1, overrides={"width": 8, "batch_real": 8, "zca": True,
                     "eval_epochs": 2}, eval_nets=1, baseline=False, progress=False)
    zca = ZCA.from_state_dict(torch.load(out / "zca.pt", weights_only=True))
    stored = torch.load(out / "synthetic.pt", weights_only=False)
    assert zca.reg == 0.1 and torch.equal(stored["zca"]["transform"], zca.transform)
    # re-evaluation whitens the test set with the stored transform and reproduces the accuracy
    again = runs.evaluate_dir(str(out), eval_nets=1, baseline=False, progress=False)
    assert again["accuracy"]["accuracies"] == m["accuracy"]["accuracies"]
    os.remove(out / "zca.pt")
    with pytest.raises(FileNotFoundError, match="distilled with zca but has no zca.pt"):
        runs.evaluate_dir(str(out), eval_nets=1, baseline=False, progress=False)


def test_yaml_config(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("# a YAML config\nmethod: dm\ndataset: digits\nipc: 1\niterations: 1\nno-eval: true\n"
                   "overrides:\n  width: 8\n  batch_real: 8\nset:\n  - lr_img=0.5\n")
    out = str(tmp_path / "dm")
    args = cli._parser().parse_args(["distill", "--config", str(cfg), "--out", out, "--set", "momentum_img=0.9"])
    opts = cli._distill_options(args)
    assert (opts["method"], opts["ipc"], opts["iterations"], opts["no_eval"]) == ("dm", 1, 1, True)
    assert opts["overrides"] == {"width": 8, "batch_real": 8, "lr_img": 0.5, "momentum_img": 0.9}
    assert cli.main(["distill", "--config", str(cfg), "--out", out]) == 0
    saved = json.loads(open(os.path.join(out, "config.json")).read())
    assert saved["hp"]["lr_img"] == 0.5 and saved["hp"]["width"] == 8
    assert "accuracy" not in json.loads(open(os.path.join(out, "metrics.json")).read())  # the file's no-eval
    for text, message in (("method: [dm\n", "not valid YAML"), ("- dm\n", "expected a mapping"),
                          ("method: dm\nipcs: 3\n", "unknown option(s) ['ipcs']"),
                          ("set: lr_img=1\n", "'set' must be a list")):
        cfg.write_text(text)
        assert cli.main(["distill", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err, message
    assert cli.main(["distill", "--config", str(tmp_path / "nope.yml"), "--out", out]) == 2
    assert "nope.yml" in capsys.readouterr().err


def test_example_configs_parse():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    files = sorted(f for f in os.listdir(root) if f.endswith((".yaml", ".yml", ".json")))
    assert len(files) >= 5
    for f in files:
        path = os.path.join(root, f)
        opts = cli._distill_options(cli._parser().parse_args(["distill", "--config", path]))
        assert opts["method"] in METHODS and opts["dataset"] in data.DATASETS and opts["out"], f
        hp = preset(opts["method"], opts["dataset"], opts["ipc"], opts["preset"])
        assert set(opts["overrides"]) <= set(hp), f
        # every value passes the checks distill runs before loading data (types of the preset's values)
        runs.check_arguments(opts["method"], opts["dataset"], opts["ipc"], preset=opts["preset"],
                             iterations=opts.get("iterations"), backend=opts["backend"], seed=opts["seed"],
                             checkpoint_every=opts["checkpoint_every"], eval_nets=opts.get("eval_nets"),
                             overrides=opts["overrides"])


def test_cli_evaluation_architectures(tmp_path, capsys):
    """--eval-arch / --arch: every network is reported; the first one's results stay the top-level keys."""
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"method": "dm", "dataset": "digits", "ipc": 1, "iterations": 1, "eval_nets": 1,
                               "overrides": {"width": 8, "batch_real": 8, "eval_epochs": 2}}))
    out = str(tmp_path / "dm")
    assert cli.main(["distill", "--config", str(cfg), "--out", out, "--eval-arch", "convnet,ResNet18BN_AP"]) == 0
    m = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert m["arch"] == "ConvNet" and list(m["architectures"]) == ["ConvNet", "ResNet18BN_AP"]
    assert m["accuracy"] == m["architectures"]["ConvNet"]["accuracy"]
    assert all(r["accuracy"]["n"] == 1 and "random_real" in r for r in m["architectures"].values())
    assert "ResNet18BN_AP: synthetic" in capsys.readouterr().out
    distilled = open(os.path.join(out, "metrics.json")).read()
    assert cli.main(["evaluate", out, "--arch", "mlp", "--eval-nets", "1", "--no-baseline"]) == 0
    m = json.loads(open(os.path.join(out, "evaluations", "001.json")).read())  # a new record ...
    assert m["arch"] == "MLP" and list(m["architectures"]) == ["MLP"] and "random_real" not in m
    assert cli.main(["evaluate", out, "--eval-nets", "1", "--no-baseline"]) == 0  # the default: ConvNet alone
    assert not {"arch", "architectures"} & set(json.loads(open(os.path.join(out, "evaluations", "002.json")).read()))
    assert open(os.path.join(out, "metrics.json")).read() == distilled  # ... the distillation's result kept
    capsys.readouterr()
    for args in (["evaluate", out, "--arch", "resnet50"], ["evaluate", out, "--arch", "convnet,,mlp"],
                 ["evaluate", out, "--arch", "lenet"],  # 8×8 digits are too small for LeNet: before any work
                 ["distill", "--config", str(cfg), "--out", str(tmp_path / "x"), "--eval-arch", "vgg"]):
        assert cli.main(args) == 2
        assert "--eval-arch/--arch" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")
