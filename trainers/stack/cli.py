"""``python -m trainers.stack``: K runs of one config, each ``--member`` naming what is its own.

    $ python -m trainers.stack --config fashion-mnist --set run.epochs=30 --resume auto \\
          --member run.seed=0 run.out_dir=runs/s0 --member run.seed=1 run.out_dir=runs/s1 \\
          --outcome runs/group.json

``--set`` applies to every run, ``--member KEY=VALUE ...`` to one (its seed and ``run.out_dir`` at
least). Each run writes what ``python -m trainers.train`` would write in its ``run.out_dir``;
``--outcome`` also writes ``{out_dir: {"state": "done" | "failed" | "interrupted", "error": ...}}``.

Exit status (:class:`trainers.errors.ExitStatus`): 0 when every run finished; 3 when some stopped on a
non-finite step (the others finished); 75 when a signal stopped the group (every run checkpointed);
2 for a config, data or checkpoint error (one line).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=None, help="YAML config or recipe name shared by every run")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every run (repeatable)")
    parser.add_argument("--member", "-m", dest="members", action="append", nargs="+", default=[],
                        metavar="KEY=VALUE", help="one run: its own overrides (run.seed, run.out_dir, ...); repeat per run")
    parser.add_argument("--resume", default=None, metavar="auto|PATH", help="checkpoint.resume of every run")
    parser.add_argument("--outcome", default=None, help="write each run's outcome to this JSON file")


def main(argv: list[str] | None = None) -> int:
    from se_inject.errors import SEInjectError
    from se_inject.files import write_atomically

    from ..config import load_config
    from ..errors import ExitStatus, Preempted

    parser = argparse.ArgumentParser(prog="python -m trainers.stack", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    outcome: dict[str, dict[str, str]] = {}
    try:
        if not args.members:
            raise SEInjectError("give each run with --member KEY=VALUE ... (at least its run.out_dir)")
        shared = list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume is not None else [])
        cfgs = [load_config(args.config, [*shared, *member]) for member in args.members]
        from .group import train_group
        try:
            outcomes = train_group(cfgs)
            status = ExitStatus.OK if all(o.state == "done" for o in outcomes) else ExitStatus.NONFINITE
            outcome = {str(o.out_dir): o.to_json() for o in outcomes}
        except Preempted as e:
            print(f"Preempted: {e}", file=sys.stderr, flush=True)
            status = ExitStatus.PREEMPTED
            outcome = {str(c.run.out_dir): {"state": "interrupted", "error": f"Preempted: {e}"} for c in cfgs}
        for path, o in outcome.items():
            if o["state"] == "failed":
                print(f"{path}: {o['error']}", file=sys.stderr, flush=True)
    except SEInjectError as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr, flush=True)
        status = ExitStatus.ERROR
    if args.outcome and outcome:
        Path(args.outcome).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(Path(args.outcome), lambda tmp: Path(tmp).write_text(json.dumps(outcome, indent=1)))
    return int(status)
