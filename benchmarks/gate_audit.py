"""Audit a zoo plan sweep for SE blocks placed beside an existing gate: a second gate on a branch.

For each model of a plan results file (``zoo.py --plan-only``) that got SE blocks, the model is built
again (meta device) and every block's owner (the module whose graph the block goes into) is searched
for a module that may gate channels already: a known gate class (``se_inject.operators.CHANNEL_GATES``)
a class whose name says so (SE, squeeze, excite, ECA, CBAM, gate, context, ...) or a sigmoid, hard-sigmoid,
softmax or tanh module: a wide net, for a person to read. A hit is not a fault by itself (a transformer block holds attention, a
MobileNetV3 stage an SE in another block); the report lists each one for review.

    python benchmarks/gate_audit.py benchmarks/results/zoo_plan.jsonl --source timm
    python benchmarks/gate_audit.py benchmarks/results/hf_zoo_plan.jsonl --source hf -o /tmp/hf_audit.md
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))
from zoo_sources import SOURCES  # noqa: E402

#: class names that may gate channels (deliberately wide: a person reads every hit)
SUSPECT = re.compile(r"squeeze|excit|^eca|cbam|gate|recalib|context|splitattn|selectivekernel|radixsoftmax|^ese|"
                     r"(^|_)se_?(module|layer|block)", re.I)
SUSPECT_SE = re.compile(r"SE(?=[A-Z]|$)")  # SEModule, RegNetSELayer, ...SE; not Sequential, DenseBlock
#: the gate activations as modules (a functional sigmoid cannot be seen without tracing)
GATE_MODULES = {"Sigmoid", "Hardsigmoid", "HardSigmoid", "HardSigmoidMe", "Softmax", "Softmax2d", "Tanh"}


def suspect(name: str) -> bool:
    return bool(name in GATE_MODULES or SUSPECT.search(name) or SUSPECT_SE.search(name))


def audit(results: Path, source: str, names: set[str] | None = None) -> list[dict]:
    import torch

    from se_inject import operators as ops
    src = SOURCES[source]
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    hits = []
    for row in rows:
        if not row.get("placements") or (names and row["name"] not in names):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with torch.device("meta"):
                        model = src.create(row["name"])
                except Exception:
                    model = src.create(row["name"])
        except Exception as e:
            hits.append({"model": row["name"], "owner": "", "found": f"not built: {type(e).__name__}"})
            continue
        root = row.get("root") or ""
        for placement in row["placements"]:
            owner = placement[0].rsplit(".", 1)[0] if "." in placement[0] else ""
            try:
                module = model.get_submodule(owner)
            except AttributeError:
                continue
            found = sorted({type(m).__name__ for m in module.modules()
                            if ops.is_gate(m) or suspect(type(m).__name__)})
            if found:
                hits.append({"model": row["name"], "owner": owner or "<model>", "kind": placement[1],
                             "node": placement[-1], "found": ", ".join(found), "root": root})
        del model
    return hits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--source", choices=sorted(SOURCES), default="timm")
    ap.add_argument("--names", type=Path, default=None, help="only these models (one a line)")
    ap.add_argument("-o", "--out", type=Path, default=None, help="markdown report (default: print)")
    args = ap.parse_args(argv)
    names = set(args.names.read_text().split()) if args.names else None
    hits = audit(args.results, args.source, names)
    by_found = collections.defaultdict(list)
    for h in hits:
        by_found[h["found"]].append(h)
    lines = [f"# SE blocks placed in an owner that holds a gate-like module: {args.results.name}", "",
             f"- command: `python benchmarks/gate_audit.py {args.results} --source {args.source}`",
             f"- hits: {len(hits)} blocks in {len({h['model'] for h in hits})} models", ""]
    for found, hs in sorted(by_found.items(), key=lambda kv: -len(kv[1])):
        models = sorted({h["model"] for h in hs})
        lines.append(f"- **{found}**: {len(hs)} blocks, {len(models)} models: "
                     + "; ".join(f"{h['model']} `{h['owner']}:{h.get('node', '')}`" for h in hs[:6])
                     + (" ..." if len(hs) > 6 else ""))
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
