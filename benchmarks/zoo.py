"""Zoo sweep: se_inject over every timm model (issue: any timm model).

For each name in ``timm.list_models()`` (in worker processes that import torch once and take model
after model; a failure is retried alone in a fresh process; resumable: names already in the results
file are skipped), one JSON line with: sites by kind, skipped sites by reason, params
added, plan/apply time, forward/backward ok, output shape unchanged, ONNX export + onnxruntime
parity of the original and of the rewritten model, and the error class/message of any failure.
Then ``zoo.md``: totals, a per-family table (family = timm's model module) and failures by cause.

    python benchmarks/zoo.py --plan-only                  # planning alone, meta device (< 20 min)
    python benchmarks/zoo.py --jobs 2                      # everything (about 2 hours on 2 cores)
    python benchmarks/zoo.py --report-only                 # rebuild zoo.md from the JSON lines

Planning runs on a meta-device model (no weights). The full run builds the real model
(``pretrained=False``), applies SE, runs forward + backward at a small input size where the model
accepts one (else its ``pretrained_cfg`` size), and exports original and rewritten to ONNX.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import fnmatch
import json
import multiprocessing as mp
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the se_inject tree the sweep runs (``--engine``): this checkout unless told, so that one harness can
# plan the zoo with two engines and ``zoo_diff.py`` can compare them; workers inherit it
ENGINE = Path(os.environ.get("ZOO_ENGINE") or ROOT).resolve()
sys.path.insert(0, str(ENGINE))
RESULTS = ROOT / "benchmarks" / "results"
SMALL_SIDE = 96          # forward/export input side when the model accepts it
MAX_EXPORT_PARAMS = 400e6  # bigger models are not exported in the sweep (time and memory on 2 cores)
STRUCTURE = {"residual", "multibranch", "inception"}  # site kinds that make a net "residual or Inception"
#: one list per SE placement in a plan record (``placements``), and per skipped site (``skipped_sites``)
PLACEMENT_FIELDS = ("module", "kind", "label", "channels", "reduced", "params", "fused", "layout", "map", "node")
SKIP_FIELDS = ("where", "kind", "label", "channels", "reason")


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("timed out")


def _family(name: str) -> str:
    import timm.models._registry as reg
    module = reg._model_to_module.get(name, "")
    return module.rsplit(".", 1)[-1] or name.split("_")[0]


def _err(stage: str, e: BaseException) -> dict[str, Any]:
    msg = str(e).strip().splitlines()
    return {"error_stage": stage, "error_class": type(e).__name__, "error": (msg[0] if msg else "")[:300]}


def _sizes(model) -> list[tuple[int, ...]]:
    from se_inject.shapes import default_input_size
    c, h, w = default_input_size(model)
    small = (c, SMALL_SIDE, SMALL_SIDE) if min(h, w) > SMALL_SIDE else None
    return [s for s in (small, (c, h, w)) if s]


def plan_one(name: str) -> dict[str, Any]:
    import timm
    import torch

    import se_inject
    out: dict[str, Any] = {"name": name, "family": _family(name)}
    t0 = time.perf_counter()
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as e:
        out.update(_err("create", e))
        return out
    out["params"] = sum(p.numel() for p in model.parameters())
    out["has_conv"] = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    try:
        t1 = time.perf_counter()
        plan = se_inject.plan(model, count_flops=False)
        out["plan_s"] = round(time.perf_counter() - t1, 3)
    except Exception as e:
        out.update(_err("plan", e))
        out["traceback"] = traceback.format_exc()[-1500:]
        return out
    out["se"] = len(plan.placements)
    out["sites"] = plan.by_kind()
    out["skipped"] = plan.skipped_by_reason()
    out["params_added"] = plan.params_added
    out["found_kinds"] = sorted({s.site.kind for s in plan.skipped} | set(plan.by_kind()))
    # a conv net with residual/Inception structure: such a site on a feature map, placed or not
    sites = [p.site for p in plan.placements] + [s.site for s in plan.skipped]
    out["map_structure"] = any(s.kind in STRUCTURE and s.layout in ("nchw", "nhwc") for s in sites)
    out["gated_structure"] = any(s.reason == "already gated" for s in plan.skipped)
    out["untraced"] = sum(1 for g in plan.traced.graphs.values() if not g.ok)
    out["root"] = getattr(plan.traced, "root", "")
    out["placements"] = [[p.module_path, p.site.kind, p.label, p.site.channels, p.reduced, p.params, p.fused,
                          p.site.layout, "x".join(map(str, p.site.spatial)), p.site.node] for p in plan.placements]
    out["skipped_sites"] = [[s.site.where, s.site.kind, s.label, s.site.channels, s.reason] for s in plan.skipped]
    if ENGINE != ROOT:
        out["engine"] = str(Path(se_inject.__file__).resolve().parents[1])
    out["create_plan_s"] = round(time.perf_counter() - t0, 3)
    return out


def _export(model, path: Path, size) -> dict[str, Any]:
    import se_inject
    report = se_inject.export_onnx(model, path, input_size=size, second_batch=2)
    path.unlink(missing_ok=True)
    Path(str(path) + ".data").unlink(missing_ok=True)
    return {"exporter": report.exporter, "rel_diff": report.max_rel_diff}


def full_one(name: str, export: bool) -> dict[str, Any]:
    import timm
    import torch

    import se_inject
    out = plan_one(name)
    if "error" in out:
        return out
    if not out["se"]:  # no site: apply must still not raise; the meta model shows it without weights
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        try:
            t0 = time.perf_counter()
            out["se_applied"] = sum(isinstance(m, se_inject.SqueezeExcite) for m in se_inject.apply(model).modules())
            out["apply_s"] = round(time.perf_counter() - t0, 3)
        except Exception as e:
            out.update(_err("apply", e))
            out["traceback"] = traceback.format_exc()[-1500:]
        return out
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False).eval()
    except Exception as e:
        out.update(_err("create_real", e))
        return out
    try:
        t0 = time.perf_counter()
        se_model = se_inject.apply(model)
        out["apply_s"] = round(time.perf_counter() - t0, 3)
    except Exception as e:
        out.update(_err("apply", e))
        out["traceback"] = traceback.format_exc()[-1500:]
        return out
    out["se_applied"] = sum(isinstance(m, se_inject.SqueezeExcite) for m in se_model.modules())
    if not out["se_applied"]:
        return out  # nothing was rewritten: the model is the original
    size = None
    for candidate in _sizes(model):
        try:
            with torch.no_grad():
                ref = model(torch.randn(1, *candidate))
            size = candidate
            break
        except Exception as e:
            out["size_note"] = f"{candidate}: {type(e).__name__}"
    if size is None:
        out.update({"error_stage": "forward_original", "error_class": "InputSize", "error": out.get("size_note", "")})
        return out
    out["input_size"] = list(size)
    try:
        x = torch.randn(2, *size)
        with torch.no_grad():
            ref, got = model(x), se_model(x)
        shapes = lambda t: [tuple(v.shape) for v in (t if isinstance(t, (tuple, list)) else [t])]
        out["shape_ok"] = shapes(ref) == shapes(got)
        out["forward_ok"] = True
        se_model.train()
        y = se_model(x)
        loss = sum(v.float().mean() for v in (y if isinstance(y, (tuple, list)) else [y]))
        loss.backward()
        out["backward_ok"] = True
        se_model.eval().zero_grad(set_to_none=True)
    except Exception as e:
        out.update(_err("forward_backward", e))
        out["forward_ok"] = out.get("forward_ok", False)
        out["backward_ok"] = False
        if _out_of_memory(e):  # does the original fit where the rewritten one did not?
            del se_model
            out["original_fits"] = _trains(model, x)
        return out
    if not export:
        return out
    if out["params"] > MAX_EXPORT_PARAMS:
        out["export_skipped"] = f"over {MAX_EXPORT_PARAMS / 1e6:.0f} M parameters"
        return out
    with tempfile.TemporaryDirectory() as tmp:
        try:
            out["orig_export"] = _export(model, Path(tmp) / "orig.onnx", size)
            out["orig_export_ok"] = True
        except Exception as e:
            out["orig_export_ok"] = False
            out["orig_export_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        if out["se_applied"]:
            try:
                out["se_export"] = _export(se_model, Path(tmp) / "se.onnx", size)
                out["se_export_ok"] = True
            except Exception as e:
                out["se_export_ok"] = False
                out["se_export_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return out


def _out_of_memory_text(text: str) -> bool:
    return "can't allocate memory" in text or "out of memory" in text.lower() or "MemoryError" in text


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or _out_of_memory_text(str(e))


def _trains(model, x) -> bool | str:
    """Whether ``model`` runs forward + backward on ``x`` (True), or the error class."""
    try:
        y = model.train()(x)
        sum(v.float().mean() for v in (y if isinstance(y, (tuple, list)) else [y])).backward()
        return True
    except Exception as e:
        return "out of memory" if _out_of_memory(e) else type(e).__name__


def _limit_memory() -> None:
    """``ZOO_MEM_GB``: cap this worker's heap, so a model too big for the machine fails with an
    allocation error instead of driving the machine into swap."""
    gb = float(os.environ.get("ZOO_MEM_GB", "0"))
    if gb > 0:
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (int(gb * 2**30), resource.RLIM_INFINITY))


def _worker(args: tuple[str, bool, bool, int]) -> dict[str, Any]:
    name, plan_only, export, timeout = args
    _limit_memory()
    import torch
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    t0 = time.perf_counter()
    try:
        out = plan_one(name) if plan_only else full_one(name, export)
    except Timeout:
        out = {"name": name, "family": _family(name), "error_stage": "timeout", "error_class": "Timeout",
               "error": f"over {timeout} s"}
    except BaseException as e:  # a worker must report, never die silently
        out = {"name": name, "family": _family(name), **_err("worker", e)}
    finally:
        signal.alarm(0)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["mode"] = "plan" if plan_only else ("full" if export else "forward")
    return out


def _commit() -> str:
    """The engine's commit (the results describe its se_inject)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ENGINE, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _isolated(name: str, export: bool, timeout: int) -> dict[str, Any]:
    """One model in its own process: a model that exhausts memory or hangs cannot take the sweep down."""
    cmd = [sys.executable, __file__, "--worker", name] + ([] if export else ["--no-export"])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"name": name, "family": _family(name), "error_stage": "timeout", "error_class": "Timeout",
                "error": f"over {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    why = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else \
        (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return {"name": name, "family": _family(name), "error_stage": "worker", "error_class": "WorkerDied", "error": why}


