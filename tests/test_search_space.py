"""se_inject.search: the space read from one plan, its points as policies, and their exact costs."""
from __future__ import annotations

import random
import sys
import warnings

import pytest
import torch

import se_inject
from backbones import create_backbone
from se_inject.errors import MissingExtraError, PolicyError, SearchError
from se_inject.policy import load_policy
from se_inject.search import OFF, space

#: (name, how to build it, input size): resnet50, a ResNeXt, Inception nets, the project's small nets
#: (benchmarks/search_space.py checks every point of timm's ResNet-50, ResNeXt-50 and Inception-v3 and of the
#: project's BN-Inception against a plan traced afresh)
MODELS = {
    "resnet50": ("timm", (3, 64, 64)),
    "cifar_resnet8": ("own", (1, 28, 28)),
    "cifar_resnext11_4x16d": ("own", (1, 28, 28)),
    "cifar_inception_small": ("own", (1, 28, 28)),
}


def _build(name, timm_model):
    source, size = MODELS[name]
    model = timm_model(name) if source == "timm" else create_backbone(name, in_chans=size[0], num_classes=10)
    return model, size


@pytest.mark.parametrize("name", list(MODELS))
def test_every_point_costs_what_its_plan_says(name, timm_model):
    """Every point: the cost table, the cost of its policy and the plan made from the one trace agree; one point
    at random against ``se_inject.plan`` tracing the model afresh."""
    model, size = _build(name, timm_model)
    s = space(model, input_size=size)
    points = list(s.points())
    assert len(points) == len(s) == 5 ** len(s.dims)
    for point in points:
        policy = s.policy(point)
        plan = s.plan(policy)
        assert s.cost(policy) == s.cost_of(point)
        assert (s.cost(policy).params_added, s.cost(policy).macs_added, s.cost(policy).blocks) == \
            (plan.params_added, plan.macs_added, len(plan.placements)), s.describe(point)
        assert s.point_of(policy) == point
    paper = s.point_of("paper")
    assert set(paper.values()) == {16}
    rng = random.Random(name)
    for point in (rng.choice(points),):
        policy = s.policy(point)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = se_inject.plan(model, policy, input_size=size)
        assert (fresh.params_added, fresh.macs_added) == (s.cost(policy).params_added, s.cost(policy).macs_added)


def test_points_are_policies_a_user_keeps(tmp_path, timm_model):
    """A point's policy is a YAML file: loaded back it is the same policy, and apply adds what the cost says."""
    import yaml
    model = create_backbone("cifar_resnet8", in_chans=1, num_classes=10)
    s = space(model, by="site", r_choices=(4, 16), input_size=(1, 28, 28))
    point = {"SE_0_1": 4, "SE_1_1": OFF, "SE_2_1": 16}
    path = tmp_path / "point.yaml"
    path.write_text(yaml.safe_dump(s.policy(point).to_dict()))
    loaded = load_policy(path)
    assert loaded == s.policy(point)
    applied = se_inject.apply(model, loaded, input_size=(1, 28, 28))
    added = sum(p.numel() for p in applied.parameters()) - sum(p.numel() for p in model.parameters())
    assert added == s.cost(loaded).params_added > 0
    assert [n for n, m in applied.named_modules() if type(m).__name__ == "SqueezeExcite"] == ["layer1.0.se", "layer3.0.se"]


def test_by_model_is_table_5_and_settings_add_dimensions():
    model = create_backbone("cifar_resnet20", in_chans=1, num_classes=10)
    s = space(model, by="model", r_choices=(4, 8, 16, 32), gates=("sigmoid", "hard_sigmoid"), input_size=(1, 28, 28))
    assert s.names == ["all", "gate"] and len(s) == 10
    policy = s.policy({"all": 8, "gate": "hard_sigmoid"})
    assert (policy.r_by_label, policy.gate) == ((("SE_*", 8),), "hard_sigmoid")
    assert s.cost(policy) == s.cost(load_policy("paper").replace(r=8))
    assert s.cost({"all": OFF, "gate": "sigmoid"}).params_added == 0
    assert s.grid() == {"all": [OFF, 32, 16, 8, 4], "gate": ["sigmoid", "hard_sigmoid"]}


def test_a_policy_outside_the_space_is_named():
    s = space(create_backbone("cifar_resnet8"), r_choices=(8, 16), off=False, input_size=(3, 32, 32))
    with pytest.raises(SearchError, match=r"not a point of this space: stage0=4 is not one of 16, 8"):
        s.point_of(load_policy("paper").replace(r=4))
    with pytest.raises(SearchError, match=r"point: stage1='off' is not one of 16, 8"):
        s.policy({"stage0": 8, "stage1": OFF, "stage2": 8})
    with pytest.raises(SearchError, match=r"policy every-conv has kinds=\('conv',\)"):
        s.cost(load_policy("every-conv"))


