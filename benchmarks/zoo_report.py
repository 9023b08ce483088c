"""The zoo sweep's report: ``zoo.md`` / ``tv_zoo.md`` from the JSON lines ``zoo.py`` writes.

Totals (raised, SE inserted, eligible nets gated, forward/backward, ONNX parity), per category (when
a source has several: torchvision's classification, detection, segmentation, video), per family,
why models got no SE, and failures by cause, each with the models it hit.

    python benchmarks/zoo.py --report-only                           # rebuild zoo.md
    python benchmarks/zoo.py --source tv --report-only               # rebuild tv_zoo.md
    python benchmarks/zoo_report.py benchmarks/results/zoo.jsonl     # the same, from any results file
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo_sources import MAX_EXPORT_PARAMS, SOURCES, Source  # noqa: E402


def out_of_memory_text(text: str) -> bool:
    return "can't allocate memory" in text or "out of memory" in text.lower() or "MemoryError" in text


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.1f}%)" if b else f"{a}/0"


def load(results: Path) -> list[dict[str, Any]]:
    """One row a model: the newest line wins, except that running out of memory under a heap cap does
    not erase an earlier uncapped success."""
    by_name: dict[str, dict[str, Any]] = {}
    for line in results.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        before = by_name.get(r["name"])
        if before and not before.get("error_stage") and r.get("error_stage") and out_of_memory_text(r.get("error", "")):
            r = {**before, "export_skipped": f"out of memory in the export pass: {r['error'][:80]}"}
        by_name[r["name"]] = r
    return list(by_name.values())


def _logged_commands(results: Path) -> list[tuple[str, str]] | None:
    """(command, when and how much) of each invocation that made ``results``, as
    ``<results>.sessions.jsonl`` recorded them (``argv``, and ``ZOO_MEM_GB`` where set); None where a
    session did not record its command."""
    sessions = results.with_suffix(".sessions.jsonl")
    if not sessions.exists():
        return None
    runs = [json.loads(x) for x in sessions.read_text().splitlines() if x.strip()]
    if not runs or any("argv" not in r for r in runs):
        return None
    return [((f"ZOO_MEM_GB={r['zoo_mem_gb']} " if r.get("zoo_mem_gb") else "") + f"python benchmarks/zoo.py {r['argv']}".strip(),
             f"{r['date']} UTC, {r['models']} models, {r['wall_s'] / 60:.1f} min") for r in runs]


def _commands(rows: list[dict[str, Any]], source: Source, argv: list[str], results: Path | None = None) -> str:
    logged = _logged_commands(results) if results is not None else None
    if logged:
        return "- commands, in order: " + "; ".join(f"`{cmd}` ({note})" for cmd, note in logged)
    flag = "" if source.key == "timm" else f" --source {source.key}"
    if not any(r.get("mode") == "forward" for r in rows):
        if "--report-only" in argv:  # rebuilt: say what made the rows, not what rebuilt the report
            argv = ["--plan-only"] if all(r.get("mode") == "plan" for r in rows) else ["--jobs", "2"]
            argv = (["--source", source.key] if flag else []) + argv
        return f"- command: `python benchmarks/zoo.py {' '.join(argv)}`"
    memory = ("; `ZOO_MEM_GB=15` (a worker's heap cap) for the models over 300 M params, higher for the few that "
              f"needed it, as `{source.stem}.sessions.jsonl` records" if source.key == "timm" else "")
    return (f"- commands: `python benchmarks/zoo.py{flag} --jobs 2 --no-export` (every model: plan, apply, forward, "
            f"backward), then `python benchmarks/zoo.py{flag} --jobs 2` (adds the ONNX exports to the rewritten "
            f"models, in a fixed random order){memory}; `--redo --names FILE` for rows an engine change made stale; "
            f"invocations in `{source.stem}.sessions.jsonl`")


#: a report on this many models or fewer (torchvision's 107) lists every model
PER_MODEL_MAX = 200


def rewritten_onnx(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(tried, ok, the model's own failures) of the rewritten models' ONNX exports. A failed export whose
    original also fails to export is the model's, not the rewrite's: not counted in ``tried``. (The
    sweep exports the original where the rewritten model fails; sessions before that exported both.)"""
    exported = [r for r in rows if "se_export_ok" in r]
    own = [r for r in exported if not r["se_export_ok"] and r.get("orig_export_ok") is False]
    tried = [r for r in exported if r not in own]
    return tried, [r for r in tried if r["se_export_ok"]], own


def _over_export_limit(r: dict[str, Any]) -> bool:
    return r.get("params", 0) > MAX_EXPORT_PARAMS


def _ok(value: Any) -> str:
    return "-" if value is None else ("ok" if value is True else "**no**" if value is False else str(value))


