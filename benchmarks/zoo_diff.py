"""Compare two zoo plan sweeps model by model: where did SE placement change, and how?

Each input is a ``zoo.py`` results file (JSON lines with ``placements``: one
``[module, kind, label, channels, reduced, params, fused, layout, map, node]`` list a block, and
``skipped_sites``). Placements are matched by owner module and graph node (then by module path);
each model that differs gets a *signature*, the set of its changes without counts (``-conv``: conv
sites no longer gated, ``+concat``: concat sites now gated, ``conv>concat`` a site that changed kind,
``~label``/``~channels``/... a field of a matched block, ``-residual(already gated)``: no longer
gated because the new plan skips the site for that reason), and the report groups models by
signature and by family. Models that raise in one file and not the other are listed apart.

    python benchmarks/zoo.py --plan-only --engine /path/to/old/checkout --results /tmp/old_plan.jsonl
    python benchmarks/zoo.py --plan-only --results /tmp/new_plan.jsonl
    python benchmarks/zoo_diff.py /tmp/old_plan.jsonl /tmp/new_plan.jsonl            # the report
    python benchmarks/zoo_diff.py OLD NEW --models 'densenet*' --limit 0             # every block of those
"""
from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("module", "kind", "label", "channels", "reduced", "params", "fused", "layout", "map", "node")
COMPARED = ("kind", "label", "channels", "reduced", "params", "fused", "layout", "map")


def load(path: Path) -> dict[str, dict[str, Any]]:
    """Rows by model name; the newest line of a name wins (resumed sweeps append)."""
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["name"]] = row
    return rows


