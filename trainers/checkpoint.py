"""Checkpoints: weights as safetensors, trainer state beside them, written atomically, verified on load.

One checkpoint is a directory ``<out_dir>/checkpoints/step-<optimizer step>/``::

    model.safetensors      the model's state dict (parameters and buffers)
    ema.safetensors        the EMA weights, when EMA is on
    trainer_state.pt       optimizer, scheduler, scaler, epoch / batch / step, sampler position,
                           the RNG states of every rank, the metrics history (torch.save of plain data)
    manifest.json          size and SHA-256 of each file above (and the launch that wrote it): written
                           last, so its presence marks the checkpoint complete

It is written into a temporary sibling directory, each file fsync'ed, then renamed into place with
``os.replace``; older checkpoints are deleted only after that, keeping ``keep_last``. A kill at any
moment leaves the previous good checkpoint intact. A write that fails (a full disk, an I/O error)
removes its temporary directory and raises a one-line :class:`CheckpointWriteError` naming the
checkpoint that is still there; nothing older is deleted.

    >>> import torch, tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> path = save_checkpoint(root, 7, {"w": torch.ones(2)}, None, {"epoch": 0})
    >>> path.name, load_checkpoint(path).model["w"].tolist()
    ('step-00000007', [1.0, 1.0])
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from se_inject.errors import first_line
from se_inject.files import write_atomically

from .errors import CheckpointError, CheckpointWriteError

__all__ = ["Checkpoint", "save_checkpoint", "save_weights", "load_checkpoint", "list_checkpoints", "find_latest",
           "set_aside_later", "launch_of", "MODEL_FILE",
           "EMA_FILE", "STATE_FILE", "MANIFEST_FILE"]

MODEL_FILE, EMA_FILE, STATE_FILE, MANIFEST_FILE = "model.safetensors", "ema.safetensors", "trainer_state.pt", "manifest.json"
_NAME = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cpu_contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous, unshared CPU tensors; channels_last weights are neither "contiguous"
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(root: str | Path, step: int, model_state: dict[str, torch.Tensor],
                    ema_state: dict[str, torch.Tensor] | None, trainer_state: dict[str, Any],
                    keep_last: int = 2, launch: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step-<step>`` under ``root`` atomically; keep the newest ``keep_last``. Returns its path.

    ``launch``: plain JSON data naming the launch that writes it, kept in the manifest (:func:`launch_of`); an
    elastic restart resumes the newest checkpoint its own launch wrote (``find_latest(written_by=...)``).

    Raises :class:`CheckpointWriteError` (the checkpoints already there untouched) if the write fails.
    """
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        _write_files(tmp, step, model_state, ema_state, trainer_state, launch)
        _move_into_place(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception):
            raise CheckpointWriteError(_write_failure(root, final, e)) from None
        raise
    for old in list_checkpoints(root)[keep_last:]:  # only now: the new one is complete
        shutil.rmtree(old, ignore_errors=True)
    for stray in [*root.glob(".tmp-*"), *root.glob(".old-*")]:  # left by a run killed while writing; only rank 0 writes
        shutil.rmtree(stray, ignore_errors=True)
    return final


