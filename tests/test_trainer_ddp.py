"""trainers.distributed: a real 2-process gloo run under torchrun keeps both ranks' weights identical."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainer_runs import REPO, _free_port, assert_identical, env
from trainers.distributed import setup_distributed

pytestmark = pytest.mark.slow


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(REPO / "tests" / "ddp_worker.py"), str(out),
           "--set", "run.epochs=1", "--set", "run.progress=false", "--set", "run.device=cpu",
           "--set", "data.dataset=synthetic", "--set", "data.synthetic.train_samples=384",
           "--set", "data.synthetic.size=[3,16,16]", "--set", "data.synthetic.val_samples=40",
           "--set", "data.batch_size=16", "--set", "data.workers=0", "--set", "model.name=cifar_resnet8",
           "--set", "model.kwargs={drop_rate: 0.3}"]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "2 ranks (gloo, cpu) | global batch 32 = 16/rank x 2 x 1 accum" in p.stdout
    assert "rank 0 of 2: 12 updates" in p.stdout and "rank 1 of 2: 12 updates" in p.stdout

    from safetensors.torch import load_file
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert_identical(rank0, rank1, "rank0 vs rank1")  # parameters and (dist_bn-reduced) BN statistics
    assert_identical(rank0, load_file(str(out / "model.safetensors")), "rank0 vs saved")

    # they trained (each on its own shard, with its own dropout): not the initial weights
    from backbones import create_backbone
    torch.manual_seed(42)
    initial = create_backbone("cifar_resnet8", num_classes=10, in_chans=3).state_dict()
    assert not torch.equal(initial["fc.weight"], rank0["fc.weight"])
    assert not torch.equal(initial["layer1.0.bn1.running_mean"], rank0["layer1.0.bn1.running_mean"])


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    d = setup_distributed("cpu")
    assert (d.rank, d.world_size, d.backend, d.is_main, d.device.type) == (0, 1, None, True, "cpu")
    assert not torch.distributed.is_initialized()
