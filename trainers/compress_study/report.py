"""The study's report: a table with ± over seeds, two PNGs and a verdict in plain words.

A criterion *beats* another at one setting when its mean accuracy is higher by more than two standard
errors of the difference (``sqrt(s1²/n1 + s2²/n2)``, sample standard deviations over seeds): the
rule ``se-inject compare`` uses for "within noise".

    >>> verdict([90.1, 90.3, 90.2], [89.0, 89.2, 89.1])
    ('better', 1.1, 0.08)
    >>> verdict([90.1, 89.0], [89.9, 90.0])[0]
    'within noise'
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from se_inject._extras import require

from .spec import StudySpec

__all__ = ["write_report", "verdict", "collect"]


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def verdict(a: list[float], b: list[float]) -> tuple[str, float, float]:
    """``('better' | 'worse' | 'within noise', mean(a) - mean(b), standard error of that difference)``."""
    (ma, sa), (mb, sb) = _mean_std(a), _mean_std(b)
    se = math.sqrt(sa ** 2 / len(a) + sb ** 2 / len(b))
    diff = ma - mb
    word = "within noise" if abs(diff) <= 2 * se else ("better" if diff > 0 else "worse")
    return word, round(diff, 2), round(se, 2)


def collect(spec: StudySpec) -> list[dict[str, Any]]:
    """The results of the study's jobs that have run (other files in the folder, from an earlier
    version of the file, are left out)."""
    from .jobs import plan_jobs, result_path
    out = []
    for job in plan_jobs(spec):
        path = result_path(Path(spec.out_dir), job)
        for p in (path, path.with_suffix(".failed.json")):
            if p.exists():
                out.append(json.loads(p.read_text()))
                break
    return out


def _pm(xs: list[float]) -> str:
    m, s = _mean_std(xs)
    return f"{m:.2f} ± {s:.2f}" if len(xs) > 1 else f"{m:.2f}"


def write_report(spec: StudySpec, dest: Path | None = None, command: str | None = None) -> Path:
    """``<dest>.md``, ``<dest>_results.csv``, ``<dest>_macs.png``, ``<dest>_latency.png`` (default: out_dir/report);
    ``command`` (the line that ran the study) is quoted at the top."""
    require("train", for_="trainers.compress_study.write_report")   # the figures are matplotlib's
    root = Path(spec.out_dir)
    dest = Path(dest) if dest is not None else root / "report"
    dest.parent.mkdir(parents=True, exist_ok=True)
    results = collect(spec)
    _write_csv(results, dest.with_name(dest.name + "_results.csv"))
    latency = {b: json.loads((root / b / "latency.json").read_text()) if (root / b / "latency.json").exists() else {}
               for b in spec.backbones}
    refs = {r["backbone"]: r for r in results if r.get("kind") == "reference" and "error" not in r}
    prunes = defaultdict(list)
    for r in results:
        if r.get("kind") == "prune" and "error" not in r:
            prunes[(r["backbone"], r["amount"], r["criterion"])].append(r)
    folds = [r for r in results if r.get("kind") == "fold" and "error" not in r]
    failed = [r for r in results if "error" in r]

    lines = [f"# {spec.name}", ""]
    lines += _setup_lines(spec, root, results, command)
    lines += ["", "## Pruning: accuracy after fine-tuning (top-1 %, mean ± std over seeds)", "",
              "| backbone | MACs removed (target) | criterion | after pruning | after fine-tuning | MACs (M) | params (k) "
              "| latency (ms) |", "|---|---|---|---|---|---|---|---|"]
    for b in spec.backbones:
        ref = refs.get(b)
        if ref:
            lines.append(f"| {b} | 0 (unpruned) | — | — | {ref['accuracy']:.2f} | {ref['macs'] / 1e6:.2f} | "
                         f"{ref['params'] / 1e3:.1f} | {latency[b].get('base', float('nan')):.2f} |")
        for a in spec.prune.amounts:
            for c in spec.prune.criteria:
                rs = prunes.get((b, a, c), [])
                if not rs:
                    continue
                removed = statistics.fmean(r["macs_removed"] for r in rs)
                lines.append(f"| {b} | {100 * removed:.1f} % ({100 * a:.0f} %) | {c} | {_pm([r['accuracy_pruned'] for r in rs])} "
                             f"| **{_pm([r['accuracy'] for r in rs])}** (n={len(rs)}) | {rs[0]['macs'] / 1e6:.2f} | "
                             f"{rs[0]['params'] / 1e3:.1f} | {latency[b].get(f'prune-{a:.2f}', float('nan')):.2f} |")
    lines += ["", "## Excitation vs magnitude (and random)", ""]
    lines += _verdict_lines(spec, prunes)
    lines += ["", "## Folding near-constant SE blocks (no fine-tuning)", "",
              "| backbone | tolerance | blocks folded into the layer before | kept as a constant scale | accuracy | "
              "MACs (M) | latency (ms) |", "|---|---|---|---|---|---|---|"]
    for r in folds:
        b = r["backbone"]
        ref = refs.get(b, {})
        delta = f" ({r['accuracy'] - ref['accuracy']:+.2f})" if ref else ""
        ms = latency[b].get(f"fold-{r['tolerance']:g}", float("nan"))
        lines.append(f"| {b} | {r['tolerance']:g} | {len(r['folded'])} | {len(r['constant'])} | {r['accuracy']:.2f}{delta} "
                     f"| {r['macs'] / 1e6:.3f} | {ms:.2f} |")
    for r in folds:
        lines += ["", f"`se_inject.fold_plan` of {r['backbone']} at tolerance {r['tolerance']:g}:", "", "```",
                  r["plan"], "```"]
    for b, ref in refs.items():
        lines += ["", f"Excitation statistics of {b} (calibration set, seed {spec.seeds[0]}):", "", "```",
                  ref["summary"], "```"]
    if failed:
        lines += ["", "## Failed jobs", ""] + [f"- {r['backbone']} {r['job']}: {r['error']}" for r in failed]
    macs_png, lat_png = dest.with_name(dest.name + "_macs.png"), dest.with_name(dest.name + "_latency.png")
    _curves(spec, refs, prunes, folds, latency, macs_png, lat_png)
    lines += ["", f"![accuracy vs MACs]({macs_png.name})", "", f"![accuracy vs latency]({lat_png.name})", ""]
    md = dest.with_name(dest.name + ".md")
    md.write_text("\n".join(lines))
    return md


def _versions() -> str:
    import datetime
    import os
    import platform

    import torch
    try:
        import torch_pruning
        tp = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        tp = "not installed"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"Written {date}; Python {platform.python_version()}, torch {torch.__version__}, torch-pruning {tp}, "
            f"{platform.machine()} with {os.cpu_count()} CPU cores.")


def _setup_lines(spec: StudySpec, root: Path, results: list[dict[str, Any]], command: str | None) -> list[str]:
    seconds, n_sessions = 0.0, 0
    sessions = root / "sessions.jsonl"
    if sessions.exists():
        runs = [json.loads(line) for line in sessions.read_text().splitlines() if line.strip()]
        seconds, n_sessions = sum(r["seconds"] for r in runs), len(runs)
    job_seconds = sum(r.get("seconds", 0.0) for r in results)
    base = ", ".join(f"{r['backbone']} {r['seconds'] / 60:.0f} min" for r in results
                     if r.get("kind") == "base" and "seconds" in r)
    ft = spec.finetune
    ft_data = f"{ft.batches_per_epoch} batches of {ft.batch_size}" if ft.batches_per_epoch else "the training set"
    se = ", ".join(f"{k} {v}" for k, v in spec.se_settings.items())
    sets = ", ".join(f"{k}={v}" for k, v in spec.train.set.items())
    return [
        *([f"Command: `{command}`", ""] if command else []),
        _versions(),
        "",
        f"Base models: {', '.join(spec.backbones)} with SE ({se}), trained once by the trainer "
        f"(`{spec.train.config}`, {sets}). Pruned by `se_inject.prune` to each MAC target with each criterion "
        f"(excitation: mean gate over {spec.calibration.batches} calibration batches of {spec.calibration.batch_size} "
        f"training images; magnitude: Torch-Pruning's L1 `MagnitudeImportance(p=1)`; random), then fine-tuned "
        f"{ft.epochs} epoch(s) of {ft_data} (SGD, lr {ft.lr} cosine to 0), seeds {', '.join(map(str, spec.seeds))}. "
        f"Accuracy on the first {spec.measure.eval_images or 'all'} Fashion-MNIST test images; latency: batch 1, "
        f"one CPU thread, median of {spec.measure.latency_rounds} interleaved rounds of {spec.measure.latency_reps}. "
        f"A seed changes the calibration batches (excitation), the draw (random) and the fine-tuning data order; the "
        f"base model is the same for all seeds, so ± is the noise of pruning and fine-tuning, not of training.",
        "",
        f"Wall time of the study: {seconds / 60:.0f} min over {n_sessions} session(s) that ran to the end "
        f"({spec.parallel} jobs at a time); its jobs' own times add up to {job_seconds / 60:.0f} min"
        + (f" (base training: {base})." if base else "."),
    ]


def _verdict_lines(spec: StudySpec, prunes: dict) -> list[str]:
    out = ["| backbone | MACs removed | excitation − magnitude | excitation − random | magnitude − random |",
           "|---|---|---|---|---|"]
    tally: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for b in spec.backbones:
        for a in spec.prune.amounts:
            acc = {c: [r["accuracy"] for r in prunes.get((b, a, c), [])] for c in spec.prune.criteria}
            cells = []
            for x, y in (("excitation", "magnitude"), ("excitation", "random"), ("magnitude", "random")):
                if acc.get(x) and acc.get(y):
                    word, diff, se = verdict(acc[x], acc[y])
                    cells.append(f"{diff:+.2f} ± {se:.2f} ({word})")
                    tally[(x, y)][word] += 1
                else:
                    cells.append("—")
            out.append(f"| {b} | {100 * a:.0f} % | " + " | ".join(cells) + " |")
    versus = {"magnitude": "L1 magnitude", "random": "random pruning"}
    said = []
    for other, name in versus.items():
        t = tally.get(("excitation", other))
        if t:
            noise = "outside seed noise (difference > 2 standard errors)" if not said else "outside noise"
            said.append(f"beats {name} {noise} in {t['better']} of "
                        f"{sum(t.values())} settings, is worse in {t['worse']}, and is within noise in "
                        f"{t['within noise']}")
    if said:
        out += ["", "**Verdict**: after the same fine-tuning, the excitation criterion " + "; it ".join(said) + "."]
    return out


def _write_csv(results: list[dict[str, Any]], path: Path) -> None:
    keys = ["backbone", "kind", "job", "criterion", "amount", "seed", "tolerance", "macs", "params", "macs_removed",
            "accuracy_pruned", "accuracy", "prune_s", "finetune_s", "seconds", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in results:
            w.writerow(r)


def _curves(spec: StudySpec, refs: dict, prunes: dict, folds: list, latency: dict, macs_png: Path, lat_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"excitation": "tab:red", "magnitude": "tab:blue", "random": "tab:gray"}
    for png, xkey in ((macs_png, "macs"), (lat_png, "latency")):
        fig, axes = plt.subplots(1, len(spec.backbones), figsize=(5.5 * len(spec.backbones), 4), squeeze=False)
        for ax, b in zip(axes[0], spec.backbones):
            lat = latency.get(b, {})

            def x_of(key: str, macs: float) -> float:
                return macs / 1e6 if xkey == "macs" else lat.get(key, float("nan"))
            for c in spec.prune.criteria:
                pts = []
                for a in spec.prune.amounts:
                    rs = prunes.get((b, a, c), [])
                    if rs:
                        m, s = _mean_std([r["accuracy"] for r in rs])
                        pts.append((x_of(f"prune-{a:.2f}", rs[0]["macs"]), m, s))
                if pts:
                    xs, ms, ss = zip(*pts)
                    ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, color=colors.get(c), label=f"prune: {c}")
            if b in refs:
                ax.plot([x_of("base", refs[b]["macs"])], [refs[b]["accuracy"]], "k*", ms=12, label="SE model, unpruned")
            fx = [(x_of(f"fold-{r['tolerance']:g}", r["macs"]), r["accuracy"], r["tolerance"]) for r in folds
                  if r["backbone"] == b]
            if fx:
                ax.plot([p[0] for p in fx], [p[1] for p in fx], "g^", ms=9, label="fold (tolerances)")
            ax.set_title(b)
            ax.set_xlabel("MACs (M) at 1x28x28" if xkey == "macs" else "batch-1 CPU latency (ms, 1 thread)")
            ax.set_ylabel("top-1 accuracy (%), after fine-tuning")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
