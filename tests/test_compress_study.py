"""trainers.compress_study: the study's file, its jobs and its report (a tiny real run, marked slow)."""
import json

import pytest
import yaml

from trainers.compress_study.cli import main
from trainers.compress_study.jobs import plan_jobs
from trainers.compress_study.report import verdict
from trainers.compress_study.spec import from_mapping, load_spec
from trainers.errors import ConfigError

TINY = {
    "name": "tiny", "backbones": ["cifar_resnet8"], "seeds": [0, 1],
    "train": {"set": {"run.epochs": 1, "data.limit_train_batches": 4, "data.limit_val_batches": 1,
                      "data.workers": 0, "data.batch_size": 64}},
    "calibration": {"batches": 1, "batch_size": 64},
    "prune": {"amounts": [0.5], "criteria": ["excitation", "magnitude"]},
    "finetune": {"batches_per_epoch": 2, "batch_size": 64},
    "fold": {"tolerances": [1.0]},
    "measure": {"eval_images": 500, "latency_reps": 2, "latency_rounds": 1},
}


@pytest.mark.parametrize("change, message", [
    ({"prune": {"criteria": ["excitaton"]}}, "study.yaml: key 'prune.criteria[0]' must be one of excitation, "
                                             "magnitude, random, got 'excitaton' (did you mean 'excitation'?)"),
    ({"backbones": ["cifar_resnet21"]}, "study.yaml: key 'backbones': unknown backbone 'cifar_resnet21' (did you mean"),
    ({"finetune": {"lrr": 0.1}}, "study.yaml: key 'finetune.lrr' is not a study key (did you mean 'finetune.lr'?)"),
    ({"train": {"set": {"optim.lr": "fast"}}}, "study.yaml: train.set: key 'optim.lr' must be a number >= 0, got 'fast'"),
    ({"fold": {"tolerances": [-1]}}, "study.yaml: key 'fold.tolerances[0]' must be a number >= 0, got -1"),
    ({"se": {"rr": 4}}, "study.yaml: key 'se.rr' is not a policy key (did you mean 'se.r'?)"),
    ({"seeds": []}, "study.yaml: key 'seeds': an empty list runs nothing"),
    ({"train": {"config": "nope.yaml"}}, "study.yaml: train.config: config 'nope.yaml' not found"),
])
def test_a_bad_study_file_is_one_line(change, message):
    with pytest.raises(ConfigError) as e:
        from_mapping({**TINY, **change}, source="study.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_jobs_come_in_queue_order():
    spec = from_mapping({**TINY, "backbones": ["cifar_resnet8", "cifar_resnet20"]}, source="study.yaml")
    names = [(j.backbone, j.name) for j in plan_jobs(spec)]
    assert names[:3] == [("cifar_resnet20", "base"), ("cifar_resnet8", "base"), ("cifar_resnet8", "reference")]
    assert names[-1] == ("cifar_resnet20", "fold-1") and len(names) == 2 * (2 + 4 + 1)


def test_verdict_needs_two_standard_errors():
    assert verdict([91.0, 91.2, 91.1], [90.0, 90.2, 90.1])[0] == "better"
    assert verdict([90.0, 90.2, 90.1], [91.0, 91.2, 91.1])[0] == "worse"
    assert verdict([90.0, 91.5, 89.0], [90.4, 90.6, 90.5])[0] == "within noise"


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end_and_resumes(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path / "out")}))
    assert main(["--config", str(config)]) == 0
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    assert "**Verdict**" in report and "| cifar_resnet8 | 50 % |" in report and "fold at tolerance 1" in report
    assert f"Command: `python -m trainers.compress_study --config {config}`" in report and "torch-pruning" in report
    assert (out / "report_macs.png").stat().st_size > 10_000 and (out / "report_latency.png").exists()
    result = json.loads((out / "cifar_resnet8" / "prune-excitation-0.50-seed1.json").read_text())
    assert result["macs_removed"] == pytest.approx(0.5, abs=0.02) and 0 <= result["accuracy"] <= 100
    latency = json.loads((out / "cifar_resnet8" / "latency.json").read_text())
    assert set(latency) == {"base", "prune-0.50", "fold-1"}
    capsys.readouterr()
    assert main(["--config", str(config)]) == 0              # everything is done: nothing runs again
    assert "0 to run" in capsys.readouterr().out
    spec = load_spec(config)
    assert len(plan_jobs(spec)) == 1 + 1 + 4 + 1