class _Server:
    """A worker process that runs one model per line of stdin (``--serve``): imports torch and timm
    once instead of once a model (~5 s each on this machine). Restarted after ``per_process`` models
    (memory), after a timeout (killed) and after dying (out of memory: that model is reported)."""

    def __init__(self, export: bool, timeout: int, per_process: int = 20) -> None:
        self.export, self.timeout, self.per_process = export, timeout, per_process
        self.proc: subprocess.Popen | None = None
        self.served = 0

    def _start(self) -> None:
        cmd = [sys.executable, __file__, "--serve", "--timeout", str(self.timeout)] + ([] if self.export else ["--no-export"])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.served = 0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, name: str) -> dict[str, Any]:
        if self.proc is None or self.served >= self.per_process:
            self.stop()
            self._start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.served += 1
        timer = threading.Timer(self.timeout + 60, self.stop)  # the worker's own alarm did not fire
        timer.start()
        try:
            self.proc.stdin.write(name + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith('{"name"'):
                    return json.loads(line)
        except (BrokenPipeError, ValueError, AttributeError):
            pass
        finally:
            timer.cancel()
        code = self.proc.poll() if self.proc is not None else None
        self.stop()
        why = f"killed by signal {-code} (out of memory?)" if code is not None and code < 0 else "worker stopped or timed out"
        return {"name": name, "family": _family(name), "error_stage": "worker", "error_class": "WorkerDied", "error": why}


def serve(export: bool, timeout: int) -> int:
    """``--serve``: one model name a line on stdin, one JSON line each on stdout."""
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_worker((line.strip(), False, export, timeout))), flush=True)
    return 0


