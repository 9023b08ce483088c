"""trainers.stack: K runs trained as one stacked model match K runs trained alone, stop alone, resume exactly.

Tiny nets on synthetic data, a few steps each, all in this process (the GPU script's smoke test, which
runs the stack as its own processes, is tests/test_stack_gpu_script.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from trainers import load_config, train
from trainers.errors import ConfigError, Preempted
from trainers.stack import train_group
from trainers.stack.flat import FlatStack
from trainers.stack.sgd import StackedSGD
from trainers.stack.step import StackedStep, torch_formulation_

TINY = ["data.dataset=synthetic", "data.synthetic.train_samples=16", "data.synthetic.val_samples=8",
        "data.synthetic.size=[1,8,8]", "model.name=cifar_resnet8", "data.batch_size=4", "data.eval_batch_size=8",
        "run.progress=false", "data.workers=0", "run.deterministic=true", "run.device=cpu", "optim.lr=0.05",
        "sched.warmup_epochs=1"]
SEEDS = (0, 1, 2)


def _cfgs(root: Path, extra: list[str] = (), seeds=SEEDS):
    return [load_config(None, [*TINY, *extra, f"run.seed={s}", f"run.out_dir={root / f'seed{s}'}"]) for s in seeds]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(out / "model.safetensors"))


def _newest(out: Path) -> Path:
    from trainers.checkpoint import list_checkpoints
    return list_checkpoints(out / "checkpoints")[0]


# -- the step, against torch.optim.SGD, in float64 (no rounding to hide a wrong formula) ----------------
def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).double()


def _groups(net: nn.Module) -> list[dict]:
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    return [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": 5e-3}]


@pytest.mark.parametrize("nesterov,clip", [(True, None), (False, 0.05)], ids=["nesterov", "momentum-clip"])
def test_the_stacked_step_is_each_runs_own_sgd_step(nesterov, clip):
    steps, k = 4, 3
    nets = []
    for s in range(k):
        torch.manual_seed(s)
        nets.append(_net())
    alone = [_net() for _ in range(k)]
    for a, n in zip(alone, nets):
        a.load_state_dict(n.state_dict())
    lr = torch.rand(k, steps, dtype=torch.float64) * 0.2  # each run its own schedule
    stack = FlatStack(nets)
    sgd = StackedSGD.from_optimizers(stack, [torch.optim.SGD(_groups(n), lr=0.1, momentum=0.9, nesterov=nesterov)
                                             for n in nets])
    step = StackedStep(stack, sgd, nn.CrossEntropyLoss(), torch.device("cpu"), num_batches=steps, clip_grad=clip)
    step.template.train()
    step.begin_epoch(0, lr)
    opts = [torch.optim.SGD(_groups(a), lr=0.1, momentum=0.9, nesterov=nesterov) for a in alone]
    sums = [0.0] * k
    torch.manual_seed(10)
    for i in range(steps):
        x, y = torch.randn(k, 5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (k, 5))
        step.run(x, y)
        for r, (a, opt) in enumerate(zip(alone, opts)):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(a(x[r]), y[r])
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(a.parameters(), clip)
            for g in opt.param_groups:
                g["lr"] = float(lr[r, i])
            opt.step()
            sums[r] += 5 * loss.item()
    torch.testing.assert_close(step.loss_sum, torch.tensor(sums, dtype=torch.float64), rtol=1e-12, atol=0)
    for r, a in enumerate(alone):
        for name, t in a.state_dict().items():  # parameters and BN statistics (num_batches_tracked too)
            torch.testing.assert_close(nets[r].state_dict()[name], t, rtol=1e-10, atol=1e-12, msg=name)
        for name, q in a.named_parameters():
            torch.testing.assert_close(stack.momentum_views(r)[name], opts[r].state[q]["momentum_buffer"],
                                       rtol=1e-10, atol=1e-12, msg=name)


def test_the_warm_up_before_a_graph_capture_leaves_no_trace():
    """What a capture runs first is undone: the captured step then starts from the state the eager one would."""
    def make():
        nets = []
        for s in range(2):
            torch.manual_seed(s)
            nets.append(_net())
        stack = FlatStack(nets)
        sgd = StackedSGD.from_optimizers(stack, [torch.optim.SGD(_groups(n), lr=0.1, momentum=0.9) for n in nets])
        step = StackedStep(stack, sgd, nn.CrossEntropyLoss(), torch.device("cpu"), num_batches=2)
        step.begin_epoch(0, torch.full((2, 2), 0.1, dtype=torch.float64))
        return step
    torch.manual_seed(5)
    x, y = torch.randn(2, 5, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (2, 5))
    warmed, plain = make(), make()
    warmed.static = (x, y)  # what a capture reads (no device batches here)
    warmed.warm_up(3)
    for a, b in zip([*warmed.stack.state(), *warmed._counters()], [*plain.stack.state(), *plain._counters()]):
        assert torch.equal(a, b)
    warmed.run(x, y), plain.run(x, y)
    assert torch.equal(warmed.stack.flat, plain.stack.flat) and torch.equal(warmed.stack.bflat, plain.stack.bflat)


def test_the_se_blocks_of_the_stack_run_their_pytorch_formulation():
    import se_inject
    from backbones import create_backbone
    model = se_inject.apply(create_backbone("cifar_resnet8", num_classes=10, in_chans=1), "paper", input_size=(1, 8, 8),
                            kernels="triton")  # on the CPU the kernels would refuse these inputs
    assert torch_formulation_(model) == 3
    assert {m.kernels for m in model.modules() if hasattr(m, "kernels")} == {"torch"}


# -- the trainer: stacked runs against the same runs trained alone -------------------------------------
@pytest.mark.parametrize("extra", [["data.on_device=true"], ["data.on_device=false", "model.se={policy: paper, r: 4}"]],
                         ids=["on-device", "dataloader-se"])
def test_stacked_runs_match_the_same_runs_trained_alone(tmp_path, extra):
    seeds = SEEDS if "data.on_device=true" in extra else SEEDS[:2]
    extra = [*extra, "run.epochs=1", "data.limit_train_batches=3"]
    outcomes = train_group(_cfgs(tmp_path / "group", extra, seeds))
    assert [o.state for o in outcomes] == ["done"] * len(seeds)
    for cfg in _cfgs(tmp_path / "alone", extra, seeds):
        train(cfg)
    for s in seeds:
        group, alone = tmp_path / "group" / f"seed{s}", tmp_path / "alone" / f"seed{s}"
        for g, a in zip(_metrics(group), _metrics(alone)):
            for key in ("train_loss", "val_loss"):
                assert g[key] == pytest.approx(a[key], rel=1e-5), (s, key)
            for key in ("epoch", "top1_err", "top5_err", "lr", "num_updates", "skipped_steps", "val_images"):
                assert g[key] == a[key], (s, key)
        wg, wa = _weights(group), _weights(alone)
        assert list(wg) == list(wa)
        for name in wa:  # weights and BN statistics
            torch.testing.assert_close(wg[name], wa[name], rtol=1e-4, atol=1e-5, msg=f"seed {s}: {name}")
        from trainers.checkpoint import load_checkpoint
        sg, sa = load_checkpoint(_newest(group)).state, load_checkpoint(_newest(alone)).state
        assert sg["optimizer"]["param_groups"] == sa["optimizer"]["param_groups"]
        assert sg["scheduler"] == sa["scheduler"]
        for i, st in sa["optimizer"]["state"].items():  # a run's checkpoint holds its momentum only
            torch.testing.assert_close(sg["optimizer"]["state"][i]["momentum_buffer"], st["momentum_buffer"],
                                       rtol=1e-4, atol=1e-5)
        assert sg["ranks"][0]["rng"]["torch"].equal(sa["ranks"][0]["rng"]["torch"])
        assert (group / "run.yaml").read_text().replace(str(group), str(alone)) == (alone / "run.yaml").read_text()


# -- stops: a crash, then resume; one run non-finite -------------------------------------------------
def _fail_at(monkeypatch, call: int, what):
    """Make the ``call``-th step of the group (1-based) do ``what(step_object)`` first."""
    original, calls = StackedStep.run, []

    def run(self, *args):
        calls.append(1)
        if len(calls) == call:
            what(self)
        return original(self, *args)

    monkeypatch.setattr(StackedStep, "run", run)
    return calls


def _crash(_step):
    raise RuntimeError("the machine went away")


RESUMED = ["run.epochs=2", "checkpoint.every_steps=3", "checkpoint.keep_last=2"]  # 4 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    train_group(_cfgs(root / "full", RESUMED, seeds=(0, 1)))
    return root


def _signal(_step):
    import os
    import signal
    os.kill(os.getpid(), signal.SIGUSR1)  # as a scheduler's preemption notice: this step is finished, then the stop


@pytest.mark.parametrize("behind", [False, True, "preempted"], ids=["aligned", "one-run-a-checkpoint-behind", "preempted"])
def test_a_killed_group_resumes_bit_identical(tmp_path, monkeypatch, uninterrupted, behind):
    extra = RESUMED
    (tmp_path / "full").symlink_to(uninterrupted / "full")
    if behind == "preempted":  # every run checkpoints at step 6, then the group stops
        _fail_at(monkeypatch, 6, _signal)
        with pytest.raises(Preempted, match=r"^stopped by SIGUSR1 after step 6 \(epoch 1, batch 2\); 2 of 2 runs "):
            train_group(_cfgs(tmp_path / "killed", extra, seeds=(0, 1)))
        assert {_newest(tmp_path / "killed" / f"seed{s}").name for s in (0, 1)} == {"step-00000006"}
        behind = False
    else:
        _fail_at(monkeypatch, 6, _crash)  # during epoch 1, after the checkpoint of step 4 (epoch 0's end)
        with pytest.raises(RuntimeError, match="went away"):
            train_group(_cfgs(tmp_path / "killed", extra, seeds=(0, 1)))
    monkeypatch.undo()
    if behind:  # killed between the runs' writes of step 4: run 1 has step 3 only as its newest
        import shutil
        shutil.rmtree(tmp_path / "killed" / "seed1" / "checkpoints" / "step-00000004")
    assert _newest(tmp_path / "killed" / "seed0").name in ("step-00000004", "step-00000006")
    outcomes = train_group(_cfgs(tmp_path / "killed", [*extra, "checkpoint.resume=auto"], seeds=(0, 1)))
    assert [o.state for o in outcomes] == ["done", "done"]
    for s in (0, 1):
        full, killed = tmp_path / "full" / f"seed{s}", tmp_path / "killed" / f"seed{s}"
        wf, wk = _weights(full), _weights(killed)
        assert all(torch.equal(wf[n], wk[n]) for n in wf), s
        keys = ("epoch", "train_loss", "val_loss", "top1_err", "lr", "num_updates")
        assert [{k: r[k] for k in keys} for r in _metrics(full)] == [{k: r[k] for k in keys} for r in _metrics(killed)]
    if behind:  # run 0 went back to step 3 with run 1, its step 4 set aside
        assert list((tmp_path / "killed" / "seed0" / "checkpoints").glob("superseded-*/step-00000004"))


def _poison_run_1(step):
    """Run 1's loss is NaN at the step the next replay takes (its batch becomes NaN): its step is not taken."""
    original = step.batches.at

    def at(index):
        x, y = original(index)
        x = x.clone()
        x[1] = float("nan")
        step.batches.at = original  # once
        return x, y

    step.batches.at = at


