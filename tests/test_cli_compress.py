"""se-inject prune / fold: the commands as users type them, on a run directory like `se-inject train` leaves."""
import pytest
import torch
from safetensors.torch import save_file

from se_inject.accounting import count_macs
from se_inject_cli import main
from trainers.config import dump_config, load_config
from trainers.factory import build_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """run.yaml + model.safetensors of an SE-ResNet-8 on Fashion-MNIST (untrained weights: the plumbing is tested)."""
    out = tmp_path_factory.mktemp("run")
    cfg = load_config("fashion-mnist", ["model.name=cifar_resnet8", "model.se={policy: paper, r: 4}",
                                        "model.num_classes=10", "model.in_chans=1", "data.input_size=[1, 28, 28]",
                                        "data.mean=[0.286]", "data.std=[0.353]", "data.batch_size=32",
                                        "data.eval_batch_size=64", f"run.out_dir={out}"])
    torch.manual_seed(0)
    model = build_model(cfg, 10, (1, 28, 28))
    (out / "run.yaml").write_text(dump_config(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    return out


@pytest.mark.slow
def test_prune_saves_a_smaller_model(run_dir, tmp_path, capsys):
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(run_dir), "--amount", "0.5", "--calibration-batches", "1", "--eval-batches", "1",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "by excitation: MACs" in text and "SE_0_1 16->" in text and "validation top-1:" in text
    small = torch.load(out, weights_only=False)
    full = build_model(load_config(str(run_dir / "run.yaml")), 10, (1, 28, 28))
    assert count_macs(small, (1, 28, 28)) / count_macs(full, (1, 28, 28)) == pytest.approx(0.5, abs=0.02)
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow
def test_fold_prints_the_plan_and_saves_with_o(run_dir, tmp_path, capsys):
    assert main(["fold", str(run_dir), "--tolerance", "1", "--calibration-batches", "1"]) == 0
    text = capsys.readouterr().out
    assert "3 of 3 SE blocks folded" in text and "nothing written" in text
    out = tmp_path / "folded.pt"
    assert main(["fold", str(run_dir), "--tolerance", "1", "--calibration-batches", "1", "--eval-batches", "1",
                 "-o", str(out)]) == 0
    assert type(torch.load(out, weights_only=False).layer1[0].se).__name__ == "ConstantScale"


@pytest.mark.parametrize("argv, message", [
    (["prune", "{run}", "--amount", "1.5", "-o", "x.pt"], "CompressError: amount=1.5 is not a share of MACs"),
    (["fold", "{run}", "--tolerance", "-0.1"], "CompressError: tolerance=-0.1 is not a gate standard deviation"),
    (["prune", "{run}", "--amount", "0.5", "-o", "/nonexistent/dir/x.pt"], "does not exist; create it"),
    (["fold", "/nonexistent", "--tolerance", "0.1"], "need run.yaml and model.safetensors"),
])
def test_bad_input_is_one_line_exit_2(run_dir, argv, message, capsys):
    assert main([a.format(run=run_dir) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
