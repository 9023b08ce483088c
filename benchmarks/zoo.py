"""Zoo sweep: se_inject over every timm model (issue: any timm model), or every torchvision one.

For each model name (in worker processes that import torch once and take model after model; a
failure is retried alone in a fresh process; resumable: names already in the results file are
skipped), one JSON line with: sites by kind, every placement (module, kind, label, channels, reduced
width, params) and skipped site, params added, plan/apply time, forward/backward ok, output shape
unchanged, SE parameters reached by the gradient, ONNX export + onnxruntime parity of the rewritten
model (and of the original where the rewritten one fails, to say whose failure it is; of every original
with ``--export-original``), and the error class/message of any failure. Then a report (``zoo.md``,
``tv_zoo.md``; built by ``zoo_report.py``): totals, per family and category, failures by cause.

    python benchmarks/zoo.py --plan-only                  # planning alone, meta device (< 20 min)
    python benchmarks/zoo.py --jobs 2                      # everything (about 2 hours on 2 cores)
    python benchmarks/zoo.py --report-only                 # rebuild zoo.md from the JSON lines
    python benchmarks/zoo.py --source tv --jobs 2          # torchvision: classification, detection,
                                                           # segmentation, video -> tv_zoo.jsonl / .md
    python benchmarks/zoo.py --source hf --jobs 1          # transformers' vision model types -> hf_zoo.jsonl / .md
    python benchmarks/zoo.py --plan-only --engine ../old --results /tmp/old.jsonl   # another checkout's engine
    python benchmarks/zoo_diff.py /tmp/old.jsonl benchmarks/results/zoo_plan.jsonl # what changed

Planning runs on a meta-device model (no weights). The full run builds the real model
(``pretrained=False`` / ``weights=None``), applies SE, runs forward + backward at a small input
size where the model accepts one (else its own size), and exports the rewritten model to ONNX (the
original too where that fails).
How each source builds its models and how each category (classification, detection, segmentation,
video) is run: ``zoo_sources.py``.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import json
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# the se_inject tree the sweep runs (``--engine``): this checkout unless told, so that one harness can
# plan the zoo with two engines and ``zoo_diff.py`` can compare them; workers inherit it
ENGINE = Path(os.environ.get("ZOO_ENGINE") or ROOT).resolve()
sys.path.insert(0, str(ENGINE))
sys.path.insert(1, str(Path(__file__).resolve().parent))
from zoo_report import out_of_memory_text, report  # noqa: E402
from zoo_sources import MAX_EXPORT_PARAMS, SOURCES, TASKS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: site kinds that make a net "residual or Inception-like": such a site on a feature map makes it eligible
STRUCTURE = {"residual", "multibranch", "inception", "split"}
#: one list per SE placement in a plan record (``placements``), and per skipped site (``skipped_sites``)
PLACEMENT_FIELDS = ("module", "kind", "label", "channels", "reduced", "params", "fused", "layout", "map", "node")
SKIP_FIELDS = ("where", "kind", "label", "channels", "reason")


class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("timed out")


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""


def _err(stage: str, e: BaseException) -> dict[str, Any]:
    msg = str(e).strip().splitlines()
    return {"error_stage": stage, "error_class": type(e).__name__, "error": (msg[0] if msg else "")[:300]}


def _plan(model, out: dict[str, Any]):
    """``se_inject.plan`` at the model's default input size, as a user calls it. Where the model does not
    run at that size (the default is a guess for models without ``pretrained_cfg``: MViT, S3D), the
    error is recorded (``default_size_error``) and the task's other sizes are tried."""
    import se_inject
    try:
        return se_inject.plan(model, count_flops=False)
    except Exception as e:
        if type(e).__name__ != "ForwardError":
            raise
        first = e
    for size in TASKS[out["category"]].sizes(model):
        try:
            plan = se_inject.plan(model, count_flops=False, input_size=size)
        except Exception:
            continue
        out["default_size_error"] = _err("plan", first)
        out["plan_input_size"] = list(size)
        return plan
    raise first