def sweep(names: list[str], results: Path, jobs: int, plan_only: bool, export: bool, timeout: int,
          serial_above: float = 300e6) -> None:
    """Run what ``results`` lacks. Planning runs in a pool of workers; the full run starts one process
    per model, models over ``serial_above`` parameters last and one at a time (memory)."""
    last: dict[str, dict[str, Any]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                last[row["name"]] = row
    # a full run takes up rewritten models that a --no-export run left without ONNX (the new line wins)
    upgrade = {n for n, r in last.items() if not plan_only and export and r.get("mode") == "forward"
               and r.get("se_applied") and not r.get("error_stage")}
    done = set(last) - upgrade
    todo = [n for n in names if n not in done]
    if upgrade:  # in a fixed random order: the exports done by any time are a fair sample of the zoo
        import random
        random.Random(0).shuffle(todo)
    print(f"{len(names)} models, {len(done & set(names))} already in {results.name}, {len(todo)} to run", flush=True)
    commit = _commit()
    t0 = time.perf_counter()
    count = iter(range(1, len(todo) + 1))

    def record(f, out: dict[str, Any]) -> None:
        out["commit"] = commit
        f.write(json.dumps(out) + "\n")
        f.flush()
        status = out.get("error_class") or f"se={out.get('se')}"
        print(f"[{next(count)}/{len(todo)} {time.perf_counter() - t0:.0f}s] {out['name']}: {status}", flush=True)

    with results.open("a") as f:
        if plan_only:
            with mp.get_context("forkserver").Pool(jobs, maxtasksperchild=40) as pool:
                for out in pool.imap_unordered(_worker, [(n, True, export, timeout) for n in todo]):
                    record(f, out)
            _log_session(results, len(todo), jobs, time.perf_counter() - t0, commit)
            return
        from concurrent.futures import ThreadPoolExecutor, as_completed
        sizes = _param_counts(todo)
        small = [n for n in todo if sizes.get(n, 0) <= serial_above]
        big = [n for n in todo if sizes.get(n, 0) > serial_above]
        servers = [_Server(export, timeout) for _ in range(jobs)]
        free = queue.Queue()
        for server in servers:
            free.put(server)

        def served(name: str) -> dict[str, Any]:
            server = free.get()
            try:
                out = server.run(name)
            finally:
                free.put(server)
            if out.get("error_stage"):  # once more alone in a fresh process: no state left by other models
                server.stop()
                out = {**_isolated(name, export, timeout), "retried_isolated": True}
            return out

        with ThreadPoolExecutor(jobs) as pool:
            for done_future in as_completed([pool.submit(served, n) for n in small]):
                record(f, done_future.result())
        for server in servers:
            server.stop()
        for name in big:  # one at a time, each in its own process (memory)
            record(f, _isolated(name, export, timeout))
    _log_session(results, len(todo), jobs, time.perf_counter() - t0, commit)


def _log_session(results: Path, models: int, jobs: int, seconds: float, commit: str) -> None:
    """Append this invocation's wall time to ``<results>.sessions.jsonl`` (the report sums them)."""
    with results.with_suffix(".sessions.jsonl").open("a") as f:
        f.write(json.dumps({"date": str(datetime.datetime.now(datetime.timezone.utc))[:19], "models": models,
                            "jobs": jobs, "wall_s": round(seconds, 1), "commit": commit}) + "\n")


def _param_counts(names: list[str]) -> dict[str, int]:
    """Parameter counts from the planning sweep's results when present (no model is built here)."""
    path = RESULTS / "zoo_plan.jsonl"
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["name"]: r.get("params", 0) for r in rows}


