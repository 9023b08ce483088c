"""trainers.compare + se-inject compare/report/excitations: a tiny real comparison on Fashion-MNIST."""
import csv
import textwrap

import pytest

from se_inject_cli import main
from trainers.compare import CompareError, load_spec

TINY = """
name: tiny
config: fashion-mnist
set:
  run.epochs: 1
  data.batch_size: 32
  data.limit_train_batches: 8        # 256 training images
  data.limit_val_batches: 4          # 256 validation images
  data.workers: 0
  sched.warmup_epochs: 0
backbones: [cifar_resnet8]
seeds: [0]
variants:
  baseline: null
  se-r4: {policy: paper, r: 4}
launch: {parallel: 2}
"""


def write(tmp_path, text, name="compare.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.slow
def test_tiny_comparison_reports_and_skips_finished_runs(tmp_path, capsys):
    spec = write(tmp_path, TINY)
    out = tmp_path / "out"
    assert main(["compare", "--config", str(spec), "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| cifar_resnet8 | baseline |" in report and "| cifar_resnet8 | se-r4 |" in report
    assert "(+" in report or "(-" in report  # the SE row carries its delta to the baseline
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["variant"], r["state"]) for r in rows} == {("baseline", "done"), ("se-r4", "done")}
    assert (out / "curves_cifar_resnet8.png").stat().st_size > 10_000
    capsys.readouterr()
    # a second invocation trains nothing
    assert main(["compare", "--config", str(spec), "--out", str(out)]) == 0
    assert "2 already finished, 0 to train" in capsys.readouterr().out
    # the report can be rebuilt from the run directories alone
    (out / "report.md").unlink()
    assert main(["report", str(out), "--no-latency"]) == 0 and (out / "report.md").exists()
    # and the SE run's excitations (paper Fig. 8) come from its directory
    run = out / "cifar_resnet8" / "se-r4" / "seed0"
    assert main(["excitations", str(run), "--classes", "0", "1", "7", "--max-batches", "2"]) == 0
    text = capsys.readouterr().out
    assert "SE_" in text and (run / "excitations.png").exists()


@pytest.mark.slow
def test_a_failing_variant_is_reported_and_the_others_complete(tmp_path):
    spec = write(tmp_path, TINY.replace("  se-r4: {policy: paper, r: 4}",
                                        "  broken: {policy: paper, include: ['no_such_module*']}"))
    out = tmp_path / "out"
    assert main(["compare", "--config", str(spec), "--out", str(out)]) == 1
    report = (out / "report.md").read_text()
    assert "| cifar_resnet8 | baseline | " in report and "**failed**" in report and "no_such_module" in report
    assert (out / "cifar_resnet8" / "baseline" / "seed0" / "result.json").exists()


@pytest.mark.parametrize("change,message", [
    (("backbones: [cifar_resnet8]", "backbones: [cifar_resnet9]"),
     r"compare.yaml: key 'backbones': unknown backbone 'cifar_resnet9' \(did you mean 'cifar_resnet8'\?\)"),
    (("policy: paper, r: 4", "policy: papr, r: 4"), r"compare.yaml: key 'variants.se-r4.policy': papr: not a preset"),
    (("policy: paper, r: 4", "policy: paper, rr: 4"),
     r"compare.yaml: key 'variants.se-r4.rr' is not a policy key \(did you mean 'variants.se-r4.r'\?\)"),
    (("seeds: [0]", "sedes: [0]"), r"key 'sedes' is not a comparison key \(did you mean 'seeds'\?\)"),
    (("run.epochs: 1", "run.epochz: 1"), r"compare.yaml: set: key 'run.epochz' is not a config key \(did you mean 'run.epochs'\?\)"),
    (("seeds: [0]", "seeds: []"), r"compare.yaml: key 'seeds': an empty list runs nothing"),
    (("launch: {parallel: 2}", "launch: {paralel: 2}"), r"key 'launch.paralel' is not a comparison key \(did you mean 'launch.parallel'\?\)"),
    (("launch: {parallel: 2}", "launch: {parallel: 0}"), r"key 'launch.parallel' must be an integer >= 1, got 0 \(int\)"),
    (("launch: {parallel: 2}", "ablation: {policy: paper}"), r"key 'ablation.r' is missing: it must be a list of finite numbers > 0"),
    (("launch: {parallel: 2}", "ablation: {r: [4, 0]}"), r"key 'ablation.r\[1\]' must be a finite number > 0, got 0 \(int\)"),
    (("launch: {parallel: 2}", "ablation: {r: [4], rr: 3}"), r"key 'ablation.rr' is not a policy key"),
])
def test_bad_input_fails_before_any_run(tmp_path, change, message):
    spec = write(tmp_path, TINY.replace(*change))
    with pytest.raises(CompareError, match=message):
        load_spec(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("launch,message", [
    ("{stack: yes}", r"compare.yaml: key 'launch.stack': must be auto, off, or the most runs stacked in one group "
                     r"\(an integer >= 1\), got True$"),
    ("{stack: 0}", r"compare.yaml: key 'launch.stack': must be auto, off, .*, got 0$"),
    ("{stack: some}", r"compare.yaml: key 'launch.stack': must be auto, off, .*, got 'some'$"),
    ("{stack: 4, nproc_per_node: 2}", r"compare.yaml: launch.stack = 4 with launch.nproc_per_node = 2: a stacked group "
                                      r"trains in one process; set launch.stack: off or launch.nproc_per_node: 1$"),
    ("{stack: 2}\nset: {optim.opt: adamw}", r"compare.yaml: launch.stack = 2, but these runs cannot be stacked: optim.opt = "
                                            r"adamw \(stacked runs train with SGD: sgd, nesterov, momentum\); set "
                                            r"launch.stack: off \(or auto\)$"),
])
def test_launch_stack_bad_values_give_one_line(tmp_path, launch, message):
    text = TINY.replace("launch: {parallel: 2}", f"launch: {launch}")
    if "set: {" in launch:  # replaces the file's set: with one that has what cannot stack
        text = text.split("set:")[0] + "backbones: [cifar_resnet8]" + text.split("backbones: [cifar_resnet8]")[1]
    with pytest.raises(CompareError, match=message):
        load_spec(write(tmp_path, text), tmp_path / "out")
    assert "auto" in str(load_spec(write(tmp_path, TINY), tmp_path / "out").stack)  # the default


@pytest.mark.parametrize("stack,gpu,groups", [
    ("auto", False, []),                          # auto: no stacking on the CPU
    ("off", True, []),
    ("auto", True, [3, 3]),                       # the seeds of each variant
    (2, True, [2, 1, 2, 1]),                      # at most 2 a group (3 seeds: 2 + 1, the 1 as a plain run)
    (2, False, [2, 1, 2, 1]),                     # a number stacks on the CPU too
])
def test_the_seeds_of_a_variant_stack(tmp_path, stack, gpu, groups):
    from trainers.compare.runner import launch_units
    text = TINY.replace("seeds: [0]", "seeds: [0, 1, 2]").replace("launch: {parallel: 2}", f"launch: {{stack: {stack}}}")
    spec = load_spec(write(tmp_path, text), tmp_path / "out")
    units, note = launch_units(spec, list(spec.runs), gpu)
    assert [len(u.runs) for u in units] == (groups or [1] * 6), note
    for u in units:
        assert len({(r.backbone, r.variant.name) for r in u.runs}) == 1
    if groups:
        assert "stacked group(s)" in note
    # a run with a checkpoint further on than its seeds does not join them
    (spec.runs[0].out_dir / "checkpoints" / "step-00000008").mkdir(parents=True)
    units, _ = launch_units(spec, list(spec.runs), gpu)
    unit_of = {r.key: u for u in units for r in u.runs}
    assert len(unit_of[spec.runs[0].key].runs) == 1
    assert len(unit_of[spec.runs[1].key].runs) == (2 if groups else 1)  # seeds 1 and 2 still together


def test_ablation_expands_variants(tmp_path):
    spec = load_spec(write(tmp_path, TINY.replace("launch:", "ablation: {r: [4, 8, 16]}\nlaunch:")), tmp_path / "o")
    assert [v.name for v in spec.variants] == ["baseline", "se-r4", "se-r8", "se-r16"]
    assert len(spec.runs) == 4 and all(r.seed == 0 for r in spec.runs)


def test_examples_validate():
    for name in ("fashion_mnist_compare", "fashion_mnist_r_ablation", "fashion_mnist_compare_demo", "imagenet_senet_paper"):
        spec = load_spec(f"examples/{name}.yaml")
        assert spec.baseline is not None and spec.runs


def test_gpu_study_validates_and_lists_its_runs(tmp_path, capsys):
    """examples/fashion_mnist_gpu.yaml: 2 backbones x 3 variants x 5 seeds on the GPU path, checked whole by --dry-run;
    on CUDA the 5 seeds of each variant are one stacked group."""
    out = tmp_path / "study"
    assert main(["compare", "--config", "examples/fashion_mnist_gpu.yaml", "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [line for line in lines if " new " in line]
    assert len(runs) == 30 and lines[-1].startswith("30 runs; launch here: ")
    assert not out.exists()                                  # a dry run writes nothing
    spec = load_spec("examples/fashion_mnist_gpu.yaml")
    assert spec.backbones == ("cifar_resnet20", "cifar_resnet56")
    assert [v.name for v in spec.variants] == ["baseline", "se-r16", "se-no-last-stage"] and spec.seeds == (0, 1, 2, 3, 4)
    from trainers.config import load_config
    cfg = load_config(spec.config, [*spec.overrides, *spec.runs[-1].overrides()])
    assert (cfg.data.on_device, cfg.run.cuda_graphs, cfg.run.amp) == (True, True, "bf16")
    assert (cfg.run.epochs, cfg.sched.name, cfg.data.batch_size, cfg.optim.lr, cfg.data.aug.pad) == (30, "cosine", 128, 0.1, 4)
    assert cfg.model.se.policy == "paper-no-last-stage" and spec.parallel == 3 and spec.stack == "auto"
    from trainers.compare.runner import launch_units
    units, note = launch_units(spec, list(spec.runs), gpu=True)
    assert [len(u.runs) for u in units] == [5] * 6 and note == "6 stacked group(s) of 5 runs"


def test_report_says_per_backbone_whether_se_is_outside_seed_noise(tmp_path):
    """The verdict section, from run folders alone: one SE variant better beyond noise, one worse, one within it."""
    import json
    from trainers.compare.report import write_report
    errors = {("b1", "baseline"): [5.0, 5.1, 4.9], ("b1", "se-r16"): [4.5, 4.6, 4.4], ("b1", "se-no-last-stage"): [5.05, 4.95, 5.1],
              ("b2", "baseline"): [7.0, 7.2, 7.1], ("b2", "se-r16"): [7.8, 7.9, 7.7]}
    for (backbone, variant), errs in errors.items():
        for seed, err in enumerate(errs):
            d = tmp_path / backbone / variant / f"seed{seed}"
            d.mkdir(parents=True)
            se = None if variant == "baseline" else {"policy": "paper", "r": 16}
            order = ["baseline", "se-r16", "se-no-last-stage"].index(variant)
            (d / "compare.json").write_text(json.dumps({"backbone": backbone, "variant": variant, "se": se, "seed": seed,
                                                        "order": order}))
            (d / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "top1_err": err, "top5_err": 0.1, "img_per_s": 1.0,
                                                         "train_loss": 0.3}) + "\n")
            (d / "result.json").write_text("{}")
    text = write_report(tmp_path, latency=False).read_text()
    assert "## SE vs the baseline, per backbone (top-1 error, last epoch)" in text
    assert ("- **b1** (vs baseline): se-r16: **SE helps** lower error by 0.50 points: outside seed noise "
            "(2 SE = 0.16, 3 vs 3 seeds); se-no-last-stage: higher error by 0.03 points: within seed noise") in text
    assert "- **b2** (vs baseline): se-r16: **SE hurts** higher error by 0.70 points: outside seed noise" in text