def _create_meta(src, name: str, out: dict[str, Any]):
    """The model on the meta device (no weights, no time); where its builder cannot run there
    (torchvision's RegNets call ``.item()`` on a tensor they build), on the CPU (``create_note``)."""
    import torch
    try:
        with torch.device("meta"):
            return src.create(name)
    except Exception as e:
        out["create_note"] = f"built on the CPU: on meta, {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return src.create(name)


def plan_one(name: str, source: str = "timm") -> dict[str, Any]:
    import torch

    src = SOURCES[source]
    out: dict[str, Any] = {"name": name, "family": src.family(name), "category": src.category(name)}
    t0 = time.perf_counter()
    try:
        model = _create_meta(src, name, out)
    except Exception as e:
        out.update(_err("create", e))
        return out
    out["params"] = sum(p.numel() for p in model.parameters())
    out["has_conv"] = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    try:
        t1 = time.perf_counter()
        plan = _plan(model, out)
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
        import se_inject
        out["engine"] = str(Path(se_inject.__file__).resolve().parents[1])
    out["create_plan_s"] = round(time.perf_counter() - t0, 3)
    return out


def _export(model, path: Path, size) -> dict[str, Any]:
    import se_inject
    report = se_inject.export_onnx(model, path, input_size=size, second_batch=2)
    path.unlink(missing_ok=True)
    Path(str(path) + ".data").unlink(missing_ok=True)
    return {"exporter": report.exporter, "rel_diff": report.max_rel_diff}


def _export_into(out: dict[str, Any], key: str, model, path: Path, size) -> bool:
    """``_export`` with its result, or its error, recorded under ``<key>_export``; whether it passed."""
    try:
        out[f"{key}_export"] = _export(model, path, size)
        out[f"{key}_export_ok"] = True
    except Exception as e:
        out[f"{key}_export_ok"] = False
        out[f"{key}_export_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    return out[f"{key}_export_ok"]


def _forward_backward(model, se_model, task, size, out: dict[str, Any]) -> None:
    """Eval forward of both models at ``size`` (outputs' signature compared), then a training-mode
    backward of the rewritten one; fills ``shape_ok``, ``forward_ok``, ``backward_ok``, ``se_grad_ok``."""
    import torch
    torch.manual_seed(1)
    x = task.inputs(size)
    with torch.no_grad():
        ref, got = model(x), se_model(x)
    out["shape_ok"] = task.signature(ref) == task.signature(got)
    out["forward_ok"] = True
    se_model.train()
    task.loss(se_model, x).backward()
    out["backward_ok"] = True
    out["se_grad_ok"] = _se_grads_ok(se_model)
    se_model.eval().zero_grad(set_to_none=True)


def _se_grads_ok(model) -> bool:
    """Every SE block's parameters got a finite gradient from the backward pass."""
    import torch

    import se_inject
    params = [p for m in model.modules() if isinstance(m, se_inject.SqueezeExcite) for p in m.parameters()]
    return bool(params) and all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in params)


