"""The training step of K stacked runs, all of it on the device: forward (``vmap`` over the runs),
backward, the per-run checks, the optimizer, the learning-rate schedule and the epoch's sums, with no
host synchronisation, so that on a GPU the whole step is one CUDA graph (:meth:`StackedStep.capture`).

What one step does, for every run *k* at once:

1. the batch (:class:`~trainers.stack.batches.DeviceBatches` gathers it from device tables by the step
   counter, or the host copies it in);
2. ``vmap(functional_call(template))`` forward under autocast, the loss of each run, backward of their
   sum (each run's gradient is its own loss's: the runs share nothing);
3. run *k*'s step is taken when its loss and gradients are finite and it is still training; else its
   parameters, momentum and BatchNorm statistics stay as before the step (``run.nonfinite=skip``: it
   counts a skipped step; ``stop``: the run stops for good, and the step it stopped at is kept for the
   host, which writes its last good checkpoint when it next looks: :mod:`.group`);
4. the learning rate of each run is read from a per-epoch table by the same step counter (the runs'
   own timm schedulers fill it: the scheduler is in the graph too);
5. the loss sum, images and skipped steps of the epoch add up on the device; the host reads them at
   epoch ends, checkpoints and every ``run.log_every`` steps.

The SE block's fused op (:mod:`se_inject.ops`) has no batching rule: under the stack the template's
blocks run their PyTorch formulation (``kernels="torch"``), which ``vmap`` batches.

    >>> import torch
    >>> from torch import nn
    >>> from trainers.stack.flat import FlatStack
    >>> from trainers.stack.sgd import StackedSGD
    >>> nets = [nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(2)]
    >>> stack = FlatStack(nets)
    >>> sgd = StackedSGD.from_optimizers(stack, [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in nets])
    >>> step = StackedStep(stack, sgd, nn.CrossEntropyLoss(), torch.device("cpu"), num_batches=4)
    >>> step.begin_epoch(start_batch=0, lr=torch.full((2, 4), 0.1))
    >>> x, y = torch.randn(2, 16, 4), torch.randint(0, 3, (2, 16))
    >>> x[1, 0, 0] = float("nan")                  # run 1's batch holds a NaN: its step is not taken
    >>> before = stack.flat.clone()
    >>> step.run(x, y)
    >>> step.alive.tolist(), step.died_at.tolist(), torch.equal(stack.flat[1], before[1]), torch.equal(stack.flat[0], before[0])
    ([True, False], [-1, 0], True, False)
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .batches import DeviceBatches, stacked_channels_last
from .flat import FlatStack
from .sgd import StackedSGD, per_run_clip_

__all__ = ["StackedStep", "torch_formulation_"]

#: autograd accumulates each stacked parameter's gradient into its view of the flat gradient, strided alike but
#: not dense (the layout contract wants dense or contiguous), and torch warns about it once per process
_LAYOUT_WARNING = "grad and param do not obey the gradient layout contract"


def torch_formulation_(model: nn.Module) -> int:
    """Make every SE block of ``model`` run its PyTorch formulation (``kernels="torch"``), out of place: the
    fused op has no ``vmap`` batching rule, nor has the residual add written into its input (``out=``) that a
    block may use without autograd. Returns how many blocks it changed."""
    from se_inject.block import SqueezeExcite
    changed = 0
    for m in model.modules():
        if isinstance(m, SqueezeExcite):
            changed += m.kernels != "torch" or m.reuse_input
            m.kernels, m.reuse_input = "torch", False
    return changed


class StackedStep:
    """One training step of the runs of ``stack`` (see the module docstring) and their evaluation.

    ``batches``: device-side batches (the step reads its own), else the caller passes ``x, y`` to
    :meth:`run`. ``num_batches``: steps per epoch (the width of the learning-rate table)."""

    def __init__(self, stack: FlatStack, sgd: StackedSGD, loss_fn: nn.Module, device: torch.device, *,
                 num_batches: int, batches: DeviceBatches | None = None, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False, nonfinite: Literal["stop", "skip"] = "stop",
                 clip_grad: float | None = None, clip_mode: str = "norm", cuda_graphs: bool = False,
                 compile: bool = False) -> None:
        self.stack, self.sgd, self.loss_fn, self.device, self.batches = stack, sgd, loss_fn, device, batches
        self.amp_dtype, self.channels_last, self.nonfinite = amp_dtype, channels_last, nonfinite
        self.clip_grad, self.clip_mode, self.num_batches = clip_grad, clip_mode, num_batches
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self.template = stack.template
        torch_formulation_(self.template)
        template = self.template

        def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(template, (params, buffers), (x,))

        # randomness="error": a model that draws random numbers (dropout) cannot give each run its own draws
        # as it would alone; stacking refuses it rather than training it differently
        self._forward: Callable = torch.func.vmap(forward, randomness="error")
        if compile:
            self._forward = torch.compile(self._forward)
        self._loss = torch.func.vmap(loss_fn, randomness="error")
        self._allocate(stack.k)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def _allocate(self, k: int) -> None:
        dev = self.device
        self.step_index = torch.zeros((), dtype=torch.long, device=dev)  # the batch index in the epoch
        # float64, cast to the parameters' dtype in the update (as torch.optim.SGD's Python float lr is)
        self.lr = torch.zeros(k, self.num_batches, dtype=torch.float64, device=dev)
        self.loss_sum = torch.zeros(k, dtype=torch.float64, device=dev)
        self.samples = torch.zeros(k, dtype=torch.long, device=dev)
        self.skipped = torch.zeros(k, dtype=torch.long, device=dev)
        self.alive = torch.ones(k, dtype=torch.bool, device=dev)
        self.died_at = torch.full((k,), -1, dtype=torch.long, device=dev)  # the batch index of the step it stopped at
        self.died_loss = torch.zeros(k, dtype=torch.bool, device=dev)
        self.died_grad = torch.zeros(k, dtype=torch.bool, device=dev)

    def _counters(self) -> list[torch.Tensor]:
        return [self.step_index, self.loss_sum, self.samples, self.skipped, self.alive, self.died_at, self.died_loss,
                self.died_grad]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        # no weight-cast cache: a CUDA graph replays the casts (torch.cuda.graph's rule for autocast)
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    # -- the host side ---------------------------------------------------------------------------
    def begin_epoch(self, start_batch: int, lr: torch.Tensor, loss_sum: torch.Tensor | None = None,
                    samples: Sequence[int] | None = None, skipped: Sequence[int] | None = None) -> None:
        """Set the step counter, the learning-rate table ``(K, num_batches)`` (columns from ``start_batch`` on
        are read) and the epoch's sums (a run resumed mid-epoch brings its own), in place."""
        k = self.stack.k
        self.step_index.fill_(start_batch)
        self.lr.copy_(lr)
        self.loss_sum.copy_(loss_sum if loss_sum is not None else torch.zeros(k, dtype=torch.float64))
        self.samples.copy_(torch.tensor(list(samples) if samples is not None else [0] * k))
        self.skipped.copy_(torch.tensor(list(skipped) if skipped is not None else [0] * k))

    def run(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
        """One step of every run (``x``, ``y``: ``(K, B, ...)`` and ``(K, B)`` when the step has no ``batches``);
        with CUDA graphs, a replay of the captured step (captured at the first call)."""
        if not self.cuda_graphs:
            self._step(x, y)
            return
        if self.batches is None:
            if self.static is None:
                self.static = (torch.empty_like(x), torch.empty_like(y))
            self.static[0].copy_(x)
            self.static[1].copy_(y)
        if self.graph is None:
            try:
                self.capture()
            except RuntimeError as e:  # an op that cannot be captured: go on eagerly (the state is untouched)
                from se_inject.errors import first_line
                warnings.warn(f"run.cuda_graphs: the stacked step could not be captured ({first_line(e)}); "
                              "training goes on with eager steps", RuntimeWarning, stacklevel=2)
                self.cuda_graphs, self.static = False, None
                torch.cuda.synchronize()
                self._step(x, y)
                return
        self.graph.replay()

    def capture(self) -> None:
        """Capture :meth:`_step` in one CUDA graph. Its warm-up steps run on a side stream and are then undone
        (:meth:`warm_up`), so the captured run trains exactly as the eager one."""
        args = self.static if self.batches is None else (None, None)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        self.warm_up(3, side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(*args)
        self.graph = graph

    def warm_up(self, steps: int, stream: "torch.cuda.Stream | None" = None) -> None:
        """Run ``steps`` steps (on ``stream``), then put back every tensor a step writes: what a capture needs
        first (cuDNN's choices, the allocator's blocks) without training on it."""
        state = [*self.stack.state(), *self._counters()]
        saved = [t.clone() for t in state]
        start = self.step_index.clone()
        args = self.static if self.batches is None else (None, None)
        try:
            with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                for _ in range(steps):
                    self.step_index.copy_(start)  # the same step again: never past the epoch's tables
                    self._step(*args)
        finally:
            if stream is not None:
                torch.cuda.current_stream().wait_stream(stream)
            for t, s in zip(state, saved):
                t.copy_(s)

    def keep(self, runs: Sequence[int]) -> None:
        """Go on with ``runs`` only (indices in the current order); the next step recaptures its graph."""
        index = torch.tensor(list(runs), dtype=torch.long, device=self.device)
        kept = {name: getattr(self, name).index_select(0, index) for name in
                ("lr", "loss_sum", "samples", "skipped", "alive", "died_at", "died_loss", "died_grad")}
        step = self.step_index.clone()
        self.stack.keep(runs)
        if self.batches is not None:
            self.batches.keep(runs)
        self._allocate(len(runs))
        for name, value in kept.items():
            getattr(self, name).copy_(value)
        self.step_index.copy_(step)
        self.graph, self.static = None, None

    # -- the device side -------------------------------------------------------------------------
    def _step(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        st = self.stack
        if self.batches is not None:
            x, y = self.batches.at(self.step_index)
        if self.channels_last:
            x = stacked_channels_last(x)
        saved_b, saved_i = st.bflat.clone(), st.iflat.clone()  # what a step not taken puts back
        st.grad.zero_()
        with self._autocast():
            losses = self._loss(self._forward(st.params, st.buffers, x), y)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LAYOUT_WARNING)
            losses.sum().backward()
        with torch.no_grad():
            loss_ok = losses.isfinite()
            # the max-abs norm of each run's gradients: NaN/inf propagate, and it cannot overflow
            grad_ok = torch.linalg.vector_norm(st.grad, float("inf"), dim=1).isfinite()
            ok = self.alive & loss_ok & grad_ok
            if self.clip_grad:
                per_run_clip_(st.grad, self.clip_grad, self.clip_mode)
            lr = self.lr.index_select(1, self.step_index.view(1)).view(-1)
            self.sgd.step(st, lr, ok)
            st.bflat.copy_(torch.where(ok.index_select(0, st.brun), st.bflat, saved_b))
            st.iflat.copy_(torch.where(ok.index_select(0, st.irun), st.iflat, saved_i))
            batch = y.shape[1]
            self.loss_sum.add_(torch.where(ok, losses.detach().double() * batch, 0.0))
            self.samples.add_(ok.long() * batch)
            bad = self.alive & ~(loss_ok & grad_ok)
            if self.nonfinite == "skip":
                self.skipped.add_(bad.long())
            else:
                self.died_at.copy_(torch.where(bad, self.step_index, self.died_at))
                self.died_loss.logical_or_(bad & ~loss_ok)
                self.died_grad.logical_or_(bad & ~grad_ok)
                self.alive.logical_and_(~bad)
            self.step_index.add_(1)

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], limit: int | None = None) -> torch.Tensor:
        """``(K, 4)`` float64 sums over ``batches`` (``(K, B, ...)`` images, ``(K, B)`` targets): cross-entropy,
        top-1 hits, top-5 hits, images; :func:`trainers.loop.evaluate`'s for each run."""
        template = self.template
        template.eval()
        sums = torch.zeros(self.stack.k, 4, dtype=torch.float64, device=self.device)
        try:
            for i, (x, y) in enumerate(batches):
                if limit is not None and i >= limit:
                    break
                if self.channels_last:
                    x = stacked_channels_last(x)
                with self._autocast():
                    logits = self._forward(self.stack.params, self.stack.buffers, x)
                logits = logits.float()
                k5 = min(5, logits.shape[-1])
                ce = torch.func.vmap(lambda z, t: F.cross_entropy(z, t, reduction="sum"))(logits, y)
                hits = logits.topk(k5, dim=2).indices.eq(y.unsqueeze(2))
                sums += torch.stack([ce.double(), hits[..., :1].any(2).sum(1).double(), hits.any(2).sum(1).double(),
                                     torch.full_like(ce, y.shape[1], dtype=torch.float64)], dim=1)
        finally:
            template.train()
        return sums
