"""A search's results, from its study alone: ``report.md``, ``trials.csv``, ``pareto.csv``, ``pareto.png``, ``best/``.

Every trial is a row of ``trials.csv`` (its point, what it adds, its error, its state and why). The
Pareto front is taken over the study's objectives (over top-1 error and parameters added for a
single-objective study); each of its points is written as a policy file, ``best/trial-NNNN.yaml``,
that ``se-inject apply BACKBONE --policy best/trial-NNNN.yaml`` applies. The report says, per Pareto
point, which stages carry SE with which r, and how its error compares with the base policy's
(``paper``): outside seed noise or not when the search trained each point with several seeds
(:class:`trainers.compare.report.Difference`, twice the standard error of the difference).

The report needs no model: what it shows is in the study (trial parameters and user attributes, the
study's description), so ``se-inject report DIR`` rebuilds it, and so does a machine whose workers
joined another's study.

    >>> pareto([(1.0, 5), (2.0, 3), (1.5, 6), (3.0, 3)])
    [0, 1]
"""
from __future__ import annotations

import csv
import datetime
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from se_inject.files import write_atomically

from ..compare.report import Difference
from .model import decode
from .spec import OBJECTIVES, SearchSpec
from .storage import JOURNAL, redact

__all__ = ["write_report", "pareto", "trial_rows", "COST_COLUMNS"]

#: objective -> (csv column, axis label)
COST_COLUMNS = {"params": ("params_added", "parameters added by SE"), "macs": ("macs_added", "MACs added by SE per image"),
                "latency": ("latency_ms", "forward latency (ms)")}
BEST = "best"


def pareto(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (all objectives minimised)."""
    front = []
    for i, p in enumerate(points):
        dominated = any(all(a <= b for a, b in zip(q, p)) and any(a < b for a, b in zip(q, p))
                        for j, q in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def trial_rows(study: Any, description: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trial: its point, costs, error and state."""
    dims, refs = description["dims"], description["references"]
    trials = study.get_trials(deepcopy=False)
    # references are queued trials marked as such; on a grid (nothing queued) they are the grid's points
    queued = any("reference" in t.user_attrs for t in trials)
    retried_numbers = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    rows = []
    for t in trials:
        point = decode(dims, t.params, description["ordinal"])
        reference = t.user_attrs.get("reference") or ("" if queued else
                                                      next((n for n, p in refs.items() if p == point), ""))
        errors = t.user_attrs.get("errors") or []
        retried = t.system_attrs.get("failed_trial")
        same = t.user_attrs.get("same_as")
        stale = ("no heartbeat for a minute: its worker is gone (Optuna's heartbeat); queued again"
                 if t.state.name == "FAIL" and t.number in retried_numbers else "")
        note = (t.user_attrs.get("fail_reason") or stale or t.user_attrs.get("infeasible") or t.user_attrs.get("pruned")
                or (f"retry of trial {retried}" if retried is not None else "")
                or (f"the point of trial {same}: its results, not trained again" if same is not None else ""))
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "reference": reference, **point,
            "params_added": t.user_attrs.get("params_added"), "macs_added": t.user_attrs.get("macs_added"),
            "latency_ms": t.user_attrs.get("latency_ms"),
            "top1_err": t.user_attrs.get("error") if t.state.name == "COMPLETE" else None,
            "errors": ";".join(f"{e:.2f}" for e in errors), "seconds": t.user_attrs.get("seconds"),
            "note": note, "folder": t.user_attrs.get("folder", ""), "policy": t.user_attrs.get("policy"),
            "same_as": same})
    return rows


def _placement(point: dict[str, Any], keys: dict[str, str]) -> str:
    """``stage0 r=8, stage2 r=16; off: stage1`` (and the searched gate/squeeze/init)."""
    on = [f"{n} r={v}" for n, v in point.items() if keys.get(n) == "r" and v != "off"]
    off = [n for n, v in point.items() if keys.get(n) == "r" and v == "off"]
    other = [f"{n} {v}" for n, v in point.items() if keys.get(n) != "r"]
    text = ", ".join(on) if on else "no SE"
    if on and off:
        text += f"; off: {', '.join(off)}"
    return text + (f" ({', '.join(other)})" if other else "")


def _fmt(value: Any, spec: str = ",") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    write_atomically(path, write)