def full_one(name: str, export: bool, source: str = "timm", export_original: bool = False) -> dict[str, Any]:
    import torch

    import se_inject
    out = plan_one(name, source)
    if "error" in out:
        return out
    src, task = SOURCES[source], TASKS[out["category"]]
    given = {"input_size": tuple(out["plan_input_size"])} if "plan_input_size" in out else {}
    if not out["se"]:  # no site: apply must still not raise; the meta model shows it without weights
        model = _create_meta(src, name, out)
        try:
            t0 = time.perf_counter()
            applied = se_inject.apply(model, **given)
            out["se_applied"] = sum(isinstance(m, se_inject.SqueezeExcite) for m in applied.modules())
            out["apply_s"] = round(time.perf_counter() - t0, 3)
        except Exception as e:
            out.update(_err("apply", e))
            out["traceback"] = traceback.format_exc()[-1500:]
        return out
    torch.manual_seed(0)
    try:
        model = src.create(name).eval()
    except Exception as e:
        out.update(_err("create_real", e))
        return out
    try:
        t0 = time.perf_counter()
        se_model = se_inject.apply(model, **given)
        out["apply_s"] = round(time.perf_counter() - t0, 3)
    except Exception as e:
        out.update(_err("apply", e))
        out["traceback"] = traceback.format_exc()[-1500:]
        return out
    out["se_applied"] = sum(isinstance(m, se_inject.SqueezeExcite) for m in se_model.modules())
    if not out["se_applied"]:
        return out  # nothing was rewritten: the model is the original
    candidates = task.sizes(model)
    size = None
    for i, candidate in enumerate(candidates):
        try:
            with torch.no_grad():
                model(task.inputs(candidate))
        except Exception as e:
            out["size_note"] = f"{candidate}: {type(e).__name__}"
            continue
        size = candidate
        try:
            _forward_backward(model, se_model, task, size, out)
        except Exception as e:
            # a size the model takes in eval mode but the original itself cannot train at (torchvision's
            # inception_v3: its auxiliary head, run in training only, pools 5x5 on a 4x4 map at 96 px):
            # the next size. A failure of the rewritten model alone stays a failure.
            if (i + 1 < len(candidates) and not _out_of_memory(e)
                    and _trains(model, task.inputs(candidate), task) is not True):
                out["size_note"] = f"{candidate}: the original fails in training: {type(e).__name__}: {_first(e)[:120]}"
                for key in ("shape_ok", "forward_ok", "backward_ok", "se_grad_ok"):
                    out.pop(key, None)
                se_model.eval().zero_grad(set_to_none=True)
                model.eval().zero_grad(set_to_none=True)
                size = None
                continue
            error = e
        else:
            error = None
        break
    if size is None:
        out.update({"error_stage": "forward_original", "error_class": "InputSize", "error": out.get("size_note", "")})
        return out
    out["input_size"] = list(size)
    if error is not None:
        e = error
        out.update(_err("forward_backward", e))
        out["traceback"] = "".join(traceback.format_exception(e))[-1500:]
        out["forward_ok"] = out.get("forward_ok", False)
        out["backward_ok"] = False
        if _out_of_memory(e):  # does the original fit where the rewritten one did not?
            del se_model
            out["original_fits"] = _trains(model, task.inputs(size), task)
        return out
    if not export:
        return out
    if not task.export:
        out["export_skipped"] = task.export_note
        return out
    if out["params"] > MAX_EXPORT_PARAMS:
        out["export_skipped"] = f"over {MAX_EXPORT_PARAMS / 1e6:.0f} M parameters"
        return out
    with tempfile.TemporaryDirectory() as tmp:
        # the original, where its result tells something: always (``--export-original``), or where the
        # rewritten model failed, to say whose failure it is (the model's own, or the rewrite's)
        if not _export_into(out, "se", se_model, Path(tmp) / "se.onnx", size) or export_original:
            _export_into(out, "orig", model, Path(tmp) / "orig.onnx", size)
    return out


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or out_of_memory_text(str(e))


def _trains(model, x, task) -> bool | str:
    """Whether ``model`` runs forward + backward on ``x`` (True), or the error class."""
    try:
        task.loss(model.train(), x).backward()
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


@dataclass(frozen=True)
class Run:
    """What a sweep does to each model; workers started as processes get it back from ``flags()``."""
    source: str = "timm"
    plan_only: bool = False
    export: bool = True
    timeout: int = 900
    export_original: bool = False  # every original model too (else only where the rewritten one fails)

    @property
    def mode(self) -> str:
        return "plan" if self.plan_only else ("full" if self.export else "forward")

    def flags(self) -> list[str]:
        return (["--source", self.source, "--timeout", str(self.timeout)] + (["--plan-only"] if self.plan_only else [])
                + ([] if self.export else ["--no-export"]) + (["--export-original"] if self.export_original else []))


def _failed(name: str, run: Run, **why: str) -> dict[str, Any]:
    src = SOURCES[run.source]
    return {"name": name, "family": src.family(name), "category": src.category(name), **why}


