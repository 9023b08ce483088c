"""End to end with the SE engine: model.se makes the trainer call se_inject.apply; the SE variant trains and resumes."""
from __future__ import annotations

import pytest
import torch

import se_inject
from trainers import load_config, train

pytestmark = pytest.mark.xfail(not hasattr(se_inject, "apply"), strict=True,
                               reason="se_inject.apply is not on this branch yet (the engine issue)")


def _cfg(out, epochs, *extra):
    return load_config(None, [f"run.out_dir={out}", f"run.epochs={epochs}", "run.progress=false", "run.deterministic=true",
                              "data.dataset=synthetic", "data.synthetic.train_samples=256", "data.synthetic.val_samples=32",
                              "data.synthetic.size=[1,16,16]", "data.batch_size=32", "data.workers=0",
                              "model.name=cifar_resnet8", "model.se.policy=paper", "model.se.r=4",
                              "sched.name=constant", "optim.lr=0.2", "optim.lr_base_batch=null", "checkpoint.every_steps=3", *extra])


def test_se_variant_trains_and_resumes(tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "se"
    first = train(_cfg(out, 1))
    se_blocks = [name for name, m in first.model.named_modules() if isinstance(m, se_inject.SqueezeExcite)]
    assert se_blocks == ["layer1.0.se", "layer2.0.se", "layer3.0.se"]
    weights = load_file(str(out / "model.safetensors"))
    assert weights["layer2.0.se.fc1.weight"].shape == (8, 32, 1, 1)  # 32 channels / r=4

    # the SE weights learned something: rebuild the untrained model with the same seed and compare
    torch.manual_seed(42)
    from trainers.factory import build_model
    untrained = build_model(_cfg(out, 1), num_classes=10, input_size=(1, 16, 16)).state_dict()
    assert not torch.equal(untrained["layer2.0.se.fc1.weight"], weights["layer2.0.se.fc1.weight"])
    assert first.history[-1]["train_loss"] < 2.2  # below chance (ln 10 = 2.30): it learns

    # a checkpoint of the SE model loads back into a freshly built SE model and training continues
    second = train(_cfg(out, 2, "checkpoint.resume=auto"))
    assert second.resumed_from.name == "step-00000008" and [r["epoch"] for r in second.history] == [0, 1]
    assert second.num_updates == 16