# ---------------------------------------------------------------------------------------- report

def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.1f}%)" if b else f"{a}/0"



def report(results: Path, out: Path, plan_results: Path | None, argv: list[str]) -> str:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    by_name: dict[str, dict[str, Any]] = {}
    for r in rows:  # the newest line wins, except that running out of memory under a heap cap
        before = by_name.get(r["name"])  # does not erase an earlier uncapped success
        if before and not before.get("error_stage") and r.get("error_stage") and _out_of_memory_text(r.get("error", "")):
            r = {**before, "export_skipped": f"out of memory in the export pass: {r['error'][:80]}"}
        by_name[r["name"]] = r
    rows = list(by_name.values())
    full = any(r.get("mode") in ("full", "forward") for r in rows)
    created = [r for r in rows if r.get("error_stage") not in ("create",)]
    oom = [r for r in created if r.get("error_stage") and _out_of_memory_text(r.get("error", ""))]
    raised = [r for r in created if r.get("error_stage") in ("plan", "apply", "worker") and r not in oom]
    with_se = [r for r in created if (r.get("se_applied") if full else r.get("se"))]
    no_site = [r for r in created if not r.get("error_stage") and not r.get("se")]
    structured = [r for r in created if r.get("map_structure")]
    eligible = [r for r in structured if not (r.get("gated_structure") and not r.get("se"))]
    eligible_se = [r for r in eligible if r.get("se")]
    lines = [
        "# se-inject over the timm zoo", "",
        f"- timm {__import__('timm').__version__}, torch {__import__('torch').__version__}; commit {sorted({r.get('commit', '?') for r in rows})}; "
        f"{datetime.date.today()}; {platform.machine()}, {os.cpu_count()} cores",
        f"- command: `python benchmarks/zoo.py {' '.join(argv)}`" if not any(r.get("mode") == "forward" for r in rows) else
        "- commands: `python benchmarks/zoo.py --jobs 2 --no-export` (every model: plan, apply, forward, backward), then "
        "`python benchmarks/zoo.py --jobs 2` (adds the ONNX exports to the rewritten models, in a fixed random order); "
        "`ZOO_MEM_GB=15` for the models over 300 M params; invocations in `zoo.sessions.jsonl`",
        f"- mode: {'full (create, plan, apply, forward, backward, ONNX export of original and rewritten)' if full else 'planning only, on the meta device'}"
        + (f"; {sum(r.get('mode') == 'forward' and bool(r.get('se_applied')) for r in rows)} rewritten models without ONNX export (`--no-export`)" if full else ""),
        "",
        "## Totals", "",
        f"- models: {len(rows)} ({len(rows) - len(created)} could not be created with pretrained=False)",
        f"- plan/apply raised: {len(raised)}",
        f"- SE inserted: {_pct(len(with_se), len(created))}; no eligible site (clean 'no site' plans): {len(no_site)}",
        f"- conv nets with residual/multibranch/Inception structure (such a site on a feature map): {len(structured)}; of those not already "
        f"gated everywhere (SE/ECA/split-attention blocks built in): {len(eligible)}; SE inserted in {_pct(len(eligible_se), len(eligible))}",
    ]
    if full:
        forward_only = [r for r in with_se if r.get("mode") == "forward"]
        orig_attempted = [r for r in with_se if "orig_export_ok" in r]
        orig_ok = [r for r in orig_attempted if r["orig_export_ok"]]
        se_ok = [r for r in orig_ok if r.get("se_export_ok")]
        fits = [r for r in with_se if not (r in oom and r.get("original_fits") is not True)]
        lines += [
            f"- did not fit in this machine's memory (heap capped by `ZOO_MEM_GB`): {len(oom)}"
            + (f" ({', '.join(r['name'] for r in oom[:10])}); of those, the original model trains here: "
               f"{sum(r.get('original_fits') is True for r in oom)}" if oom else ""),
            f"- rewritten models that fit: forward ok {_pct(sum(bool(r.get('forward_ok')) for r in fits), len(fits))}, "
            f"backward ok {_pct(sum(bool(r.get('backward_ok')) for r in fits), len(fits))}, "
            f"output shapes unchanged {_pct(sum(bool(r.get('shape_ok')) for r in fits), len(fits))}",
            f"- ONNX: original exports + ORT parity {_pct(len(orig_ok), len(orig_attempted))} of rewritten models' originals "
            f"tried ({len(forward_only)} run without export (`--no-export`), "
            f"{len(with_se) - len(orig_attempted) - len(forward_only)} not tried: over {MAX_EXPORT_PARAMS / 1e6:.0f} M params or failed earlier); "
            f"of those, rewritten exports + parity {_pct(len(se_ok), len(orig_ok))}",
        ]
        secs = sorted(r["apply_s"] for r in rows if "apply_s" in r)
        if secs:
            lines.append(f"- apply time: median {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.1f} s")
    else:
        secs = sorted(r.get("create_plan_s", 0) for r in rows)
        lines.append(f"- create (meta) + plan: median {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.1f} s, "
                     f"sum {sum(r.get('seconds', 0) for r in rows) / 60:.1f} min of worker time")
    kinds = collections.Counter()
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

    lines += ["## Per family", "", "family = timm's model module", "",
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
    why = collections.Counter()
    for r in no_site:
        reasons = r.get("skipped") or {}
        why[max(reasons, key=reasons.get) if reasons else "no site found"] += 1
    lines += [f"- {n}: {reason}" for reason, n in why.most_common()]
    lines += ["", "## Failures by cause", ""]
    causes: dict[str, list[str]] = collections.defaultdict(list)
    for r in rows:
        if r.get("error_stage"):
            causes[f"{r['error_stage']}: {r.get('error_class')}: {r.get('error', '')[:120]}"].append(r["name"])
        for key in ("orig_export_error", "se_export_error"):
            if r.get(key):
                causes[f"{key.split('_')[0]} export: {r[key][:120]}"].append(r["name"])
    for cause, names in sorted(causes.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- **{len(names)}** {cause}: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}")
    text = "\n".join(lines) + "\n"
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan-only", action="store_true", help="meta-device planning only")
    ap.add_argument("--no-export", action="store_true", help="full run without ONNX export")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--filter", default="*", help="glob over model names")
    ap.add_argument("--names", type=Path, default=None, help="a file of model names, one a line")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--engine", type=Path, default=None,
                    help="run the se_inject of another checkout (e.g. an older commit) under this harness")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one model, JSON on stdout
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # names on stdin, JSON on stdout
    args = ap.parse_args(argv)
    if args.engine and args.engine.resolve() != ENGINE:  # start again with the other engine first on sys.path
        os.environ["ZOO_ENGINE"] = str(args.engine.resolve())
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv])
    if args.serve:
        return serve(not args.no_export, args.timeout)
    if args.worker:
        out = _worker((args.worker, args.plan_only, not args.no_export, args.timeout))
        print(json.dumps(out), flush=True)
        return 0
    import timm
    names = [n for n in timm.list_models() if fnmatch.fnmatchcase(n, args.filter)]
    if args.names:
        wanted = set(args.names.read_text().split())
        names = [n for n in names if n in wanted]
    names = names[: args.limit]
    stem = "zoo_plan" if args.plan_only else "zoo"
    results = args.results or RESULTS / f"{stem}.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        sweep(names, results, args.jobs, args.plan_only, not args.no_export, args.timeout)
    print(report(results, results.with_suffix(".md"), None, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