def _plot(path: Path, complete: list[dict[str, Any]], front: list[dict[str, Any]], x_key: str, x_label: str,
          title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.scatter([r[x_key] for r in complete], [r["top1_err"] for r in complete], s=18, color="0.65",
               label="trials", zorder=2)
    line = sorted(front, key=lambda r: (r[x_key], r["top1_err"]))
    ax.step([r[x_key] for r in line], [r["top1_err"] for r in line], where="post", color="tab:orange", lw=1.5,
            zorder=3)
    ax.scatter([r[x_key] for r in line], [r["top1_err"] for r in line], s=30, color="tab:orange",
               label="Pareto front", zorder=4)
    for r in line:
        ax.annotate(str(r["trial"]), (r[x_key], r["top1_err"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    markers = {"baseline": ("s", "black")}
    for r in complete:
        if r["reference"]:
            marker, color = markers.get(r["reference"], ("*", "tab:red"))
            ax.scatter([r[x_key]], [r["top1_err"]], marker=marker, s=120 if marker == "*" else 60, color=color,
                       label=r["reference"], zorder=5)
    ax.set_xlabel(x_label)
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def _vs_reference(errors: list[float], base: list[float] | None) -> str:
    if not base or not errors:
        return "-"
    d = Difference.of(errors, base)
    if d.outside_noise is None:
        return f"{d.delta:+.2f} (one seed: noise unknown)"
    return f"{d.delta:+.2f} ({'outside' if d.outside_noise else 'within'} seed noise, 2 SE = {d.two_se:.2f})"


def _errors(row: dict[str, Any]) -> list[float]:
    return [float(e) for e in row["errors"].split(";") if e] if row["errors"] else []


def write_report(out_dir: Path, study: Any, spec: SearchSpec, description: dict[str, Any],
                 storage_url: str | None = None) -> Path:
    """Write every result file of a search into ``out_dir``; returns report.md's path."""
    out_dir = Path(out_dir)
    rows = trial_rows(study, description)
    dims = list(description["dims"])
    keys = description["keys"]
    objectives = list(description["objectives"])
    columns = ["trial", "state", "reference", *dims, "params_added", "macs_added", "latency_ms", "top1_err", "errors",
               "seconds", "note", "folder"]
    _write_csv(out_dir / "trials.csv", rows, columns)

    # a trial that drew an already trained point carries that trial's results: one dot, one front entry
    complete = [r for r in rows if r["state"] == "complete" and r["top1_err"] is not None and r["same_as"] is None]
    cost_objectives = [o for o in objectives if o != "error"]
    front_keys = ["top1_err" if o == "error" else COST_COLUMNS[o][0] for o in objectives]
    if len(objectives) == 1:   # one objective: the front of error against what the points add
        front_keys = ["top1_err", "params_added"]
    front = [complete[i] for i in pareto([[r[k] for k in front_keys] for r in complete])]
    x_key, x_label = COST_COLUMNS[cost_objectives[0] if cost_objectives else "params"]
    front.sort(key=lambda r: (r[x_key], r["top1_err"]))

    best = out_dir / BEST
    best.mkdir(exist_ok=True)
    for old in best.glob("trial-*.yaml"):   # the front of an earlier report
        old.unlink()
    for r in front:
        name = f"trial-{r['trial']:04d}{'-' + r['reference'] if r['reference'] else ''}.yaml"
        r["policy_file"] = f"{BEST}/{name}"
        head = (f"# Pareto point of search {spec.name!r}: trial {r['trial']}, {_placement(_point(r, dims), keys)}\n"
                f"# top-1 error {r['top1_err']:.2f}%, +{r['params_added']:,} params, +{r['macs_added']:,} MACs "
                f"({spec.backbone}, input {'x'.join(map(str, description['input_size']))})\n"
                f"# se-inject apply {spec.backbone} --policy {r['policy_file']} -o model.pt\n")
        text = head + yaml.safe_dump(r["policy"], sort_keys=False, default_flow_style=None)
        write_atomically(best / name, lambda tmp, text=text: Path(tmp).write_text(text))
    _write_csv(out_dir / "pareto.csv", front, ["trial", "reference", *dims, "params_added", "macs_added", "latency_ms",
                                               "top1_err", "errors", "policy_file"])
    title = f"{spec.backbone}: {len(complete)} trained points, front {len(front)}"
    _plot(out_dir / "pareto.png", complete, front, x_key, x_label, title)

    report = out_dir / "report.md"
    text = _markdown(out_dir, spec, description, rows, complete, front, x_key, storage_url)
    write_atomically(report, lambda tmp: Path(tmp).write_text(text))
    return report


def _point(row: dict[str, Any], dims: list[str]) -> dict[str, Any]:
    return {d: row[d] for d in dims if d in row}


def _markdown(out_dir: Path, spec: SearchSpec, description: dict[str, Any], rows: list[dict[str, Any]],
              complete: list[dict[str, Any]], front: list[dict[str, Any]], x_key: str, storage_url: str | None) -> str:
    dims, keys = list(description["dims"]), description["keys"]
    base_name = next((n for n in description["references"] if n != "baseline"), "paper")
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    infeasible = sum(1 for r in rows if r["state"] == "pruned" and r["note"].startswith("max_"))
    base_rows = [r for r in complete if r["reference"] == base_name]
    base_errors = _errors(base_rows[0]) if base_rows else None
    command = (out_dir / "command.txt").read_text().strip() if (out_dir / "command.txt").exists() else \
        f"se-inject search {spec.source} -o {out_dir}"
    storage = redact(storage_url) if storage_url else f"{out_dir / JOURNAL} (Optuna journal file)"
    seeds = spec.seeds
    lines = [
        f"# Search: {spec.name}", "",
        f"`{command}`", "",
        f"- backbone **{spec.backbone}** (input {'x'.join(map(str, description['input_size']))}), base policy "
        f"`{description['base_policy']}`; trainer config `{spec.config}` with "
        f"{', '.join(spec.overrides) or 'no overrides'}",
        f"- objectives (minimised): {', '.join(f'{o} ({OBJECTIVES[o]})' for o in description['objectives'])}",
        f"- sampler {spec.sampler_name}, pruner {spec.pruner.name}; seeds {list(seeds)}; budget "
        f"{description['budget']} trials (the references included)",
        "- trials: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        + (f" ({infeasible} of the pruned infeasible: over a limit, never trained)" if infeasible else ""),
        f"- study `{spec.study}` in {storage}: `optuna-dashboard "
        f"{redact(storage_url) if storage_url else out_dir / JOURNAL}` browses it",
        f"- written {datetime.datetime.now().isoformat(timespec='seconds')}", "",
        "## Space", "", "```", description["space_table"], "```", "",
        "## References", "",
        "| reference | placement | params added | MACs added | top-1 error (%) | state |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["reference"]:
            lines.append(f"| {r['reference']} (trial {r['trial']}) | {_placement(_point(r, dims), keys)} | "
                         f"{_fmt(r['params_added'])} | {_fmt(r['macs_added'])} | {_fmt(r['top1_err'], '.2f')} | "
                         f"{r['state']} |")
    axis = {"params_added": "parameters added", "macs_added": "MACs added", "latency_ms": "forward latency"}[x_key]
    lines += ["", f"## Pareto front: top-1 error against {axis}", "",
              f"Per point: the stages (dimensions) that carry SE and their r, and the error difference to "
              f"`{base_name}` (points; " + ("mean over the seeds, outside or within seed noise: twice the standard "
                                            "error of the difference" if len(seeds) > 1 else
                                            "one seed per point: ask for seeds to know the noise") + ").", "",
              "| trial | SE placement | params added | MACs added | latency (ms) | top-1 error (%) | "
              f"vs {base_name} | policy file |",
              "|---:|---|---:|---:|---:|---:|---|---|"]
    for r in front:
        err = r["top1_err"]
        errs = _errors(r)
        shown = f"{err:.2f}" + (f" ± {statistics.stdev(errs):.2f}" if len(errs) > 1 else "")
        versus = "(itself)" if r["reference"] == base_name else _vs_reference(errs, base_errors)
        lines.append(f"| {r['trial']}{' ' + r['reference'] if r['reference'] else ''} | "
                     f"{_placement(_point(r, dims), keys)} | {_fmt(r['params_added'])} | {_fmt(r['macs_added'])} | "
                     f"{_fmt(r['latency_ms'], '.3f')} | {shown} | {versus} | [{r['policy_file']}]({r['policy_file']}) |")
    lines += ["", "![Pareto front](pareto.png)", "",
              f"Apply a point: `se-inject apply {spec.backbone} --policy {out_dir / (front[0]['policy_file'] if front else 'best/trial-NNNN.yaml')} "
              "-o model.pt` (the plan it prints adds the params of the table).", "",
              "Every trial, with its point, costs, error and state: [trials.csv](trials.csv); the front: "
              "[pareto.csv](pareto.csv)."]
    failed = [r for r in rows if r["state"] == "fail"]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- trial {r['trial']}: {r['note']}" for r in failed]
    return "\n".join(lines) + "\n"
