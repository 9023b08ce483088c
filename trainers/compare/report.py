"""A comparison's report: ``report.md`` (paper Table 2 / Table 5 style), ``results.csv``, curve PNGs.

    se-inject report runs/compare/fashion-mnist        # rebuild from the run directories

Errors are the last epoch's top-1 / top-5 validation errors (%), mean ± std over seeds, with the
difference to the baseline (same backbone) in brackets; ``≈`` marks a difference within noise
(smaller than twice its standard error over seeds). Parameters, MACs, model size and inference
latency are measured on the variant's model as built from its ``run.yaml``.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import platform
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from se_inject._extras import require

from .runner import ERROR, META, RunState, status_of

__all__ = ["collect", "write_report", "RunRecord", "Difference"]


@dataclass
class RunRecord:
    out_dir: Path
    backbone: str
    variant: str
    se: dict[str, Any] | None
    seed: int
    state: RunState
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    order: int = 0            # the variant's position in the comparison file

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def collect(root: Path) -> list[RunRecord]:
    """Every run directory under ``root`` (those holding a ``compare.json``)."""
    records = []
    for meta_path in sorted(root.rglob(META)):
        d = meta_path.parent
        meta = json.loads(meta_path.read_text())
        hist_path = d / "metrics.jsonl"
        history = [json.loads(x) for x in hist_path.read_text().splitlines() if x.strip()] if hist_path.exists() else []
        error = (d / ERROR).read_text().splitlines()[0] if (d / ERROR).exists() else ""
        records.append(RunRecord(d, meta["backbone"], meta["variant"], meta.get("se"), int(meta["seed"]),
                                 status_of(d), history, error, int(meta.get("order", 1 << 30))))
    return sorted(records, key=lambda r: (r.order, r.variant, r.seed))


def _mean_std(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


def _fmt_err(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if not math.isnan(std) else "")


@dataclass(frozen=True)
class Difference:
    """A variant's mean minus its baseline's, over seeds, and whether it stands out of seed noise:
    ``|delta| >= 2`` standard errors of the difference (Welch's, from each side's variance over seeds).

        >>> d = Difference.of([9.6, 9.5, 9.7], [9.2, 9.0, 9.4])
        >>> round(d.delta, 2), round(d.two_se, 2), d.outside_noise, d.verdict()
        (0.4, 0.26, True, 'higher error by 0.40 points: outside seed noise (2 SE = 0.26, 3 vs 3 seeds)')
        >>> Difference.of([9.3, 9.1], [9.2, 9.0]).verdict()
        'higher error by 0.10 points: within seed noise (2 SE = 0.28, 2 vs 2 seeds)'
    """
    delta: float
    two_se: float             # nan with fewer than 2 seeds on a side
    n: int
    n_base: int

    @classmethod
    def of(cls, v: list[float], b: list[float]) -> "Difference":
        d = statistics.fmean(v) - statistics.fmean(b)
        if len(v) < 2 or len(b) < 2:
            return cls(d, math.nan, len(v), len(b))
        return cls(d, 2 * math.sqrt(statistics.variance(v) / len(v) + statistics.variance(b) / len(b)), len(v), len(b))

    @property
    def outside_noise(self) -> bool | None:
        return None if math.isnan(self.two_se) else abs(self.delta) >= self.two_se

    def bracket(self) -> str:
        """``(−0.31)``, ``(−0.31 ≈)`` within noise, ``(−0.31, n=1)``: the table's form."""
        if self.outside_noise is None:
            return f" ({self.delta:+.2f}, n=1)"
        return f" ({self.delta:+.2f}{'' if self.outside_noise else ' ≈'})"

    def verdict(self) -> str:
        way = "lower" if self.delta < 0 else "higher"
        seeds = f"{self.n} vs {self.n_base} seeds"
        if self.outside_noise is None:
            return f"{way} error by {abs(self.delta):.2f} points: noise unknown ({seeds}; needs 2 seeds a side)"
        where = "outside" if self.outside_noise else "within"
        return f"{way} error by {abs(self.delta):.2f} points: {where} seed noise (2 SE = {self.two_se:.2f}, {seeds})"


def _delta(v: list[float], b: list[float]) -> str:
    """``(−0.31)`` or ``(−0.31 ≈)`` when within noise (|Δ| < 2 standard errors), ``(−0.31, n=1)``."""
    return Difference.of(v, b).bracket() if v and b else ""


