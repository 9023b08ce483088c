"""Which channels should go? Excitation vs L1-magnitude vs random pruning, and folding, in one command.

    python -m trainers.compress_study --config examples/fashion_mnist_compress.yaml
    python -m trainers.compress_study --config study.yaml --report-only        # rebuild the report

Each backbone is trained once with SE (the trainer), then for every MAC target, criterion and seed:
calibration statistics, ``se_inject.prune``, accuracy, fine-tuning, accuracy; and ``se_inject.fold``
at each tolerance. Jobs run ``parallel`` at a time, one CPU thread each; a finished job is never
redone, so a killed study continues where it stopped. The report (markdown table with ± over seeds,
accuracy-vs-MACs and accuracy-vs-latency PNGs, results CSV) says whether the excitation criterion
beats magnitude outside seed noise.

    spec.py     the YAML, validated by se_inject.schema (as a comparison file is)
    jobs.py     base training, reference, prune + fine-tune, fold, latency
    report.py   tables, curves and the verdict
"""
from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

from se_inject._extras import require

from .spec import StudySpec, load_spec

__all__ = ["run_study", "load_spec", "StudySpec"]


def run_study(spec: StudySpec, echo=print) -> list[dict]:
    """Run every job not done yet (``spec.parallel`` at a time), then the latency rounds; returns the results."""
    require("prune", for_="trainers.compress_study")
    require("train", for_="trainers.compress_study")
    from .jobs import plan_jobs, result_path
    root = Path(spec.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(spec)
    todo = [j for j in jobs if not result_path(root, j).exists()]
    echo(f"{spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run, {spec.parallel} at a time "
         f"-> {root}")
    start = time.time()
    results = []
    with multiprocessing.get_context("spawn").Pool(spec.parallel, maxtasksperchild=8) as pool:
        for job, result in zip(todo, pool.imap(_run, [(spec, j) for j in todo], chunksize=1)):
            status = f"FAILED: {result['error']}" if "error" in result else _line(result)
            echo(f"[{time.time() - start:7.0f}s] {job.backbone} {job.name}: {status}")
            results.append(result)
    _latency(spec, root, echo)
    with open(root / "sessions.jsonl", "a") as f:
        f.write(json.dumps({"start": start, "seconds": round(time.time() - start, 1), "jobs": len(todo)}) + "\n")
    return results


def _run(args: tuple) -> dict:
    from .jobs import run_job
    return run_job(*args)


def _line(r: dict) -> str:
    if "accuracy" not in r:
        return "done"
    extra = f", {r['accuracy_pruned']:.2f} % before fine-tuning" if "accuracy_pruned" in r else ""
    macs = f", {r['macs'] / 1e6:.2f} M MACs" if "macs" in r else ""
    return f"{r['accuracy']:.2f} %{extra}{macs}"


def _latency(spec: StudySpec, root: Path, echo) -> None:
    """Batch-1 CPU latency of each architecture: the base model, one pruned model per MAC target, each fold."""
    import torch

    from .jobs import Job, measure_latency, result_path
    for backbone in spec.backbones:
        out = root / backbone / "latency.json"
        models = {"base": root / backbone / "base.pt"}
        for a in spec.prune.amounts:
            for c in spec.prune.criteria:
                pt = result_path(root, Job("prune", backbone, c, a, spec.seeds[0])).with_suffix(".pt")
                if pt.exists():
                    models[f"prune-{a:.2f}"] = pt
                    break
        for t in spec.fold.tolerances:
            models[f"fold-{t:g}"] = result_path(root, Job("fold", backbone, tolerance=t)).with_suffix(".pt")
        models = {k: p for k, p in models.items() if p.exists()}
        if not models or (out.exists() and set(json.loads(out.read_text())) == set(models)):
            continue  # measured already (a new fold or pruned model measures all again, side by side)
        found = {k: torch.load(p, weights_only=False) for k, p in models.items()}
        from trainers.config import load_config
        size = tuple(load_config(str(root / backbone / "base" / "run.yaml")).data.input_size)
        echo(f"latency of {backbone}: {len(found)} models, {spec.measure.latency_rounds} rounds")
        out.write_text(json.dumps(measure_latency(found, size, spec.measure.latency_reps, spec.measure.latency_rounds),
                                  indent=1))
