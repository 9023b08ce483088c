"""A torchrun worker for test_trainer_ddp: trains through the public API, then saves this rank's weights.

    torchrun --nproc_per_node=2 tests/ddp_worker.py OUT_DIR --set key=value ...
"""
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from trainers import load_config, train

out = Path(sys.argv[1])
overrides = [a for a in sys.argv[2:] if a != "--set"]
result = train(load_config(None, [f"run.out_dir={out}", *overrides]))
state = {k: v.detach().contiguous() for k, v in result.model.state_dict().items()}
save_file(state, str(out / f"rank{os.environ['RANK']}.safetensors"))
print(f"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}: {result.num_updates} updates")