def _verdicts(groups: dict[tuple[str, str], list[RunRecord]], baselines: dict[str, str]) -> list[str]:
    """Per backbone: does each SE variant's top-1 error differ from the baseline's beyond seed noise, which way?"""
    lines = []
    for backbone, base in baselines.items():
        b = [r.final["top1_err"] for r in groups[(backbone, base)] if r.state is RunState.DONE]
        parts = []
        for (bb, variant), runs in groups.items():
            v = [r.final["top1_err"] for r in runs if r.state is RunState.DONE]
            if bb != backbone or runs[0].se is None or not v or not b:
                continue
            d = Difference.of(v, b)
            better = "" if not d.outside_noise else (" **SE helps**" if d.delta < 0 else " **SE hurts**")
            parts.append(f"{variant}:{better} {d.verdict()}")
        if parts:
            lines.append(f"- **{backbone}** (vs {base}): " + "; ".join(parts))
    if not lines:
        return []
    return ["## SE vs the baseline, per backbone (top-1 error, last epoch)", "",
            "Outside seed noise: |Δ| at least twice the standard error of the difference of the means over seeds.", "",
            *lines, ""]


@dataclass
class ModelStats:
    params: int
    macs: int
    size_mb: float
    latency_ms: float


def _model_stats(run_dir: Path, latency_reps: int = 20) -> ModelStats | None:
    """Params, MACs, weight-file size and batch-1 CPU inference latency of a run's model."""
    from se_inject.accounting import count_macs, count_params
    from trainers.config import load_config
    from trainers.factory import build_model
    cfg_path = run_dir / "run.yaml"
    if not cfg_path.exists():
        return None
    cfg = load_config(str(cfg_path))
    size = tuple(cfg.data.input_size)
    model = build_model(cfg, cfg.model.num_classes, size).eval()
    weights = run_dir / "model.safetensors"
    size_mb = (weights.stat().st_size if weights.exists() else 4 * count_params(model)) / 1e6
    x = torch.randn(1, *size)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times = []
        for _ in range(latency_reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return ModelStats(count_params(model), count_macs(model, size), size_mb, 1000 * statistics.median(times))


def _curves(groups: dict[tuple[str, str], list[RunRecord]], backbone: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (b, variant), runs in groups.items():
        if b != backbone:
            continue
        for ax, key, title in ((axes[0], "train_loss", "training loss"), (axes[1], "top1_err", "validation top-1 error (%)")):
            series = [[r[key] for r in run.history if r.get(key) is not None] for run in runs if run.history]
            series = [s for s in series if s]
            if not series:
                continue
            n = min(map(len, series))
            epochs = list(range(1, n + 1))
            mean = [statistics.fmean(s[i] for s in series) for i in range(n)]
            line, = ax.plot(epochs, mean, marker="o" if n < 15 else None, ms=3, label=f"{variant} (n={len(series)})")
            if len(series) > 1:
                std = [statistics.stdev(s[i] for s in series) for i in range(n)]
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.15)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{backbone}: training curves (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _r_ablation(rows: list[dict[str, Any]], backbone: str) -> list[str]:
    """Table 5: error and model size per reduction ratio, 'original' = the baseline."""
    se_rows = [r for r in rows if r["backbone"] == backbone and r["se"] is not None and r["state"] is RunState.DONE]
    by_policy: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in se_rows:
        by_policy[str(r["se"].get("policy", "paper"))].append(r)
    policy, group = max(by_policy.items(), key=lambda kv: len({x["r"] for x in kv[1]}), default=(None, []))
    if len({r["r"] for r in group}) < 2:
        return []
    lines = [f"### r ablation ({backbone}, policy {policy}; paper Table 5)", "",
             "| r | top-1 err. | top-5 err. | params | size (MB) |", "|---|---|---|---|---|"]
    for r in sorted(group, key=lambda x: x["r"]):
        lines.append(f"| {r['r']:g} | {r['top1']} | {r['top5']} | {r['params']} | {r['size_mb']} |")
    base = next((r for r in rows if r["backbone"] == backbone and r["se"] is None and r["state"] is RunState.DONE), None)
    if base:
        lines.append(f"| original | {base['top1']} | {base['top5']} | {base['params']} | {base['size_mb']} |")
    return lines + [""]


def write_report(root: str | os.PathLike[str], *, title: str | None = None, latency: bool = True) -> Path:
    """Build ``report.md``, ``results.csv`` and ``curves_<backbone>.png`` in ``root``; returns report.md."""
    require("train", for_="trainers.compare.write_report")   # the curves are matplotlib figures
    root = Path(root)
    records = collect(root)
    if not records:
        from .spec import CompareError
        raise CompareError(f"{root}: no run directories (compare.json) found; run `se-inject compare` first")
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["backbone", "variant", "seed", "state", "epochs", "top1_err", "top5_err", "best_top1_err",
                    "train_loss", "val_loss", "img_per_s", "error"])
        for r in records:
            fin = r.final
            best = min((h["top1_err"] for h in r.history if h.get("top1_err") is not None), default="")
            imgs = statistics.fmean(h["img_per_s"] for h in r.history) if r.history else ""
            num = lambda v, spec=".4f": format(v, spec) if isinstance(v, (int, float)) else v
            w.writerow([r.backbone, r.variant, r.seed, r.state, len(r.history), num(fin.get("top1_err", "")),
                        num(fin.get("top5_err", "")), num(best), num(fin.get("train_loss", "")),
                        num(fin.get("val_loss", "")), num(imgs, ".1f"), r.error])
    groups: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        groups[(r.backbone, r.variant)].append(r)
    baselines = {b: v for (b, v), rs in groups.items() if rs[0].se is None}
    rows = []
    for (backbone, variant), runs in groups.items():
        ok = [r for r in runs if r.state is RunState.DONE]
        top1 = [r.final["top1_err"] for r in ok]
        top5 = [r.final["top5_err"] for r in ok]
        base_runs = [r for r in groups.get((backbone, baselines.get(backbone, "")), []) if r.state is RunState.DONE]
        stats = _model_stats(ok[0].out_dir) if ok else None
        speed = [statistics.fmean(h["img_per_s"] for h in r.history) for r in ok if r.history]
        failed = [r for r in runs if r.state is RunState.FAILED]
        se = runs[0].se
        rows.append({
            "backbone": backbone, "variant": variant, "se": se, "r": (se or {}).get("r", 16) if se else None,
            # the variant's row: done when a seed finished, failed when all that ended failed, else unfinished
            "state": RunState.DONE if ok else (RunState.FAILED if failed else runs[0].state),
            "top1": _fmt_err(*_mean_std(top1)) + ("" if se is None else _delta(top1, [r.final["top1_err"] for r in base_runs])),
            "top5": _fmt_err(*_mean_std(top5)) + ("" if se is None else _delta(top5, [r.final["top5_err"] for r in base_runs])),
            "params": f"{stats.params / 1e6:.3f} M" if stats else "-",
            "macs": f"{stats.macs / 1e9:.4f}" if stats else "-",
            "size_mb": f"{stats.size_mb:.2f}" if stats else "-",
            "speed": f"{statistics.fmean(speed):.0f}" if speed else "-",
            "latency": f"{stats.latency_ms:.2f}" if stats and latency else "-",
            "seeds": f"{len(ok)}/{len(runs)}",
            "error": failed[0].error if failed and not ok else (f"{len(failed)} seed(s) failed: {failed[0].error}" if failed else ""),
        })
    lines = [f"# {title or root.name}: baseline vs SE", "",
             f"- {len(records)} runs in `{root}`; built {datetime.date.today()} on {platform.machine()}, "
             f"{os.cpu_count()} CPU cores" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
             "- errors: last epoch's validation top-1 / top-5 error (%), mean ± std over seeds; "
             "(Δ to the baseline of the same backbone; ≈: within noise, |Δ| < 2 standard errors)",
             "- GMACs at the training input size; size: the weight file; latency: batch 1, eval, CPU, median of 20", "",
             "| backbone | variant | top-1 err. | top-5 err. | params | GMACs | size (MB) | train img/s | latency (ms) | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["state"] is RunState.FAILED:
            lines.append(f"| {r['backbone']} | {r['variant']} | **failed**: {r['error']} | | | | | | | {r['seeds']} |")
        else:
            lines.append(f"| {r['backbone']} | {r['variant']} | {r['top1']} | {r['top5']} | {r['params']} | {r['macs']} | "
                         f"{r['size_mb']} | {r['speed']} | {r['latency']} | {r['seeds']} |")
        if r["state"] is RunState.DONE and r["error"]:
            lines.append(f"| | | *{r['error']}* | | | | | | | |")
    lines.append("")
    lines += _verdicts(groups, baselines)
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        lines += _r_ablation(rows, backbone)
        png = _curves(groups, backbone, root / f"curves_{backbone.replace(':', '_')}.png")
        lines += [f"![training curves of {backbone}]({png.name})", ""]
    report = root / "report.md"
    report.write_text("\n".join(lines))
    return report