def _write_files(tmp: Path, step: int, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor] | None,
                 trainer_state: dict[str, Any], launch: dict[str, Any] | None) -> None:
    from safetensors.torch import save_file

    for name, state in {MODEL_FILE: model_state, EMA_FILE: ema_state}.items():
        if state is not None:
            save_file(_cpu_contiguous(state), str(tmp / name), metadata={"format": "pt"})
    torch.save(trainer_state, tmp / STATE_FILE)
    manifest: dict[str, Any] = {"step": step, "files": {}}
    if launch is not None:
        manifest["launch"] = launch
    for name in (MODEL_FILE, EMA_FILE, STATE_FILE):
        if (tmp / name).exists():
            _fsync_file(tmp / name)
            manifest["files"][name] = {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    _fsync_file(tmp / MANIFEST_FILE)
    _fsync_dir(tmp)


def _move_into_place(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final``; a checkpoint already named ``final`` is replaced only once ``tmp`` is in place."""
    trash = None
    if final.exists():  # a stale or corrupt checkpoint of the same step (a run resumed from an older one)
        trash = final.parent / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
    try:
        os.replace(tmp, final)
    except BaseException:
        if trash is not None:
            os.replace(trash, final)
        raise
    _fsync_dir(final.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def _write_failure(root: Path, final: Path, e: Exception) -> str:
    """One line: which checkpoint failed, why (with the free space: torch.save's own message hides ENOSPC), what is left."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).splitlines() or [type(e).__name__])[0]
    try:
        reason += f", {shutil.disk_usage(root).free / 2 ** 20:.1f} MB free there"
    except OSError:
        pass
    complete = [p for p in list_checkpoints(root) if (p / MANIFEST_FILE).is_file()]
    left = f"{complete[0].name} is intact" if complete else "there is no earlier checkpoint"
    aside = sorted(str(p) for p in root.glob("superseded-*") if p.is_dir())
    if aside:
        left += f"; the checkpoints set aside in {', '.join(aside)} take space too"
    return f"checkpoint {final} not written ({reason}); {left}"


def save_weights(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``state`` as one safetensors file at ``path``, whole or not at all (written beside it, then renamed).

    For the final weights of a run; :class:`CheckpointWriteError` if the write fails.
    """
    from safetensors.torch import save_file

    path = Path(path)
    try:
        write_atomically(path, lambda tmp: save_file(_cpu_contiguous(state), tmp))
    except Exception as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e, with_type=False)
        raise CheckpointWriteError(f"{path} not written ({reason}); the newest checkpoint in {path.parent / 'checkpoints'} "
                                   "holds these weights: free space and run again with --resume auto") from None


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint directories under ``root`` (complete or not), newest step first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def set_aside_later(root: str | Path, step: int, keep: Path | None = None) -> tuple[Path | None, list[str]]:
    """Move the checkpoints of ``root`` past ``step`` (all but ``keep``, the one being resumed) into a folder
    ``superseded-<step>[-k]`` in ``root`` that :func:`list_checkpoints` does not read. Returns that folder (None
    if nothing was moved) and the names moved, newest first; the moves are fsync'ed.

    A run resumed from ``step`` writes a new timeline from there. Checkpoints of the old one past ``step`` (or a
    newer broken one that ``--resume auto`` skipped) would otherwise count as the newest: ``keep_last`` would
    delete each new checkpoint as soon as it is written, and ``--resume auto`` would go back to the old timeline.

        >>> import torch, tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for s in (2, 4, 6):
        ...     _ = save_checkpoint(root, s, {"w": torch.ones(1)}, None, {}, keep_last=5)
        >>> folder, moved = set_aside_later(root, 2)
        >>> folder.name, moved, [p.name for p in list_checkpoints(root)]
        ('superseded-00000002', ['step-00000006', 'step-00000004'], ['step-00000002'])
    """
    root = Path(root)
    kept = keep.resolve() if keep is not None else None
    later = [p for p in list_checkpoints(root) if int(_NAME.match(p.name).group(1)) > step and p.resolve() != kept]
    if not later:
        return None, []
    folder, k = root / f"superseded-{step:08d}", 1
    while folder.exists():
        k += 1
        folder = root / f"superseded-{step:08d}-{k}"
    folder.mkdir()
    for path in later:  # newest first: a move that fails leaves the older ones, closest to the step resumed
        os.replace(path, folder / path.name)
    _fsync_dir(folder)
    _fsync_dir(root)
    return folder, [p.name for p in later]


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file():
        p = p.parent
    return p


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint directory (or any file in it).

    A missing manifest, a file whose size or SHA-256 differs from it, or a file that does not parse
    raises a one-line :class:`CheckpointError` naming the file.
    """
    from safetensors.torch import load_file

    p = _resolve(path)
    manifest_path = p / MANIFEST_FILE
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {p} not found")
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {p} is incomplete: {manifest_path} is missing (the write was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text())
        entries = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint file {manifest_path} is corrupt ({e})") from None
    for name in (MODEL_FILE, STATE_FILE):
        if name not in entries:
            raise CheckpointError(f"checkpoint {p} is incomplete: {manifest_path} lists no {name}")
    for name, entry in entries.items():
        f = p / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint file {f} is missing")
        size = f.stat().st_size
        if size != entry.get("bytes"):
            raise CheckpointError(f"checkpoint file {f} is truncated or corrupt ({size} bytes, manifest says {entry.get('bytes')})")
        if _sha256(f) != entry.get("sha256"):
            raise CheckpointError(f"checkpoint file {f} is corrupt (SHA-256 differs from {MANIFEST_FILE})")
    try:
        model = load_file(str(p / MODEL_FILE))
        ema = load_file(str(p / EMA_FILE)) if EMA_FILE in entries else None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"checkpoint file {p / MODEL_FILE} does not parse as safetensors ({e})") from None
    try:
        state = torch.load(p / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # zipfile / unpickling errors of a damaged file
        raise CheckpointError(f"checkpoint file {p / STATE_FILE} does not load ({first_line(e, with_type=False)})") from None
    return Checkpoint(p, model, ema, state)


def launch_of(path: str | Path) -> dict[str, Any] | None:
    """The ``launch`` a checkpoint was saved with (see :func:`save_checkpoint`); None if it has none or its
    manifest does not read (:func:`load_checkpoint` says why)."""
    try:
        launch = json.loads((_resolve(path) / MANIFEST_FILE).read_text()).get("launch")
    except (OSError, ValueError, AttributeError):
        return None
    return launch if isinstance(launch, dict) else None


def find_latest(root: str | Path, warn: Callable[[str], None],
                written_by: dict[str, Any] | None = None) -> Checkpoint | None:
    """The newest checkpoint under ``root`` that verifies; a broken newer one is skipped with ``warn``.

    ``written_by``: only the checkpoints saved with that ``launch``. None when there is no checkpoint (of
    that launch); :class:`CheckpointError` when there are some but none verifies (starting over silently
    would throw their training away).

        >>> import torch, tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = save_checkpoint(root, 2, {"w": torch.ones(1)}, None, {}, launch={"resume": None})
        >>> _ = save_checkpoint(root, 4, {"w": torch.ones(1)}, None, {}, launch={"resume": "auto"})
        >>> find_latest(root, print).path.name, find_latest(root, print, written_by={"resume": None}).path.name
        ('step-00000004', 'step-00000002')
        >>> find_latest(root, print, written_by={"resume": "step-00000002"}) is None
        True
    """
    candidates = [p for p in list_checkpoints(root) if written_by is None or launch_of(p) == written_by]
    errors = []
    for path in candidates:
        try:
            return load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            later = candidates[candidates.index(path) + 1:]
            warn(f"{e}; falling back to {later[0].name if later else 'nothing'}")
    if errors:
        if written_by is not None:
            raise CheckpointError(f"no readable checkpoint of this launch in {root} (newest: {errors[0]})")
        raise CheckpointError(f"no readable checkpoint in {root} (newest: {errors[0]}); "
                              f"delete {root} to start over")
    return None