def _blocks(row: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in row.get("placements") or []:
        b = dict(zip(FIELDS, p))
        owner = b["module"].rsplit(".", 1)[0] if "." in b["module"] else ""
        b["where"] = f"{owner or '<model>'}:{b['node']}"
        out.append(b)
    return out


def _skips(row: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(s[0], s[1]): s[4] for s in row.get("skipped_sites") or []}


def _reason(why: str) -> str:
    """A skip reason without the shapes in it, so that one cause makes one signature token."""
    return re.sub(r"\s*\((?:[\d, ]+|B, N, C)\)", "", why)


@dataclass
class ModelDiff:
    name: str
    family: str
    old_se: int
    new_se: int
    old_params: int
    new_params: int
    changes: list[str] = field(default_factory=list)   # one line a changed block
    tokens: set[str] = field(default_factory=set)      # the signature

    @property
    def signature(self) -> str:
        return " ".join(sorted(self.tokens))


def _error(row: dict[str, Any]) -> str | None:
    if row.get("error_stage"):
        return f"{row['error_stage']}: {row.get('error_class')}: {row.get('error', '')[:160]}"
    return None


def _diff_counts(old: dict[str, Any], new: dict[str, Any], d: ModelDiff) -> ModelDiff | None:
    """For records without ``placements`` (sweeps before they were recorded): blocks by kind, skipped
    sites by reason and parameters added compared as counts. Tokens as for blocks: ``-kind``/``+kind``
    (fewer/more blocks of that kind, with a skip reason whose count grew/shrank), ``~params``."""
    kinds, skips = (old.get("sites") or {}, new.get("sites") or {}), (old.get("skipped") or {}, new.get("skipped") or {})
    grown = [why for why in set(skips[0]) | set(skips[1]) if skips[1].get(why, 0) > skips[0].get(why, 0)]
    shrunk = [why for why in set(skips[0]) | set(skips[1]) if skips[1].get(why, 0) < skips[0].get(why, 0)]
    for kind in sorted(set(kinds[0]) | set(kinds[1])):
        a, b = kinds[0].get(kind, 0), kinds[1].get(kind, 0)
        if a == b:
            continue
        whys = grown if b < a else shrunk
        d.tokens.add(f"{'-' if b < a else '+'}{kind}" + (f"({'' if b < a else 'was '}{_reason(whys[0])})" if len(whys) == 1 else ""))
        d.changes.append(f"{'-' if b < a else '+'} {kind}: {a} -> {b} blocks")
    for why in sorted(grown + shrunk):
        d.changes.append(f"  skipped, {why}: {skips[0].get(why, 0)} -> {skips[1].get(why, 0)}")
    if not d.tokens and d.old_params != d.new_params:
        d.tokens.add("~params")
        d.changes.append(f"~ params added {d.old_params:,} -> {d.new_params:,}")
    return d if d.tokens else None


def diff_model(old: dict[str, Any], new: dict[str, Any]) -> ModelDiff | None:
    """How ``new``'s plan differs from ``old``'s, or None where the placements are the same. Where
    either record lacks ``placements`` (an older sweep), the counts are compared (:func:`_diff_counts`)."""
    a, b = _blocks(old), _blocks(new)
    d = ModelDiff(old["name"], new.get("family") or old.get("family", "?"), old.get("se", len(a)), new.get("se", len(b)),
                  old.get("params_added", 0), new.get("params_added", 0))
    if "placements" not in old or "placements" not in new:
        return _diff_counts(old, new, d)
    by_where = {x["where"]: x for x in b}
    matched: list[tuple[dict, dict]] = []
    gone = []
    for x in a:
        y = by_where.pop(x["where"], None)
        (matched.append((x, y)) if y is not None else gone.append(x))
    by_module = {y["module"]: y for y in by_where.values()}  # same module path, another graph node
    rest = []
    for x in gone:
        y = by_module.pop(x["module"], None)
        if y is not None:
            by_where.pop(y["where"], None)
            matched.append((x, y))
        else:
            rest.append(x)
    new_skips, old_skips = _skips(new), _skips(old)
    for x in rest:
        why = new_skips.get((x["where"], x["kind"]))
        d.tokens.add(f"-{x['kind']}" + (f"({_reason(why)})" if why else ""))
        d.changes.append(f"- {x['label']} {x['kind']} {x['module']} ({x['channels']} ch)" + (f": now skipped, {why}" if why else ""))
    for y in by_where.values():
        why = old_skips.get((y["where"], y["kind"]))
        d.tokens.add(f"+{y['kind']}" + (f"(was {_reason(why)})" if why else ""))
        d.changes.append(f"+ {y['label']} {y['kind']} {y['module']} ({y['channels']} ch, reduced {y['reduced']})"
                         + (f": was skipped, {why}" if why else ""))
    for x, y in matched:
        fields = [f for f in COMPARED if x[f] != y[f]]
        if x["node"] != y["node"]:
            fields.append("node")
        if x["module"] != y["module"]:
            fields.append("module")
        if not fields:
            continue
        for f in fields:
            d.tokens.add(f"{x['kind']}>{y['kind']}" if f == "kind" else f"~{f}")
        d.changes.append(f"~ {x['module']}: " + ", ".join(f"{f} {x[f]} -> {y[f]}" for f in fields))
    return d if d.tokens else None


@dataclass
class Report:
    old: Path
    new: Path
    common: list[str]
    only_old: list[str]
    only_new: list[str]
    raised: dict[str, tuple[str | None, str | None]]  # name -> (old error, new error) where they differ
    diffs: list[ModelDiff]

    def by_signature(self) -> dict[str, list[ModelDiff]]:
        groups: dict[str, list[ModelDiff]] = collections.defaultdict(list)
        for d in self.diffs:
            groups[d.signature].append(d)
        return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))

    def by_family(self) -> dict[str, list[ModelDiff]]:
        groups: dict[str, list[ModelDiff]] = collections.defaultdict(list)
        for d in self.diffs:
            groups[d.family].append(d)
        return dict(sorted(groups.items()))


def compare(old_rows: dict[str, dict], new_rows: dict[str, dict], old: Path = Path("old"), new: Path = Path("new")) -> Report:
    common = sorted(set(old_rows) & set(new_rows))
    raised, diffs = {}, []
    for name in common:
        eo, en = _error(old_rows[name]), _error(new_rows[name])
        if eo or en:
            if bool(eo) != bool(en) or (eo and en and eo.split(":")[:2] != en.split(":")[:2]):
                raised[name] = (eo, en)
            continue
        d = diff_model(old_rows[name], new_rows[name])
        if d is not None:
            diffs.append(d)
    return Report(old, new, common, sorted(set(old_rows) - set(new_rows)), sorted(set(new_rows) - set(old_rows)),
                  raised, diffs)