def _model_table(rows: list[dict[str, Any]], full: bool) -> list[str]:
    """One row a model: did plan/apply raise, SE blocks (``se_applied`` in a full run), sites skipped as
    already gated, and in a full run forward / backward / shapes / SE gradients and ONNX parity."""
    head = "| model | category | plan/apply | SE blocks | already gated |"
    if full:
        head += " input | fwd | bwd | shapes | SE grads | ONNX orig / SE |"
    lines = ["## Per model", "", "already gated = sites skipped because the model gates them itself (its own SE/ECA/...)", "",
             head + " note |", "|" + "---|" * head.count("|")]
    for r in sorted(rows, key=lambda r: (r.get("category", ""), r["name"])):
        stage = r.get("error_stage")
        raised = stage in ("create", "plan", "apply", "worker", "timeout")
        se = r.get("se_applied", r.get("se")) if full else r.get("se")
        line = (f"| {r['name']} | {r.get('category', '')} | {'**raised**' if raised else 'ok'} | {'-' if se is None else se} "
                f"| {(r.get('skipped') or {}).get('already gated', 0)} |")
        if full:
            onnx = "-"
            if r.get("export_skipped"):
                onnx = "skipped"
            elif "orig_export_ok" in r or "se_export_ok" in r:
                onnx = f"{_ok(r.get('orig_export_ok'))} / {_ok(r.get('se_export_ok'))}"
            elif r.get("mode") == "forward" and se and not stage:
                onnx = "not run"
            ran = bool(se) and not raised
            line += (f" {'x'.join(map(str, r['input_size'])) if r.get('input_size') else '-'} "
                     f"| {_ok(r.get('forward_ok')) if ran else '-'} | {_ok(r.get('backward_ok')) if ran else '-'} "
                     f"| {_ok(r.get('shape_ok')) if ran else '-'} | {_ok(r.get('se_grad_ok')) if ran else '-'} | {onnx} |")
        note = f"{stage}: {r.get('error_class')}: {r.get('error', '')[:100]}" if stage else (r.get("size_note") or "")
        lines.append(line + f" {note.replace('|', '/')} |")
    return lines


def _category_table(rows: list[dict[str, Any]], full: bool) -> list[str]:
    cats: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        cats[r.get("category", "classification")].append(r)
    if len(cats) < 2:
        return []
    head = "| category | models | plan/apply raised | with SE | SE blocks |"
    if full:
        head += " fwd+bwd ok | shapes unchanged | SE grads | ONNX original | ONNX rewritten |"
    lines = ["## Per category", "", head, "|" + "---|" * (head.count("|") - 1)]
    for c, rs in sorted(cats.items()):
        raised = sum(r.get("error_stage") in ("plan", "apply", "worker") for r in rs)
        se = [r for r in rs if (r.get("se_applied") if full else r.get("se"))]
        line = f"| {c} | {len(rs)} | {raised} | {len(se)} | {sum(r.get('se', 0) or 0 for r in rs)} |"
        if full:
            both = sum(bool(r.get("forward_ok") and r.get("backward_ok")) for r in se)
            tried = [r for r in se if "orig_export_ok" in r]
            orig_ok = [r for r in tried if r["orig_export_ok"]]
            se_tried, se_ok, _ = rewritten_onnx(se)
            skipped = collections.Counter(r["export_skipped"] for r in se if r.get("export_skipped"))
            onnx = _pct(len(orig_ok), len(tried)) if tried else ("skipped: " + "; ".join(skipped) if skipped else "-")
            line += (f" {_pct(both, len(se))} | {_pct(sum(bool(r.get('shape_ok')) for r in se), len(se))} | "
                     f"{_pct(sum(bool(r.get('se_grad_ok')) for r in se), len(se))} | {onnx} | "
                     f"{_pct(len(se_ok), len(se_tried)) if se_tried else '-'} |")
        lines.append(line)
    return lines + [""]