def _worker(args: tuple[str, Run]) -> dict[str, Any]:
    name, run = args
    _limit_memory()
    import torch
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(run.timeout)
    t0 = time.perf_counter()
    try:
        out = plan_one(name, run.source) if run.plan_only else full_one(name, run.export, run.source, run.export_original)
    except Timeout:
        out = _failed(name, run, error_stage="timeout", error_class="Timeout", error=f"over {run.timeout} s")
    except BaseException as e:  # a worker must report, never die silently
        out = _failed(name, run, **_err("worker", e))
    finally:
        signal.alarm(0)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["mode"] = run.mode
    return out


def _commit() -> str:
    """The engine's commit (the results describe its se_inject)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ENGINE, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _isolated(name: str, run: Run) -> dict[str, Any]:
    """One model in its own process: a model that exhausts memory or hangs cannot take the sweep down."""
    cmd = [sys.executable, __file__, "--worker", name, *run.flags()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=run.timeout, start_new_session=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return _failed(name, run, error_stage="timeout", error_class="Timeout", error=f"over {run.timeout} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    why = f"killed by signal {-proc.returncode} (out of memory?)" if proc.returncode < 0 else \
        (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return _failed(name, run, error_stage="worker", error_class="WorkerDied", error=why)


class _Server:
    """A worker process that runs one model per line of stdin (``--serve``): imports torch and timm
    once instead of once a model (~5 s each on this machine). Restarted after ``per_process`` models
    (memory), after a timeout (killed) and after dying (out of memory: that model is reported)."""

    def __init__(self, run: Run, per_process: int = 20) -> None:
        self.run_, self.per_process = run, per_process
        self.proc: subprocess.Popen | None = None
        self.served = 0

    def _start(self) -> None:
        cmd = [sys.executable, __file__, "--serve", *self.run_.flags()]
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
        timer = threading.Timer(self.run_.timeout + 60, self.stop)  # the worker's own alarm did not fire
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
        return _failed(name, self.run_, error_stage="worker", error_class="WorkerDied", error=why)


def serve(run: Run) -> int:
    """``--serve``: one model name a line on stdin, one JSON line each on stdout."""
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_worker((line.strip(), run))), flush=True)
    return 0


def to_run(names: list[str], results: Path, run: Run, redo: bool = False) -> list[str]:
    """The names of ``names`` that ``results`` lacks, in the order to run them. A full run also takes up
    rewritten models that a ``--no-export`` run left without ONNX (the new line wins), in a fixed random
    order so that the exports done by any time are a fair sample of the zoo; not those over
    ``MAX_EXPORT_PARAMS``, whose export the full run would skip. ``redo``: every name, present or not
    (after an engine change: the new lines win)."""
    if redo:
        return list(names)
    last: dict[str, dict[str, Any]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                last[row["name"]] = row
    upgrade = {n for n, r in last.items() if run.mode == "full" and r.get("mode") == "forward"
               and r.get("se_applied") and not r.get("error_stage") and r.get("params", 0) <= MAX_EXPORT_PARAMS}
    done = set(last) - upgrade
    todo = [n for n in names if n not in done]
    if upgrade:
        import random
        random.Random(0).shuffle(todo)
    return todo


def sweep(names: list[str], results: Path, jobs: int, run: Run, serial_above: float = 300e6, redo: bool = False) -> None:
    """Run what ``results`` lacks (:func:`to_run`). Planning runs in a pool of workers; the full run
    starts one process per model, models over ``serial_above`` parameters last and one at a time (memory)."""
    todo = to_run(names, results, run, redo)
    print(f"{len(names)} models, {len(names) - len(todo)} already in {results.name}, {len(todo)} to run", flush=True)
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
        if run.plan_only:
            with mp.get_context("forkserver").Pool(jobs, maxtasksperchild=40) as pool:
                for out in pool.imap_unordered(_worker, [(n, run) for n in todo]):
                    record(f, out)
            _log_session(results, len(todo), jobs, time.perf_counter() - t0, commit)
            return
        from concurrent.futures import ThreadPoolExecutor, as_completed
        sizes = _param_counts(run.source)
        small = [n for n in todo if sizes.get(n, 0) <= serial_above]
        big = [n for n in todo if sizes.get(n, 0) > serial_above]
        servers = [_Server(run) for _ in range(jobs)]
        free = queue.Queue()
        for server in servers:
            free.put(server)

        def served(name: str) -> dict[str, Any]:
            server = free.get()
            try:
                out = server.run(name)
                if out.get("error_stage"):  # stopped before another thread can take it: no state left
                    server.stop()           # by this model for the next one
            finally:
                free.put(server)
            if out.get("error_stage"):  # once more alone in a fresh process: no state left by other models
                out = {**_isolated(name, run), "retried_isolated": True}
            return out

        with ThreadPoolExecutor(jobs) as pool:
            for done_future in as_completed([pool.submit(served, n) for n in small]):
                record(f, done_future.result())
        for server in servers:
            server.stop()
        for name in big:  # one at a time, each in its own process (memory)
            record(f, _isolated(name, run))
    _log_session(results, len(todo), jobs, time.perf_counter() - t0, commit)


def _log_session(results: Path, models: int, jobs: int, seconds: float, commit: str) -> None:
    """Append this invocation's wall time to ``<results>.sessions.jsonl`` (the report sums them)."""
    with results.with_suffix(".sessions.jsonl").open("a") as f:
        f.write(json.dumps({"date": str(datetime.datetime.now(datetime.timezone.utc))[:19], "models": models,
                            "jobs": jobs, "wall_s": round(seconds, 1), "commit": commit,
                            "argv": " ".join(sys.argv[1:]), "zoo_mem_gb": os.environ.get("ZOO_MEM_GB", "")}) + "\n")


