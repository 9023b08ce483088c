"""se_inject.yaml_io: the one YAML reader and the one KEY=VALUE override parser."""
from __future__ import annotations

import pytest

from se_inject.errors import PolicyError
from se_inject.yaml_io import format_override, parse_override, parse_yaml, read_yaml


def test_read_a_mapping_and_an_empty_file(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("r: 8\nr_per_stage: {5: 32}\n")
    assert read_yaml(f, error=PolicyError, what="policy") == {"r": 8, "r_per_stage": {5: 32}}
    f.write_text("# nothing but a comment\n")
    assert read_yaml(f, error=PolicyError, what="policy") == {}


@pytest.mark.parametrize("text,message", [
    ("r: [8\n", r"p.yaml:2: not valid YAML: expected ',' or '\]', but got '<stream end>' \(while parsing a flow sequence from line 1\)"),
    ("a: b: c\n", r"p.yaml:1: not valid YAML: mapping values are not allowed here$"),
    ("r: 1\n\tq: 2\n", r"p.yaml:2: not valid YAML"),
    ("- r: 8\n", r"p.yaml: a policy is a YAML mapping of keys \(kinds, r, ...\), got a list"),
    ("8\n", r"p.yaml: a policy is a YAML mapping of keys \(kinds, r, ...\), got an int"),
])
def test_bad_files_are_one_line_errors_with_file_and_line(tmp_path, text, message):
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError, match=message) as e:
        read_yaml(f, error=PolicyError, what="policy", keys=["kinds", "r"])
    assert "\n" not in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(PolicyError, match="missing.yaml: cannot read the policy file: No such file"):
        read_yaml(tmp_path / "missing.yaml", error=PolicyError, what="policy")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PolicyError, match="bin.yaml: cannot read the policy file: not text"):
        read_yaml(tmp_path / "bin.yaml", error=PolicyError, what="policy")


@pytest.mark.parametrize("item,parsed", [
    ("r=8", ("r", 8)),
    ("optim.lr=1e-3", ("optim.lr", "1e-3")),              # YAML 1.1: a string; a float field converts it
    ("layouts=[nchw, nlc]", ("layouts", ["nchw", "nlc"])),
    ("layouts=[nchw", ("layouts", "[nchw")),              # not YAML: kept as text, the schema says what fits
    ("model.se={policy: paper, r: 16}", ("model.se", {"policy": "paper", "r": 16})),
    ("model.se=", ("model.se", None)),
    (" r = 8 ", ("r", 8)),
    ("exclude=a=b", ("exclude", "a=b")),
])
def test_parse_override(item, parsed):
    assert parse_override(item, error=PolicyError) == parsed


@pytest.mark.parametrize("item", ["r", "=8", ""])
def test_an_override_without_key_or_equals_sign(item):
    with pytest.raises(PolicyError, match=r"^--set .*: expected key=value, e.g. --set r=8$"):
        parse_override(item, error=PolicyError, example="r=8")


@pytest.mark.parametrize("value", [None, 16, 0.1, True, "paper", "1e-3", "a: b", "runs/x y", [4, 8], {"policy": "paper", "r": 16}])
def test_format_override_round_trips(value):
    assert parse_override(format_override("k", value), error=PolicyError) == ("k", value)


def test_text_is_read_the_same_way_as_a_file():
    """Presets are package data, read as text: the same reader and messages, named after the preset."""
    assert parse_yaml("kinds: [conv]\n", "every-conv", error=PolicyError, what="policy") == {"kinds": ["conv"]}
    with pytest.raises(PolicyError, match=r"^every-conv:2: not valid YAML"):
        parse_yaml("kinds: [conv\n", "every-conv", error=PolicyError, what="policy")
