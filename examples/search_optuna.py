"""se-inject inside your own Optuna study: the search space is ours, the loop, the training and the study yours.

    python examples/search_optuna.py                       # 12 trials, ResNet-8 on a Fashion-MNIST subset
    python examples/search_optuna.py --trials 30 --train-images 10000 --storage sqlite:///search.db

Each trial draws a point of the space (each stage off or an r), applies it to the plain backbone and
trains it with a plain PyTorch loop, yours to replace. The parameter budget is an Optuna constraint:
``space.suggest`` prunes a point over it before anything trains (Optuna >= 5's samplers read the
constraint the trial carries; for Optuna < 5 pass ``constraints_func=space.constraints_func``). TPE,
NSGA-II, random, grid (``GridSampler(space.grid())``) and, with ``ordinal=True``, CMA-ES all work:
the space is made of ``trial.suggest_*`` calls.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import se_inject  # noqa: E402
from backbones import create_backbone  # noqa: E402
from se_inject.api import NothingInserted  # noqa: E402
from se_inject.search import space  # noqa: E402
from trainers.data.fashion_mnist import DEFAULT_ROOT, MEAN, STD, FashionMNIST  # noqa: E402


def load(root: str, train_images: int, val_images: int) -> tuple[torch.Tensor, ...]:
    """A fixed subset of Fashion-MNIST as float tensors (the first N images of each split)."""
    def tensors(train: bool, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = FashionMNIST(root, train=train)
        x = torch.stack([ds[i][0] for i in range(n)]).float().div_(255).sub_(MEAN[0]).div_(STD[0])
        y = torch.tensor([ds[i][1] for i in range(n)])
        return x, y
    return (*tensors(True, train_images), *tensors(False, val_images))


def train_and_eval(model: torch.nn.Module, data: tuple[torch.Tensor, ...], epochs: int, seed: int = 0) -> float:
    """Your training loop: here SGD on the subset, then the top-1 error (%) on the validation images."""
    x, y, xv, yv = data
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        wrong = sum((model(xb).argmax(1) != yb).sum().item() for xb, yb in zip(xv.split(256), yv.split(256)))
    return 100.0 * wrong / len(yv)


def main(argv: list[str] | None = None) -> optuna.Study:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--max-params-added", type=int, default=1500, help="the constraint: SE may add at most this many")
    p.add_argument("--data", default=DEFAULT_ROOT, help="the Fashion-MNIST folder")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (default: in memory)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    base = create_backbone("cifar_resnet8", in_chans=1, num_classes=10)
    s = space(base, r_choices=(4, 8, 16, 32), input_size=(1, 28, 28), max_params_added=args.max_params_added)
    print(s)
    data = load(args.data, args.train_images, args.val_images)

    def objective(trial: optuna.Trial) -> float:
        policy = s.suggest(trial)                       # over the budget: pruned here, not trained
        model = se_inject.apply(base, s.plan(policy))   # a copy of base with the point's blocks (no new trace)
        return train_and_eval(model, data, args.epochs)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=NothingInserted)    # the all-off point is the plain net: no block
    extra = {} if hasattr(optuna.trial.Trial, "set_constraint") else {"constraints_func": s.constraints_func}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=4, **extra),
                                storage=args.storage)
    study.enqueue_trial({d.name: 16 for d in s.dims})               # the paper's placement first, as a reference
    study.optimize(objective, n_trials=args.trials)

    print(f"\n{'trial':>5}  {'state':8}  {'point':40}  {'params added':>12}  {'top-1 error':>11}")
    for t in study.trials:
        err = f"{t.value:.2f}%" if t.value is not None else "-"
        print(f"{t.number:>5}  {t.state.name.lower():8}  {t.user_attrs.get('point', ''):40}  "
              f"{t.user_attrs.get('params_added', 0):>12,}  {err:>11}")
    best = study.best_trial
    print(f"best: trial {best.number}, {best.user_attrs['point']}: {best.value:.2f}% with "
          f"+{best.user_attrs['params_added']:,} params (limit {args.max_params_added:,})")
    return study


if __name__ == "__main__":
    main()
