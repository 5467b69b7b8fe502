"""The CLI and the run API at their edges: bad arguments (one line, before any work), ``--resume`` with only
``--out``, Ctrl-C, checkpoints that cannot be read, ``bench`` forwarding (digits, DM at width 8)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddkernels.distill import cli, data, runs
from ddkernels.distill.data.imageio import write_png

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = {"width": 8, "batch_real": 8}
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _dm(out, iterations, **kw):
    return runs.distill("dm", "digits", 1, str(out), iterations=iterations, overrides=dict(TINY),
                        evaluate_after=False, progress=False, **kw)


def _iteration(path):
    return torch.load(path, weights_only=False)["trainer"]["iteration"]


@pytest.fixture
def no_work(monkeypatch):
    """Fail any test that reaches the data: argument checks must come first."""
    def load(*args, **kw):
        raise AssertionError("the data was loaded before the arguments were checked")
    monkeypatch.setattr(data, "load_dataset", load)


BAD_DISTILL = [
    (["--checkpoint-every", "0"], "--checkpoint-every must be a positive integer (got 0)"),
    (["--eval-nets", "0"], "--eval-nets must be a positive integer (got 0)"),
    (["--threads", "-2"], "--threads must be a positive integer (got -2)"),
    (["--threads", "0"], "--threads must be a positive integer (got 0)"),
    (["--iterations", "-1"], "--iterations must be an integer >= 0 (0 evaluates the initialization) (got -1)"),
    (["--ipc", "0"], "--ipc must be a positive integer (got 0)"),
    (["--backend", "gpu"], "--backend must be one of auto, reference, cpu, triton (got 'gpu')"),
    (["--dist-timeout", "0"], "--dist-timeout must be a positive number (got 0.0)"),
    (["--set", "lr_img=abc"], "--set lr_img must be a number, like the preset's 1.0 (got 'abc')"),
    (["--set", "width=1.5"], "--set width must be an integer, like the preset's 64 (got 1.5)"),
    (["--set", "width=true"], "--set width must be an integer, like the preset's 64 (got True)"),
    (["--set", "init=3"], "--set init must be a string, like the preset's 'real' (got 3)"),
    (["--set", "zca=-1"], "--set zca must be false, true or a positive number (got -1)"),
    (["--set", "iterations=-5"], "--set iterations must be an integer >= 0 (got -5)"),
    (["--set", "nosuch=1"], "--set: unknown dm hyperparameter(s) ['nosuch']"),
]


@pytest.mark.parametrize("args, message", BAD_DISTILL, ids=[" ".join(a) for a, _ in BAD_DISTILL])
def test_bad_distill_argument_is_one_line_before_any_work(tmp_path, capsys, no_work, args, message):
    out = tmp_path / "run"
    ipc = [] if "--ipc" in args else ["--ipc", "1"]
    assert cli.main(["distill", "--method", "dm", "--dataset", "digits", *ipc, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddkernels distill: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_bad_arguments_of_the_other_commands_and_of_config_files(tmp_path, capsys, no_work):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"method": "dm", "dataset": "digits", "ipc": 1, "threads": 0}))
    for argv, message in [
            (["distill", "--config", str(cfg), "--out", str(tmp_path / "r")], "--threads must be a positive integer"),
            (["evaluate", str(tmp_path), "--eval-nets", "0"], "--eval-nets must be a positive integer (got 0)"),
            (["evaluate", str(tmp_path), "--threads", "-1"], "--threads must be a positive integer (got -1)"),
            (["experts", "--dataset", "digits", "--out", str(tmp_path / "e"), "--set", "lr_teacher=abc"],
             "--set lr_teacher must be a number, like the preset's 0.01 (got 'abc')"),
            (["experts", "--dataset", "digits", "--out", str(tmp_path / "e"), "--num-experts", "0"],
             "--num-experts must be a positive int")]:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_malformed_command_line_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["distill", "--checkpoint-every", "abc"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("ddkernels distill: error: argument --checkpoint-every: invalid int value: "
                                       "'abc' (see ddkernels distill --help)\n")


def test_api_raises_value_error_naming_the_argument(tmp_path, no_work):
    out = str(tmp_path / "run")
    for kw, message in [(dict(checkpoint_every=0), "--checkpoint-every must be a positive integer"),
                        (dict(eval_nets=0), "--eval-nets must be a positive integer"),
                        (dict(eval_nets=2.5), "--eval-nets must be a positive integer"),
                        (dict(iterations=-1), "--iterations must be an integer >= 0"),
                        (dict(preset="fast"), "--preset must be one of paper, quick"),
                        (dict(seed="0"), "--seed must be an integer"),
                        (dict(overrides={"lr_img": "abc"}), "--set lr_img must be a number"),
                        (dict(overrides={"momentum_img": None}), "--set momentum_img must be a number")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            runs.distill("dm", "digits", 1, out, **kw)
    with pytest.raises(ValueError, match="--ipc must be a positive integer"):
        runs.distill("dm", "digits", -1, out)
    with pytest.raises(ValueError, match="--eval-nets must be a positive integer"):
        runs.evaluate_dir(out, eval_nets=0)
    assert not os.path.exists(out)
    # An int for a float hyperparameter becomes a float (JSON writes 1.0 as 1).
    assert runs.check_arguments("dm", "digits", 1, overrides={"lr_img": 1}) == {"lr_img": 1.0}
    # A derived setting (None in this preset) takes None or the type the other preset gives it.
    assert runs.check_arguments("idc", "digits", 1, preset="paper", overrides={"eval_width": 16, "zca": 0.2}) == \
        {"eval_width": 16, "zca": 0.2}
    assert runs.check_arguments("idc", "digits", 1, overrides={"eval_width": None}) == {"eval_width": None}
    with pytest.raises(ValueError, match=re.escape("--set eval_width must be an integer or null, like the "
                                                   "preset's 32 (got 'abc')")):
        runs.check_arguments("idc", "digits", 1, preset="paper", overrides={"eval_width": "abc"})


def test_resume_needs_only_out(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1", "--out", out, "--iterations",
                     "2", "--seed", "3", "--set", "width=8", "--set", "batch_real=8", "--set", "lr_img=0.5",
                     "--checkpoint-every", "2", "--no-eval"]) == 0
    assert cli.main(["distill", "--out", out, "--resume", "--iterations", "3"]) == 0
    config = json.loads(open(os.path.join(out, "config.json")).read())
    assert (config["iterations"], config["seed"], config["hp"]["lr_img"], config["checkpoint_every"]) == (3, 3, 0.5, 2)
    assert _iteration(os.path.join(out, "checkpoint.pt")) == 3
    assert "accuracy" not in json.loads(open(os.path.join(out, "metrics.json")).read())  # --no-eval was kept
    capsys.readouterr()
    # What the command line says still wins, and must agree with the run.
    assert cli.main(["distill", "--out", out, "--resume", "--method", "dc"]) == 2
    assert "the run in" in capsys.readouterr().err
    assert cli.main(["distill", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "has no config.json" in capsys.readouterr().err


def test_unreadable_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    _dm(tmp_path / "straight", 3)
    run = tmp_path / "run"
    _dm(run, 3)
    assert _iteration(run / "checkpoint.pt") == 3 and _iteration(run / "checkpoint.prev.pt") == 2
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])  # a copy cut short
    capsys.readouterr()
    _dm(run, 3, resume=True)
    err = capsys.readouterr().err
    assert f"warning: {run / 'checkpoint.pt'} cannot be read" in err
    assert f"resuming from the previous checkpoint {run / 'checkpoint.prev.pt'} (iteration 2)" in err
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["trainer"]
    b = torch.load(run / "checkpoint.pt", weights_only=False)["trainer"]
    assert torch.equal(a["params"]["syn"], b["params"]["syn"]) and b["iteration"] == 3
    assert _iteration(run / "checkpoint.prev.pt") == 2  # the bad file was overwritten, not kept as "previous"
    # A run killed between moving checkpoint.pt aside and putting the new one in place resumes too.
    os.remove(run / "checkpoint.pt")
    _dm(run, 4, resume=True)
    assert _iteration(run / "checkpoint.pt") == 4 and _iteration(run / "checkpoint.prev.pt") == 3
    # Neither readable: an error naming both files and how to start over, via the API and the CLI.
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (run / name).write_bytes(b"")
    with pytest.raises(ValueError, match="no readable checkpoint") as e:
        _dm(run, 3, resume=True)
    for text in (f"{run / 'checkpoint.pt'} cannot be read (EOFError", f"{run / 'checkpoint.prev.pt'} cannot be read",
                 "delete checkpoint.pt and checkpoint.prev.pt there and run without --resume"):
        assert text in str(e.value)
    capsys.readouterr()
    assert cli.main(["distill", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable checkpoint" in err


def _interrupt_during_data_loading(monkeypatch):
    def load(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(data, "load_dataset", load)


def test_interrupted_before_and_after_a_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _dm(run, 2)
    _interrupt_during_data_loading(monkeypatch)
    with pytest.raises(runs.Interrupted) as e:  # a KeyboardInterrupt, for callers that catch that
        _dm(run, 4, resume=True)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.iteration == 2
    assert cli.main(["distill", "--out", str(run), "--resume"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted; last checkpoint: {run / 'checkpoint.pt'} (iteration 2). "
        f"Resume with: ddkernels distill --out {run} --resume")
    assert cli.main(["distill", "--method", "dm", "--dataset", "digits", "--ipc", "1",
                     "--out", str(tmp_path / "new dir")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"interrupted before the first checkpoint; nothing to resume in {tmp_path / 'new dir'}: "
        f"run the same command again")
    (run / "checkpoint.pt").write_bytes(b"")  # resumed from the previous checkpoint: that one is named
    with pytest.raises(runs.Interrupted) as e:
        _dm(run, 4, resume=True)
    assert (e.value.checkpoint, e.value.iteration) == (str(run / "checkpoint.prev.pt"), 1)


def test_ctrl_c_during_the_renames_is_raised_after_them(tmp_path):
    from ddkernels.distill._files import atomic_save

    path = str(tmp_path / "checkpoint.pt")
    atomic_save({"n": 1}, path)
    done = []
    # Python's own handler, as in a terminal (a shell that starts the tests in the background ignores SIGINT)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_save({"n": 2}, path, keep_previous=str(tmp_path / "prev.pt"),
                        then=lambda: (os.kill(os.getpid(), signal.SIGINT), done.append(1)))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert done == [1] and torch.load(path)["n"] == 2 and torch.load(tmp_path / "prev.pt")["n"] == 1


def test_interrupted_evaluate_and_experts_say_what_is_kept(tmp_path, capsys, monkeypatch):
    from ddkernels.distill import experts

    def stop(*args, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(runs, "evaluate_dir", stop)
    monkeypatch.setattr(experts, "train_experts", stop)
    assert cli.main(["evaluate", str(tmp_path)]) == 130
    assert capsys.readouterr().err == (f"interrupted; nothing was written to {tmp_path} (its metrics.json and "
                                       f"evaluations/ are unchanged)\n")
    assert cli.main(["experts", "--dataset", "digits", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == (f"interrupted; the finished experts and the current one's last epoch are "
                                       f"kept in {tmp_path}: run the same command again to continue\n")


def test_ctrl_c_ends_with_one_line_and_the_run_resumes(tmp_path):
    out = str(tmp_path / "run")
    cmd = [sys.executable, "-m", "ddkernels", "distill", "--method", "dm", "--dataset", "digits", "--ipc", "1",
           "--out", out, "--iterations", "1000000", "--set", "width=8", "--set", "batch_real=8", "--no-eval",
           "--threads", "1"]
    # SIGINT back to its default in the child: a shell running this test in the background ignores it.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(out, "checkpoint.prev.pt")) and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    m = re.fullmatch(r"interrupted; last checkpoint: (.+) \(iteration (\d+)\)\. Resume with: (.+)", last)
    assert m, last
    path, n, command = m.group(1), int(m.group(2)), m.group(3)
    assert path == os.path.join(out, "checkpoint.pt") and _iteration(path) == n >= 2
    assert command == f"ddkernels distill --out {out} --resume"
    assert cli.main(command.split()[1:] + ["--iterations", str(n + 1)]) == 0
    assert _iteration(path) == n + 1


def test_bench_forwards_every_argument(monkeypatch, capsys):
    run_module = pytest.importorskip("benchmarks.run")
    seen = []
    monkeypatch.setattr(run_module, "main", lambda argv=None: seen.append(argv))
    assert cli.main(["bench", "--quick", "--ops", "scale_shift"]) == 0
    assert seen == [["--quick", "--ops", "scale_shift"]]
    monkeypatch.undo()
    with pytest.raises(SystemExit) as e:  # benchmarks.run's own help: its options are the command's
        cli.main(["bench", "--help"])
    assert e.value.code == 0 and "--quick" in capsys.readouterr().out


def test_mtt_hint_names_the_data_dir(tmp_path):
    root = tmp_path / "my data"
    for split in ("train", "test"):
        for k in range(2):
            (root / split / f"c{k}").mkdir(parents=True)
            write_png(str(root / split / f"c{k}" / "a.png"), torch.rand(1, 8, 8))
    ds = data.load_dataset("folder", str(root))
    assert ds.data_dir == str(root)
    from ddkernels.distill.methods import make_distiller

    with pytest.raises(FileNotFoundError) as e:
        make_distiller("mtt", ds, 1, expert_dir=str(tmp_path / "experts"), width=8)
    assert (f"`ddkernels experts --dataset folder --data-dir '{root}' --out {tmp_path / 'experts'}`"
            in str(e.value))


@pytest.mark.parametrize("case", ["dm", "mtt"])
def test_old_run_resumes_with_only_out(tmp_path, monkeypatch, case):
    """Runs written before config.json recorded the run options (tests/distill/fixtures/old_runs)."""
    import shutil

    shutil.copytree(os.path.join(os.path.dirname(__file__), "fixtures", "old_runs"), tmp_path / "old_runs")
    monkeypatch.chdir(tmp_path / "old_runs")  # the MTT run names its experts as "experts"
    assert cli.main(["distill", "--out", f"old/{case}", "--resume", "--iterations", "2", "--no-eval"]) == 0
    assert _iteration(f"old/{case}/checkpoint.pt") == 2 and _iteration(f"old/{case}/checkpoint.prev.pt") == 1