def report(results: Path, out: Path, argv: list[str], source: Source | str = "timm") -> str:
    """Write the report for ``results`` to ``out`` and return its text."""
    source = SOURCES[source] if isinstance(source, str) else source
    rows = load(results)
    full = any(r.get("mode") in ("full", "forward") for r in rows)
    created = [r for r in rows if r.get("error_stage") not in ("create",)]
    oom = [r for r in created if r.get("error_stage") and out_of_memory_text(r.get("error", ""))]
    raised = [r for r in created if r.get("error_stage") in ("plan", "apply", "worker") and r not in oom]
    with_se = [r for r in created if (r.get("se_applied") if full else r.get("se"))]
    no_site = [r for r in created if not r.get("error_stage") and not r.get("se")]
    structured = [r for r in created if r.get("map_structure")]
    eligible = [r for r in structured if not (r.get("gated_structure") and not r.get("se"))]
    eligible_se = [r for r in eligible if r.get("se")]
    versions = f"{source.library} {__import__(source.library).__version__}, torch {__import__('torch').__version__}"
    lines = [
        f"# {source.title}", "",
        f"- {versions}; commit {sorted({r.get('commit', '?') for r in rows})}; "
        f"{datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores",
        _commands(rows, source, argv, results),
        f"- mode: {'full (create, plan, apply, forward, backward, ONNX export of the rewritten model, and of the original where that fails or with `--export-original`, as every original in the earlier sessions)' if full else 'planning only, on the meta device'}"
        + (f"; {sum(r.get('mode') == 'forward' and bool(r.get('se_applied')) for r in rows)} rewritten models without ONNX export (`--no-export`)" if full else ""),
    ]
    if source.key == "tv":
        from zoo_sources import DETECTION_KW, TV_SKIPPED
        lines.append("- models: `torchvision.models.list_models()` over the classification, detection, segmentation and "
                     "video modules, `weights=None` (`weights_backbone=None`; detectors built with "
                     f"`{', '.join(f'{k}={v}' for k, v in DETECTION_KW.items())}` where the builder takes it); not swept: "
                     + "; ".join(f"`{k}` ({v})" for k, v in TV_SKIPPED.items()))
    elif source.models:
        lines.append(f"- models: {source.models}")
    lines += [
        "",
        "## Totals", "",
        f"- models: {len(rows)} ({len(rows) - len(created)} could not be created with pretrained=False)",
        f"- plan/apply raised: {len(raised)}",
    ]
    default_size = [r for r in rows if r.get("default_size_error")]
    if default_size:
        lines.append(f"- plan/apply at the model's default input size raised on {len(default_size)} "
                     f"({', '.join(r['name'] for r in default_size)}): the size se_inject guesses for a model without "
                     "`pretrained_cfg` does not fit it; planned and applied at "
                     f"{', '.join(sorted({'x'.join(map(str, r['plan_input_size'])) for r in default_size}))} "
                     "(`input_size=`) instead")
    lines += [
        f"- SE inserted: {_pct(len(with_se), len(created))}; no eligible site (clean 'no site' plans): {len(no_site)}",
        f"- conv nets with residual/multibranch/Inception/channel-split structure (such a site on a feature map): "
        f"{len(structured)}; of those not already "
        f"gated everywhere (SE/ECA/split-attention blocks built in): {len(eligible)}; SE inserted in {_pct(len(eligible_se), len(eligible))}",
    ]
    if full:
        # rewritten models the export pass has not reached yet (``--no-export`` rows under the size limit)
        forward_only = [r for r in with_se if r.get("mode") == "forward" and not _over_export_limit(r)]
        orig_attempted = [r for r in with_se if "orig_export_ok" in r]
        orig_ok = [r for r in orig_attempted if r["orig_export_ok"]]
        se_tried, se_ok, own = rewritten_onnx(with_se)
        attempted = [r for r in with_se if "se_export_ok" in r or "orig_export_ok" in r]
        fits = [r for r in with_se if not (r in oom and r.get("original_fits") is not True)]
        grads = [r for r in fits if "se_grad_ok" in r]
        skipped = collections.Counter(
            r.get("export_skipped") or f"over {MAX_EXPORT_PARAMS / 1e6:.0f} M parameters" for r in with_se
            if r not in forward_only and r not in attempted and (r.get("export_skipped") or _over_export_limit(r)))
        not_tried = len(with_se) - len(attempted) - len(forward_only) - sum(skipped.values())
        lines += [
            f"- did not fit in this machine's memory (heap capped by `ZOO_MEM_GB`): {len(oom)}"
            + (f" ({', '.join(r['name'] for r in oom[:10])}); of those, the original model trains here: "
               f"{sum(r.get('original_fits') is True for r in oom)}" if oom else ""),
            f"- rewritten models that fit: forward ok {_pct(sum(bool(r.get('forward_ok')) for r in fits), len(fits))}, "
            f"backward ok {_pct(sum(bool(r.get('backward_ok')) for r in fits), len(fits))}, "
            f"output shapes unchanged {_pct(sum(bool(r.get('shape_ok')) for r in fits), len(fits))}"
            + (f", every SE parameter gets a finite gradient {_pct(sum(bool(r['se_grad_ok']) for r in grads), len(grads))}"
               if grads else ""),
        ]
        if skipped:
            lines.append("- ONNX not tried: " + "; ".join(f"{n} {why}" for why, n in skipped.most_common()))
        lines.append(
            f"- ONNX: rewritten exports + ORT parity {_pct(len(se_ok), len(se_tried))} "
            f"({len(forward_only)} not reached by the export pass (`--no-export` rows), {not_tried} failed before "
            f"the export); not counted: {len(own)} whose original model does not export either"
            + (f" ({', '.join(r['name'] for r in own[:8])}{' ...' if len(own) > 8 else ''})" if own else "")
            + ("; no sampling: every rewritten model of a category that exports was tried"
               if attempted and not forward_only and not not_tried else ""))
        lines.append(
            f"- ONNX of the originals, where exported (the sweep exports an original where its rewritten model fails, "
            f"to say whose failure it is, and every original with `--export-original`, as earlier sessions did): "
            f"original exports + ORT parity "
            f"{_pct(len(orig_ok), len(orig_attempted))}; of those, rewritten exports + parity "
            f"{_pct(sum(bool(r.get('se_export_ok')) for r in orig_ok), len(orig_ok))}")
        secs = sorted(r["apply_s"] for r in rows if "apply_s" in r)
        if secs:
            lines.append(f"- apply time: median {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.1f} s")
    else:
        secs = sorted(r.get("create_plan_s", 0) for r in rows)
        lines.append(f"- create (meta) + plan: median {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.1f} s, "
                     f"sum {sum(r.get('seconds', 0) for r in rows) / 60:.1f} min of worker time")
    kinds: collections.Counter = collections.Counter()
    for r in rows:
        kinds.update(r.get("sites", {}))
    lines.append("- SE blocks by kind: " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()))
    sessions = results.with_suffix(".sessions.jsonl")
    if sessions.exists():
        runs = [json.loads(x) for x in sessions.read_text().splitlines() if x.strip()]
        wall = sum(r["wall_s"] for r in runs)
        parts = ", ".join(f"{r['models']} models with {r['jobs']} jobs" for r in runs)
        lines.append(f"- wall time: {wall / 60:.1f} min over {len(runs)} invocation(s) ({parts})")
    lines.append("")

    lines += _category_table(rows, full)
    what = {"timm": "timm's model module", "tv": "the torchvision module of the model's builder",
            "hf": "the transformers module of the model type"}.get(source.key, source.key)
    lines += ["## Per family", "", f"family = {what}", "",
              "| family | models | with SE | no site | errors | SE blocks | example |", "|---|---|---|---|---|---|---|"]
    fam: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        fam[r.get("family", "?")].append(r)
    for f, rs in sorted(fam.items()):
        se = sum(1 for r in rs if r.get("se"))
        err = sum(1 for r in rs if r.get("error_stage"))
        blocks = sum(r.get("se", 0) or 0 for r in rs)
        lines.append(f"| {f} | {len(rs)} | {se} | {len(rs) - se - err} | {err} | {blocks} | {rs[0]['name']} |")
    lines += ["", "## Why models got no SE", ""]
    why: collections.Counter = collections.Counter()
    for r in no_site:
        reasons = r.get("skipped") or {}
        why[max(reasons, key=reasons.get) if reasons else "no site found"] += 1
    lines += [f"- {n}: {reason}" for reason, n in why.most_common()]
    lines += ["", "## Failures by cause", ""]
    causes: dict[str, list[str]] = collections.defaultdict(list)
    for r in rows:
        if r.get("error_stage"):
            causes[f"{r['error_stage']}: {r.get('error_class')}: {r.get('error', '')[:120]}"].append(r["name"])
        if r.get("default_size_error"):
            e = r["default_size_error"]
            causes[f"plan at the default input size: {e['error_class']}: {e['error'][:120]}"].append(r["name"])
        if full and r.get("se_applied") and r.get("backward_ok") and r.get("se_grad_ok") is False:
            causes["backward: an SE parameter got no (or a non-finite) gradient"].append(r["name"])
        if full and r.get("forward_ok") and r.get("shape_ok") is False:
            causes["forward: output shapes changed"].append(r["name"])
        for key in ("orig_export_error", "se_export_error"):
            if r.get(key):
                causes[f"{key.split('_')[0]} export: {r[key][:120]}"].append(r["name"])
    for cause, names in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- **{len(names)}** {cause}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    if len(rows) <= PER_MODEL_MAX:
        lines += ["", *_model_table(rows, full)]
    notes = results.with_suffix(".notes.md")  # what a person found reading the rows: kept across rebuilds
    if notes.exists():
        lines += ["", f"## Notes (`{notes.name}`, written by hand)", "", notes.read_text().strip()]
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a zoo.py JSON lines file")
    ap.add_argument("--source", choices=sorted(SOURCES), default=None, help="default: tv for tv_zoo*.jsonl, else timm")
    ap.add_argument("-o", "--out", type=Path, default=None, help="default: the results file with .md")
    args = ap.parse_args(argv)
    source = args.source or next((k for k, s in SOURCES.items() if args.results.name.startswith(f"{s.stem}_")
                                  or args.results.stem == s.stem), "timm")
    print(report(args.results, args.out or args.results.with_suffix(".md"), ["--report-only"], source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