def _param_counts(source: str) -> dict[str, int]:
    """Parameter counts from the planning sweep's results when present (no model is built here)."""
    path = RESULTS / f"{SOURCES[source].stem}_plan.jsonl"
    if not path.exists():
        return {}
    rows = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {r["name"]: r.get("params", 0) for r in rows}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=sorted(SOURCES), default="timm",
                    help="timm (every timm model), tv (torchvision: classification, detection, segmentation, video) "
                         "or hf (transformers: image-classification and backbone model types, default configs)")
    ap.add_argument("--plan-only", action="store_true", help="meta-device planning only")
    ap.add_argument("--no-export", action="store_true", help="full run without ONNX export")
    ap.add_argument("--export-original", action="store_true",
                    help="export every original model too (default: only where the rewritten one fails, to say whose failure it is)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--filter", default="*", help="glob over model names")
    ap.add_argument("--names", type=Path, default=None, help="a file of model names, one a line")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--redo", action="store_true",
                    help="run the chosen models again even where the results have them (the new lines win)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--results", type=Path, default=None,
                    help="JSON lines file (default benchmarks/results/<zoo|tv_zoo>[_plan].jsonl); the report goes beside it as .md")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--engine", type=Path, default=None,
                    help="run the se_inject of another checkout (e.g. an older commit) under this harness")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one model, JSON on stdout
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # names on stdin, JSON on stdout
    args = ap.parse_args(argv)
    if args.engine and args.engine.resolve() != ENGINE:  # start again with the other engine first on sys.path
        os.environ["ZOO_ENGINE"] = str(args.engine.resolve())
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv])
    run = Run(args.source, args.plan_only, not args.no_export, args.timeout, args.export_original)
    if args.serve:
        return serve(run)
    if args.worker:
        print(json.dumps(_worker((args.worker, run))), flush=True)
        return 0
    src = SOURCES[args.source]
    names = [n for n in src.names() if fnmatch.fnmatchcase(n, args.filter)]
    if args.names:
        wanted = set(args.names.read_text().split())
        names = [n for n in names if n in wanted]
    names = names[: args.limit]
    stem = f"{src.stem}_plan" if args.plan_only else src.stem
    results = args.results or RESULTS / f"{stem}.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        sweep(names, results, args.jobs, run, redo=args.redo)
    print(report(results, results.with_suffix(".md"), argv, src))
    return 0


if __name__ == "__main__":
    sys.exit(main())
