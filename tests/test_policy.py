"""se_inject.policy: validation, presets, YAML, overrides. Errors are one line naming file and key."""
import pytest
import yaml

from se_inject import PolicyError, Policy, list_presets, load_policy
from se_inject.policy import SCHEMA, policy_reference


def test_presets_ship_and_load():
    assert {"paper", "paper-no-last-stage", "every-conv", "inception"} <= set(list_presets())
    for name in list_presets():
        assert load_policy(name).source == name
    assert load_policy(None) == load_policy("paper") == Policy()


def test_base_inherits_and_overrides(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: paper-no-last-stage\nr: 8\nr_per_stage: {4: 32}\nr_by_path: {'layer1.*': 4}\n")
    p = load_policy(f)
    assert (p.r, p.skip_last_stage, p.r_for("layer3.0", 4), p.r_for("layer1.2", 2), p.r_for("layer2.0", 3)) == (8, True, 32, 4, 8)


def test_round_trip_through_yaml(tmp_path):
    p = load_policy("every-conv").replace(r=4, exclude=["stem*"])
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(p.to_dict()))
    assert load_policy(f) == p


def test_replace_validates():
    assert load_policy().replace(r=8, divisor=8).divisor == 8
    with pytest.raises(PolicyError, match=r"keyword override 'rr' is not a policy key \(did you mean 'r'\?\)"):
        load_policy().replace(rr=8)
    with pytest.raises(PolicyError, match="key 'r' must be a finite number > 0, got -1"):
        load_policy().replace(r=-1)


@pytest.mark.parametrize("text,message", [
    ("rr: 16\n", r"bad.yaml: key 'rr' is not a policy key \(did you mean 'r'\?\)"),
    ("r: sixteen\n", r"bad.yaml: key 'r' must be a finite number > 0, got 'sixteen' \(str\)"),
    ("r: 0\n", r"bad.yaml: key 'r' must be a finite number > 0, got 0 \(int\)"),
    ("r: -2.5\n", r"bad.yaml: key 'r' must be a finite number > 0"),
    ("skip_last_stage: yes please\n", r"bad.yaml: key 'skip_last_stage' must be true or false"),
    ("kinds: [residual, inceptoin]\n", r"bad.yaml: key 'kinds\[1\]' must be one of .*got 'inceptoin' \(did you mean 'inception'\?\)"),
    ("gate: softmax\n", r"bad.yaml: key 'gate' must be one of sigmoid, hard_sigmoid"),
    ("r_per_stage: [1, 2]\n", r"bad.yaml: key 'r_per_stage' must be a mapping stage -> r"),
    ("divisor: 2.5\n", r"bad.yaml: key 'divisor' must be an integer >= 1"),
    ("- r: 16\n", r"bad.yaml: a policy is a YAML mapping of keys .* got a list"),
    ("r: [16\n", r"bad.yaml:2: not valid YAML: expected ',' or '\]', but got '<stream end>' \(while parsing a flow sequence from line 1\)"),
    ("base: nope\n", r"nope: not a preset"),
])
def test_bad_files_name_file_and_key(tmp_path, text, message):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError, match=message) as info:
        load_policy(f)
    assert "\n" not in str(info.value)


def test_unreadable_and_unknown_names(tmp_path):
    with pytest.raises(PolicyError, match="missing.yaml: cannot read the policy file: No such file"):
        load_policy(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match=r"papr: not a preset .* \(did you mean 'paper'\?\)"):
        load_policy("papr")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    with pytest.raises(PolicyError, match="dir.yaml: cannot read the policy file"):
        load_policy(directory)


def test_reference_lists_every_key():
    ref = policy_reference()
    for key in SCHEMA:
        assert f"`{key}`" in ref


def test_docs_reference_is_generated_from_the_schema():
    """The policy page's key table (docs/policy.md) is the generated one: docs cannot drift from the code."""
    from pathlib import Path
    page = (Path(__file__).parents[1] / "docs" / "policy.md").read_text()
    assert policy_reference() in page, "regenerate: se-inject policy --reference"


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -float("inf")])
def test_r_must_be_finite(value):
    with pytest.raises(PolicyError, match="key 'r' must be a finite number > 0"):
        load_policy().replace(r=value)
    with pytest.raises(PolicyError, match=r"key 'r_per_stage\[3\]' must be a finite number > 0"):
        load_policy().replace(r_per_stage={3: value})


def test_base_path_is_read_from_the_folder_of_the_file_naming_it(tmp_path, monkeypatch):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "common.yaml").write_text("base: paper\nr: 8\n")
    (tmp_path / "policies" / "mine.yaml").write_text("base: common.yaml\ndivisor: 8\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)              # not where the files are
    p = load_policy(tmp_path / "policies" / "mine.yaml")
    assert (p.r, p.divisor) == (8, 8)


def test_none_preset_gates_nothing():
    p = load_policy("none")
    assert p.kinds == () and not p.conv_fallback


def test_policy_fields_carry_defaults_help_and_checks():
    """One source: the dataclass fields. SCHEMA is a read-only view derived from them (kept for old callers)."""
    p = Policy(kinds="residual", r_per_stage={"5": 32}, r_by_path=[["layer4.*", 8]])
    assert (p.kinds, p.r_per_stage, p.r_by_path) == (("residual",), ((5, 32),), (("layer4.*", 8),))
    assert hash(p) == hash(Policy(kinds=["residual"], r_per_stage=((5, 32),), r_by_path={"layer4.*": 8}))
    assert Policy().r == SCHEMA["r"].default == 16 and SCHEMA["r"].expected == "a finite number > 0"
    assert SCHEMA["kinds"].check("kinds", "split") == ("split",) and "source" not in SCHEMA
    with pytest.raises(TypeError):
        SCHEMA["r"] = None  # type: ignore[index]
    with pytest.raises(PolicyError, match=r"^<python>: key 'r_per_stage': stage -1 must be an integer >= 0"):
        Policy(r_per_stage={-1: 4})
    with pytest.raises(PolicyError, match=r"^<python>: key 'exclude': '' is not a module-path glob"):
        Policy(exclude=[""])


def test_override_names_where_each_key_was_set():
    p = load_policy("paper-no-last-stage").override({"r": 8, "layouts": "nlc"}, {"r": "--r 8"})
    assert (p.r, p.layouts, p.skip_last_stage, p.source) == (8, ("nlc",), True, "paper-no-last-stage")
    with pytest.raises(PolicyError, match=r"^--set gate=sigmod: key 'gate' must be one of sigmoid, hard_sigmoid, "
                                          r"got 'sigmod' \(did you mean 'sigmoid'\?\)"):
        load_policy().override({"gate": "sigmod"}, {"gate": "--set gate=sigmod"})
    with pytest.raises(PolicyError, match=r"^paper: key 'rr' is not a policy key \(did you mean 'r'\?\)"):
        load_policy().override({"rr": 8})
