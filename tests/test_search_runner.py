"""``se-inject search``: bad input in one line before any training; real worker processes on a journal file and
on a real PostgreSQL server; a killed command or worker resumes with every trial counted once; the report's
files, its policy files applied, and optuna-dashboard reading the study."""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from se_inject_cli.app import main as cli

ROOT = Path(__file__).resolve().parents[1]

#: a search that trains in seconds: ResNet-8 on 64 synthetic 16x16 images, one epoch a trial
SEARCH = {
    "name": "test search", "backbone": "cifar_resnet8", "config": None,
    "set": {"data.dataset": "synthetic", "data.synthetic.train_samples": 64, "data.synthetic.val_samples": 32,
            "data.synthetic.size": [1, 16, 16], "data.batch_size": 32, "data.workers": 0, "run.epochs": 1,
            "run.device": "cpu", "sched.warmup_epochs": 0},
    "space": {"r_choices": [4, 16]}, "objectives": ["error", "params"],
    "sampler": {"name": "random", "seed": 0}, "trials": 5,
}


def _write(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({**SEARCH, **changes}))
    return path


def _study(out: Path, url: str | None = None):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    storage = optuna.storages.RDBStorage(url) if url else JournalStorage(JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name="search", storage=storage)


def _states(study) -> dict[str, int]:
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return states


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("args, message", [
    ({"trails": 3}, r"search.yaml: key 'trails' is not a search key \(did you mean 'trials'\?\)"),
    (["--set", "sampler.nam=tpe"], r"--set sampler.nam=tpe: key 'sampler.nam' is not a search key \(did you mean "
                                   r"'sampler.name'\?\)"),
    (["--set", "space.r_choices=[8, 0]"], r"--set space.r_choices=\[8, 0\]: key 'space.r_choices\[1\]' must be a "
                                          r"finite number > 0, got 0"),
    (["--set", "space.policy=none"], r"search.yaml: CifarResNet: policy none places no SE block \(.*\): the search "
                                     r"space is empty"),
    (["--set", "space.off=false", "--set", "constraints.max_params_added=10"],
     r"search.yaml: max_params_added=10: no point of the space meets it \(the cheapest adds 791\)"),
    (["--storage", "postgresql://search:secret@127.0.0.1:9/none"],
     r"--storage postgresql://search:\*\*\*@127.0.0.1:9/none: cannot open it: OperationalError: "),
    (["--storage", "studies.db"], r"--storage 'studies.db' is not a database URL such as postgresql://"),
    (["--set", "pruner.name=median"], r"pruner 'median' with objectives \['error', 'params'\]: Optuna's pruners work "
                                      r"on one objective; use objectives: \[error\]"),
    (["--set", "space.off=false"], r"the plain baseline is a reference trial, so dimensions must be able to be off"),
    (["--trials", "1"], r"--trials 1: key 'trials' must be an integer >= 2"),
])
def test_bad_input_is_one_line_before_any_training(tmp_path, capsys, args, message):
    import re
    out = tmp_path / "out"
    path = _write(tmp_path, **args) if isinstance(args, dict) else _write(tmp_path)
    assert cli(["search", str(path), "-o", str(out), *([] if isinstance(args, dict) else args)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("se-inject search: SearchError: "), err
    assert re.search(message, err), err
    assert not (out / "trials").exists()                        # nothing trained


def test_without_optuna_the_command_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert cli(["search", str(_write(tmp_path)), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("se-inject search: MissingExtraError: se-inject search needs the search extra "
                                       "(optuna not installed): pip install 'se-inject[search]'\n")


def test_a_trial_whose_training_fails_is_recorded_and_the_search_goes_on(tmp_path):
    """A setting the trainer rejects only once it has the data (a batch larger than the data set) fails each trial
    with its reason; every trial is tried, the report lists them. (On a grid: its two points are the references.)"""
    path = _write(tmp_path, trials=None, sampler={"name": "grid"}, space={"by": "model", "r_choices": [16]},
                  set={**SEARCH["set"], "data.batch_size": 128})
    out = tmp_path / "out"
    rc = subprocess.run([sys.executable, "-m", "se_inject_cli", "search", str(path), "-o", str(out)], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert rc.returncode == 1, rc.stderr
    study = _study(out)
    assert _states(study) == {"FAIL": 2}
    reason = "seed 42: ConfigError: data.batch_size = 128: 64 samples cannot fill one batch of 128"
    assert all(t.user_attrs["fail_reason"].startswith(reason) for t in study.trials)
    assert (out / "report.md").read_text().count(reason) == 2
    assert {r["reference"] for r in csv.DictReader((out / "trials.csv").open())} == {"baseline", "paper"}


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def _trials_of(out: Path, url: str | None = None):
    try:
        return _study(out, url).trials
    except Exception:   # the study is not made yet
        return []


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.2)
    return False


def _trainings_of(out: Path) -> list[int]:
    """Pids of the processes still training into ``out``."""
    pids = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            text = Path(cmdline).read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "trainers.train" in text and str(out) in text:
            pids.append(int(cmdline.split("/")[2]))
    return pids


def test_killed_command_resumes_with_every_trial_counted_once(tmp_path):
    """SIGKILL of the command mid-search takes its workers and their trainings along; running it again fails the
    dead trials, retries them, and completes the budget: every trial once, the report's files written, a Pareto
    point applied by ``se-inject apply`` adds the parameters pareto.csv says, optuna-dashboard reads the study."""
    import optuna
    path = _write(tmp_path, trials=3)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "se_inject_cli", "search", str(path), "-o", str(out), "--workers", "2"]
    first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        running = optuna.trial.TrialState.RUNNING
        _wait_for(lambda: sum(t.state.is_finished() for t in _trials_of(out)) >= 1
                  and any(t.state is running and "se_inject:worker" in t.system_attrs for t in _trials_of(out)),
                  240, "a finished trial and a running one")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    dead = [t for t in _trials_of(out) if t.state is running]
    assert dead, "the kill came after the last trial"
    for t in dead:   # the workers died with the command, and so did their trainings
        assert _gone(t.system_attrs["se_inject:worker"]["pid"])
    _wait_for(lambda: not _trainings_of(out), 20, "the trainings to stop")

    again = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "failed and queued again" in again.stdout
    study = _study(out)
    states = _states(study)
    assert states == {"COMPLETE": 3, "FAIL": len(dead)}, states   # the budget, each trial once
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["fail_reason"].startswith("worker died (pid ") for t in failed)
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    assert retried == {t.number for t in failed}
    references = [t.user_attrs.get("reference") for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(r for r in references if r) == ["baseline", "paper"]

    for name in ("report.md", "trials.csv", "pareto.csv", "pareto.png", "command.txt"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == len(study.trials) and {r["state"] for r in rows} == {"complete", "fail"}
    front = list(csv.DictReader((out / "pareto.csv").open()))
    assert front and sorted(p.name for p in (out / "best").iterdir()) == sorted(Path(r["policy_file"]).name
                                                                               for r in front)
    report = (out / "report.md").read_text()
    assert "## Pareto front" in report and "| baseline (trial" in report and "pareto.png" in report

    # the dearest Pareto point, applied from its policy file, adds what pareto.csv says
    point = max(front, key=lambda r: int(r["params_added"]))
    import torch
    from backbones import create_backbone
    assert cli(["apply", "cifar_resnet8", "--policy", str(out / point["policy_file"]), "-o", str(tmp_path / "m.pt")]) == 0
    model = torch.load(tmp_path / "m.pt", weights_only=False)
    plain = create_backbone("cifar_resnet8")
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters()) == \
        int(point["params_added"])

    (out / "report.md").unlink()                                  # se-inject report DIR: written again from the study
    assert cli(["report", str(out)]) == 0 and "## Pareto front" in (out / "report.md").read_text()

    from optuna_dashboard import wsgi
    from optuna_dashboard._storage_url import get_storage
    summaries = json.loads(_get(wsgi(get_storage(str(out / "study.journal"))), "/api/studies"))["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["search"]


def _get(app, path: str) -> bytes:
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
           "SERVER_PORT": "80", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr}
    status: list[str] = []
    body = b"".join(app(env, lambda s, headers, *exc: status.append(s)))
    assert status[0].startswith("200"), status
    return body


# -- PostgreSQL: the several-machines path ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of Debian's package, in a temporary folder, for this module (as user postgres when the
    tests run as root: the server refuses to run as root)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed: `make test` installs Debian's postgresql package")
    bindir = Path(found[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="se-inject-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")   # the package's system user
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-W", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgresql_study_and_a_killed_worker_is_retried(tmp_path, postgres):
    """The several-machines path on a real server: two worker processes on one study, each trial run once; one
    worker killed with SIGKILL mid-trial has its trial failed and retried by the other. (Objectives: error and
    measured latency, under a latency limit every point meets.)"""
    import optuna
    path = _write(tmp_path, trials=3, objectives=["error", "latency"], constraints={"max_latency_ms": 10000})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "se_inject_cli", "search", str(path), "-o", str(out), "--workers", "2",
           "--storage", postgres]
    command = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = optuna.trial.TrialState.RUNNING
    victim: list[int] = []

    def a_worker_trains() -> bool:
        for t in _trials_of(out, postgres):
            who = t.system_attrs.get("se_inject:worker")
            if t.state is running and who and who["pid"] != command.pid \
                    and any(t.number == int(p.name) for p in (out / "trials").glob("*")):   # a worker process, training
                victim.append(who["pid"])
                return True
        return False
    try:
        _wait_for(a_worker_trains, 240, "a worker training a trial")
        os.kill(victim[0], signal.SIGKILL)
        stdout, stderr = command.communicate(timeout=600)
    finally:
        if command.poll() is None:
            command.kill()
    assert command.returncode == 1 and "1 worker(s) stopped with an error" in stderr, stderr[-2000:]
    study = _study(out, postgres)
    assert _states(study) == {"COMPLETE": 3, "FAIL": 1}
    [failed] = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.user_attrs["fail_reason"] == f"worker died (pid {victim[0]} on {socket.gethostname()})"
    [retry] = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state.name == "COMPLETE" and retry.params == failed.params
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    workers = {t.system_attrs["se_inject:worker"]["pid"] for t in study.trials}
    assert len(workers) == 2                                   # both workers took trials
    # each trial trained once: one folder a trial, one training a folder (the retry trained on in its own)
    folders = [t.user_attrs["folder"] for t in complete]
    assert len(set(folders)) == 3
    assert "postgresql://postgres@127.0.0.1" in (out / "report.md").read_text()
    assert all(0 < t.values[1] == t.user_attrs["latency_ms"] < 10000 for t in complete)
    assert "## Pareto front: top-1 error against forward latency" in (out / "report.md").read_text()


@pytest.mark.parametrize("path", sorted(ROOT.glob("examples/search_*.yaml")), ids=lambda p: p.name)
def test_example_search_files_are_valid(path):
    from trainers.search import load_search
    spec = load_search(path)
    assert spec.backbone and spec.objectives[0] == "error"


def test_a_pruner_stops_trials_from_their_per_epoch_error(tmp_path):
    """One objective: each epoch's validation error is reported to the trial as the trainer writes it, and the
    pruner's verdict stops the training (SIGTERM: it checkpoints and exits) and prunes the trial."""
    # 30 epochs of 0.1-0.3 s: the verdict reaches the run within a poll (0.5 s) and a step, which is some
    # epochs here, never all 30 (a run that was not stopped would write 30)
    epochs = 30
    path = _write(tmp_path, trials=2, objectives=["error"], pruner={"name": "threshold", "options": {"upper": 0.0}},
                  set={**SEARCH["set"], "run.epochs": epochs})
    out = tmp_path / "out"
    assert cli(["search", str(path), "-o", str(out)]) == 0
    study = _study(out)
    assert _states(study) == {"PRUNED": 2}
    for t in study.trials:
        assert list(t.intermediate_values) == [0] and t.user_attrs["pruned"].startswith("pruned after epoch 0 (seed 42)")
        history = (out / t.user_attrs["folder"] / "seed42" / "metrics.jsonl").read_text().splitlines()
        assert 1 <= len(history) < epochs                       # stopped by the verdict on its first epoch
        assert "SIGTERM" in (out / t.user_attrs["folder"] / "seed42" / "train.log").read_text()