@pytest.fixture(scope="module")
def clean_group(tmp_path_factory):
    """Three runs of one epoch, none of them poisoned: what the others must still do beside a bad one."""
    root = tmp_path_factory.mktemp("clean")
    train_group(_cfgs(root, NONFINITE))
    return root


NONFINITE = ["run.epochs=1", "data.on_device=true", "run.log_every=2"]


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_nonfinite_run_stops_alone_and_the_others_go_on(tmp_path, monkeypatch, clean_group, mode):
    _fail_at(monkeypatch, 3, _poison_run_1)  # step 3 (batch 2)
    outcomes = train_group(_cfgs(tmp_path, [*NONFINITE, f"run.nonfinite={mode}"]))
    run1 = tmp_path / "seed1"
    if mode == "stop":
        assert [o.state for o in outcomes] == ["done", "failed", "done"]
        assert outcomes[1].error.startswith("NonFiniteError: step 3 (epoch 0, batch 3/4): non-finite loss on 1 of 1 "
                                            "rank and gradients on 1 of 1 rank; checkpoint "), outcomes[1].error
        # its last good state: the position before step 3, and the state the clean run 1 had there
        from trainers.checkpoint import load_checkpoint
        saved = load_checkpoint(_newest(run1))
        assert saved.path.name == "step-00000002"
        progress = saved.state["ranks"][0]["progress"]
        assert (progress["epoch"], progress["batch"], progress["num_updates"]) == (0, 2, 2)
        assert not (run1 / "model.safetensors").exists() and not (run1 / "metrics.jsonl").read_text()
    else:
        assert [o.state for o in outcomes] == ["done"] * 3
        assert [r["skipped_steps"] for r in _metrics(run1)] == [1]
    for s in (0, 2):  # the others trained as in the clean group
        wc, wb = _weights(clean_group / f"seed{s}"), _weights(tmp_path / f"seed{s}")
        for n in wc:
            torch.testing.assert_close(wb[n], wc[n], rtol=1e-4, atol=1e-5, msg=f"seed {s}: {n}")


# -- what cannot stack says so in one line -------------------------------------------------------
def test_runs_that_cannot_stack_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^these runs cannot be stacked: loss.mixup / loss.cutmix .*; train them alone "
                                          r"\(in a comparison: launch.stack: off\)$"):
        train_group(_cfgs(tmp_path, ["loss.mixup=0.2"], seeds=(0, 1)))
    cfgs = _cfgs(tmp_path, [], seeds=(0,)) + [load_config(None, [*TINY, "optim.lr=0.2", f"run.out_dir={tmp_path}/b"])]
    with pytest.raises(ConfigError, match=r"may differ in seed, out_dir and SE settings only; .* differs .* in optim.lr$"):
        train_group(cfgs)
    with pytest.raises(ConfigError, match="must build models of one structure"):  # SE with other shapes
        train_group(_cfgs(tmp_path / "a", [], seeds=(0,)) + _cfgs(tmp_path / "b", ["model.se={policy: paper}"], seeds=(1,)))