def test_suggest_draws_points_that_samplers_can_learn_from():
    """The Optuna loop: TPE with the space's constraints; infeasible points are pruned, never trained."""
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model = create_backbone("cifar_resnet8", in_chans=1, num_classes=10)
    s = space(model, input_size=(1, 28, 28), max_params_added=1000)
    trained = []

    def objective(trial):
        policy = s.suggest(trial)
        trained.append(s.point_of(policy))
        return s.cost(policy).params_added

    # Optuna >= 5 samplers read the constraints suggest() sets on the trial; older ones take constraints_func
    extra = {} if hasattr(optuna.trial.Trial, "set_constraint") else {"constraints_func": s.constraints_func}
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=4, **extra)
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=16)
    pruned = [t for t in study.trials if t.state is optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert pruned and complete and len(trained) == len(complete)
    assert all(t.user_attrs["params_added"] > 1000 and "max_params_added=1,000" in t.user_attrs["infeasible"]
               for t in pruned)
    assert all(t.value == t.user_attrs["params_added"] <= 1000 for t in complete)
    assert all(s.constraints_func(t)[0] == t.user_attrs["params_added"] - 1000 for t in study.trials)
    if extra == {}:
        assert all(t.constraints == {"max_params_added": t.user_attrs["params_added"] - 1000} for t in study.trials)


def test_grid_and_ordinal_spaces_run_under_optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    model = create_backbone("cifar_resnet8", in_chans=1, num_classes=10)
    s = space(model, by="model", input_size=(1, 28, 28))
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(s.grid()))
    study.optimize(lambda t: s.cost(s.suggest(t)).params_added, n_trials=len(s))
    assert sorted(map(str, (t.params["all"] for t in study.trials))) == sorted(map(str, s.grid()["all"]))
    ordinal = space(model, input_size=(1, 28, 28), ordinal=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: ordinal.cost(ordinal.suggest(t)).params_added, n_trials=5)
    assert all(isinstance(v, int) for t in study.trials for v in t.params.values())


@pytest.mark.parametrize("kwargs, message", [
    ({"r_choices": (4, 0)}, r"r_choices: entry 0 must be a finite number > 0"),
    ({"r_choices": (4, -8)}, r"r_choices: entry -8 must be a finite number > 0"),
    ({"r_choices": ()}, r"r_choices must be a non-empty list"),
    ({"by": "block"}, r"by='block': dimensions go by one of stage, site, model"),
    ({"gates": ("sigmod",)}, r"gates: 'sigmod' is not a gate"),
    ({"max_params_added": 40}, r"max_params_added=40: no point of the space meets it \(the cheapest adds 468\)"),
])
def test_bad_input_is_one_line(kwargs, message):
    model = create_backbone("cifar_resnet8")
    kwargs = {"off": "max_params_added" not in kwargs, "input_size": (3, 32, 32), **kwargs}
    with pytest.raises(SearchError, match=message) as caught:
        space(model, **kwargs)
    assert "\n" not in str(caught.value)


def test_a_model_without_sites_is_an_empty_space():
    from torch import nn
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(2))
    plain(torch.zeros(1, 3, 8, 8))
    with pytest.raises(SearchError, match=r"^Sequential: policy paper places no SE block \(no site found: .*\): the search "
                                          r"space is empty; pick a model with sites or another policy"):
        space(plain, input_size=(3, 8, 8))


def test_label_keys_are_checked_against_the_model():
    model = create_backbone("cifar_resnet8")
    with pytest.raises(PolicyError, match=r"key 'exclude_labels': glob 'SE_5_\*' matches no site label of CifarResNet "
                                          r"\(its labels look like SE_0_1, SE_1_1, SE_2_1"):
        se_inject.plan(model, exclude_labels=["SE_5_*"], input_size=(3, 32, 32))
    with pytest.raises(PolicyError, match=r"'layer1' is not a site-label glob such as 'SE_5_\*'"):
        load_policy("paper").replace(exclude_labels=["layer1"])
    plan = se_inject.plan(model, r_by_label={"SE_2_*": 4}, exclude_labels=["SE_0_1"], input_size=(3, 32, 32))
    assert [(p.label, p.r) for p in plan.placements] == [("SE_1_1", 16), ("SE_2_1", 4)]
    assert "skipped 1: label matched by exclude_labels" in str(plan)


def test_without_optuna_a_space_prices_and_suggest_names_the_extra(monkeypatch):
    """Optuna blocked (``import optuna`` raises): making a space and pricing its points work (they never import
    it), and suggest says which extra to install."""
    monkeypatch.setitem(sys.modules, "optuna", None)
    s = space(create_backbone("cifar_resnet8"), input_size=(3, 32, 32))
    assert s.cost(s.policy(next(s.points()))).params_added == 0 and s.cost_of(s.point_of("paper")).params_added > 0
    with pytest.raises(MissingExtraError, match=r"^SearchSpace.suggest needs the search extra \(optuna not installed\): "
                                               r"pip install 'se-inject\[search\]'$"):
        s.suggest(object())


def test_the_optuna_loop_example_runs():
    """examples/search_optuna.py: your own Optuna study and training loop around ``space.suggest`` (tiny here)."""
    import importlib.util
    from pathlib import Path
    import optuna
    path = Path(__file__).resolve().parents[1] / "examples" / "search_optuna.py"
    spec = importlib.util.spec_from_file_location("search_optuna_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    study = example.main(["--trials", "4", "--train-images", "128", "--val-images", "64", "--epochs", "1",
                          "--max-params-added", "800"])
    assert len(study.trials) == 4 and study.trials[0].params == {"stage0": 16, "stage1": 16, "stage2": 16}
    for t in study.trials:
        if t.state is optuna.trial.TrialState.COMPLETE:
            assert t.user_attrs["params_added"] <= 800 and 0 <= t.value <= 100
        else:
            assert t.state is optuna.trial.TrialState.PRUNED and t.user_attrs["params_added"] > 800