def _commits(rows: dict[str, dict]) -> str:
    return ", ".join(sorted({str(r.get("commit", "?")) for r in rows.values()}))


def render(rep: Report, old_rows: dict[str, dict], new_rows: dict[str, dict], limit: int = 5,
           models: str | None = None) -> str:
    """The report as text: totals, groups by signature (with families and an example), by family, raised
    in one file only, and each differing model's changed blocks (``limit`` lines a model; 0 = all)."""
    same = len(rep.common) - len(rep.diffs) - sum(1 for n in rep.common if _error(old_rows[n]) or _error(new_rows[n]))
    both_raise = sum(1 for n in rep.common if _error(old_rows[n]) and _error(new_rows[n]) and n not in rep.raised)
    lines = [
        f"# zoo plan diff: {rep.old} ({len(old_rows)} models, commit {_commits(old_rows)}) -> "
        f"{rep.new} ({len(new_rows)} models, commit {_commits(new_rows)})", "",
        f"- in both: {len(rep.common)}; same placements: {same}; placements differ: {len(rep.diffs)}; "
        f"raise in both alike: {both_raise}; raise in one only (or differently): {len(rep.raised)}",
        f"- only in {rep.old.name}: {len(rep.only_old)}{': ' + ', '.join(rep.only_old[:10]) if rep.only_old else ''}; "
        f"only in {rep.new.name}: {len(rep.only_new)}{': ' + ', '.join(rep.only_new[:10]) if rep.only_new else ''}",
        f"- SE blocks: {sum(d.old_se for d in rep.diffs)} -> {sum(d.new_se for d in rep.diffs)} over the models that differ",
        "", "## By kind of difference", "",
        "signature tokens: `-kind` no longer gated, `+kind` newly gated (with the skip reason where the other plan "
        "skips that site), `a>b` a block whose site kind changed, `~field` a field of a matched block", "",
    ]
    for sig, ds in rep.by_signature().items():
        fams = collections.Counter(d.family for d in ds)
        ex = ds[0]
        lines.append(f"- **{len(ds)}** `{sig}` — families: {', '.join(f'{f} ({n})' for f, n in fams.most_common())}; "
                     f"SE {sum(d.old_se for d in ds)} -> {sum(d.new_se for d in ds)}; e.g. {ex.name}: SE {ex.old_se} -> "
                     f"{ex.new_se}, params added {ex.old_params:,} -> {ex.new_params:,}; {ex.changes[0]}")
    lines += ["", "## By family", "", "| family | models differing | signatures |", "|---|---|---|"]
    for fam, ds in rep.by_family().items():
        sigs = collections.Counter(d.signature for d in ds)
        lines.append(f"| {fam} | {len(ds)} | {'; '.join(f'`{s}` {n}' for s, n in sigs.most_common())} |")
    lines += ["", "## Raise in one and not the other", ""]
    lines += [f"- {n}: old: {eo or 'ok'} | new: {en or 'ok'}" for n, (eo, en) in sorted(rep.raised.items())] or ["- none"]
    lines += ["", "## Models", ""]
    for d in rep.diffs:
        if models and not fnmatch.fnmatchcase(d.name, models):
            continue
        lines.append(f"- {d.name} [{d.family}] SE {d.old_se} -> {d.new_se}, params added {d.old_params:,} -> "
                     f"{d.new_params:,}: `{d.signature}`")
        shown = d.changes if limit <= 0 else d.changes[:limit]
        lines += [f"  {c}" for c in shown]
        if len(shown) < len(d.changes):
            lines.append(f"  ... {len(d.changes) - len(shown)} more")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path, help="results of the older engine (zoo.py --plan-only --results ...)")
    ap.add_argument("new", type=Path, help="results of the newer engine")
    ap.add_argument("--models", default=None, help="glob: list only these models' blocks")
    ap.add_argument("--limit", type=int, default=5, help="changed blocks shown a model (0: all)")
    ap.add_argument("-o", "--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    old_rows, new_rows = load(args.old), load(args.new)
    text = render(compare(old_rows, new_rows, args.old, args.new), old_rows, new_rows, args.limit, args.models)
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
