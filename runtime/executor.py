"""Execute one rank's instruction stream on real modules with ``torch.distributed``.

:class:`PipelineRunner` holds this rank's stage modules, an optimizer over their parameters and
the checked streams. :meth:`PipelineRunner.step` trains on one batch:

- the batch (on the ranks holding a first stage) and the targets (on the ranks holding a loss
  stage) are split along dimension 0 into ``num_microbatches`` equal microbatches. Usually
  stage 0 is the only first stage and the last stage the only loss stage; streams with several
  chains (:mod:`schedlang.isa`, stage graph: Chimera's two pipelines) have one of each per chain,
  and each microbatch runs through one chain;
- instructions run in stream order. Activations and gradients live in a buffer table keyed by
  (stage, microbatch); every tensor is dropped at its last use, and the table is empty at the
  end of a step (checked);
- ``F`` runs the stage module (a loss stage also the loss function); ``B`` computes the
  gradient w.r.t. the stage input only, ``W`` the parameter gradients, ``BW`` both, ``FB`` a
  forward then a backward. Two ways to split B and W (``split_backward``):

  * ``"autograd"`` (any module): ``B`` is ``torch.autograd.grad`` w.r.t. the stage input with the
    graph kept, capturing the gradient that reaches each weight node; ``W`` runs only the
    weight-gradient part from those nodes (:mod:`schedlang.runtime.autograd_split`), accumulated
    into ``.grad`` (graphs it cannot split, e.g. tied weights, get a second backward from the
    output restricted to the parameters). A first stage has no input gradient: its ``B`` does nothing and its ``W`` runs the
    whole backward (as PyTorch's pipelining does);
  * ``"kernels"``: the modules use :mod:`schedlang.kernels` split layers; ``B`` is one backward
    pass in which those layers stash their weight-gradient work in a ``WeightGradStore`` under
    (stage, microbatch) and ``W`` runs ``store.run_w(stage, mb)``. Parameters of other layers
    get their gradients during ``B``.

- point-to-point instructions use ``isend``/``irecv`` (``batch_isend_irecv`` for a ``BATCH``).
  A receive is posted where the stream says and waited for only when its tensor is first used,
  so computation between the two overlaps the transfer. Sends are waited for at the end of the
  step. Messages between two ranks match in issue order, which the checks guarantee.
  With ``comm_device="cpu"`` the tensors that cross ranks travel through host memory (sent
  from a host copy, received into a host buffer, moved to the compute device at first use):
  gloo cannot send CUDA tensors and NCCL refuses two ranks on one GPU, so this is how several
  processes sharing one GPU run a pipeline.
- ``REDUCE_GRAD`` scales a stage's gradients by 1/num_microbatches (the loss is a mean over
  microbatches). With ``dp_group`` it also averages them over the data-parallel replicas: one
  flat all-reduce per stage (a bucket holding all its gradients, not one call per parameter),
  started asynchronously where the stream puts ``REDUCE_GRAD`` (codegen: right after the stage's
  last backward), so it overlaps the rest of the backward; ``OPT_STEP`` waits for the buckets,
  steps the optimizer and zeroes the gradients. A stream without them gets them appended. With several
  chains, stages that run the same model part hold weight replicas: before the optimizer step
  their gradients are summed (within the rank, then across ranks through the lowest holder), so
  the replicas stay identical. Each stage needs its own module object. Likewise, parameters
  that are one parameter of the model but are held by several stages (``tied``: an embedding
  shared with the output head) get their gradients summed before the step, so the copies stay
  identical.

Asynchronous weight-update policies (streams with ``weights=stash``, ``stash+vsync`` or ``2bw``,
:mod:`schedlang.isa` version 2): each ``F``/``B``/``W``/``BW`` names the weight version of its
stage it uses (``ver``, counted from the start of the step), and ``UPDATE stage=s`` steps the
optimizer on that stage alone with the mean of the weight gradients accumulated since its
previous ``UPDATE``. A forward runs the stage module through ``torch.func.functional_call`` on
leaf tensors of its own that share the version's storage (so each microbatch's weight gradient
stays separate, and its backward sees exactly its forward's weights). The current version is the
module's parameters themselves (by reference); an ``UPDATE`` copies the parameters only when an
unfinished microbatch or a later forward still needs the version it replaces (the copy takes the
update, the old storage stays with the version), and a version is dropped once nothing needs it.
These streams need ``split_backward="autograd"`` and no ``dp_group``; anything else is refused.

The loss returned by :meth:`step` is the mean over microbatches of ``loss_fn(output, target)``,
on the rank holding the last stage; other ranks get None unless ``broadcast_loss=True``. When the
loss stages are on several ranks, every rank gets the loss (an all-reduce).

The shapes of the tensors that cross ranks are inferred once, at the first step: the rank
holding each stage runs it once without gradients on a zero tensor (a first stage on the first
real microbatch) and broadcasts the output shape and dtype. Later steps must use the same microbatch
shape. Each stage boundary carries exactly one tensor.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from schedlang.runtime.autograd_split import WeightWork, input_backward
from schedlang.runtime.fault import FaultMonitor, PipelineError
from schedlang.runtime.timeline import Event, event_name
from torch import nn

from schedlang.isa import Instr, Opcode, RankStream, Streams
from schedlang.isa_check import StreamError, check_streams

__all__ = ["PipelineRunner", "with_reductions"]

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
UserOp = Callable[["PipelineRunner", Instr], None]

_RUN_IDS = itertools.count()


class _Slot:
    """Buffers of one (stage, microbatch): input, output (the loss on the last stage), grads."""

    __slots__ = ("x", "x_wait", "out", "dy", "dy_wait", "dx", "done", "work", "leaves", "ver")

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None
        self.x_wait: tuple[Any, str, tuple[int, int]] | None = None  # work, text, (peer, n)
        self.out: torch.Tensor | None = None
        self.dy: torch.Tensor | None = None
        self.dy_wait: tuple[Any, str, tuple[int, int]] | None = None
        self.dx: torch.Tensor | None = None
        self.done = False  # the whole backward (input and weights) has run
        self.work: WeightWork | None = None  # what B captured for W (autograd split)
        self.leaves: list[torch.Tensor] | None = None  # this microbatch's weights (asynchronous policies)
        self.ver = -1  # the weight version they belong to


def with_reductions(streams: Streams) -> Streams:
    """Append ``REDUCE_GRAD`` for every stage a stream never reduces, and a final ``OPT_STEP``
    (not to streams under an asynchronous policy: their stages apply gradients with ``UPDATE``)."""
    if streams.weights != "flush":
        return streams
    ranks = []
    for rs in streams.ranks:
        instrs = list(rs.instrs)
        reduced = {i.stage for i in instrs if i.op is Opcode.REDUCE_GRAD}
        has_step = any(i.op is Opcode.OPT_STEP for i in instrs)
        tail = [Instr(Opcode.REDUCE_GRAD, stage=s) for s in rs.stages if s not in reduced]
        if has_step and tail and instrs[-1].op is Opcode.OPT_STEP:
            instrs = instrs[:-1] + tail + instrs[-1:]
        else:
            instrs += tail
        if not has_step:
            instrs.append(Instr(Opcode.OPT_STEP))
        ranks.append(RankStream(rs.rank, rs.stages, tuple(instrs)))
    return dataclasses.replace(streams, ranks=tuple(ranks))


class PipelineRunner:
    """Run this rank's part of a pipeline schedule; see the module docstring.

    Args:
        streams: the compiled schedule (all ranks' streams; they are checked as a whole).
        rank: this process's rank in the pipeline group (the stream to run).
        stage_modules: stage index -> module, exactly the stages the placement puts on ``rank``.
        loss_fn: ``loss_fn(last_stage_output, target) -> scalar``, a mean over the microbatch.
        optimizer_factory: builds the optimizer from the parameters of all local stages.
        split_backward: ``"autograd"`` (any module) or ``"kernels"`` (schedlang.kernels layers).
        prepost: post every receive this many instructions before the stream's own position
            (0: where the stream says). Receives stay in stream order; earlier posting lets the
            transfer overlap computation, at the price of holding the buffers longer.
        comm_device: where activations and gradients cross ranks (default: the compute
            device); ``"cpu"`` stages them through host memory (see the module docstring).
        group: the pipeline process group (default: the whole world, rank = global rank).
        dp_group: data-parallel replicas of this rank's stages, gradients are averaged over it.
        timeout: seconds an instruction may take before the watchdog stops every rank.
        fault_action: ``"exit"`` (a failure elsewhere ends this process, status 1) or ``"raise"``.
        store: the key-value store for fault reports (default: the default group's store).
        user_ops: handlers for ``USER`` instructions, by kind name.
        record: record a timeline event per instruction (:attr:`events`).
        tied: groups of ``(model part, parameter name)`` that are one parameter of the model
            (with one chain a part is a stage); their gradients are summed before each step.
    """

    def __init__(self, streams: Streams, rank: int, stage_modules: Mapping[int, nn.Module],
                 loss_fn: LossFn, optimizer_factory: OptimizerFactory | None = None, *,
                 split_backward: str = "autograd", group: Any = None, dp_group: Any = None,
                 device: torch.device | str | None = None, timeout: float = 60.0,
                 fault_action: str = "exit", store: Any = None,
                 user_ops: Mapping[str, UserOp] | None = None, record: bool = True,
                 prepost: int = 0, comm_device: torch.device | str | None = None,
                 tied: Sequence[Sequence[tuple[int, str]]] = ()) -> None:
        streams = with_reductions(streams)
        check_streams(streams, training=True)
        rs = streams.stream(rank)
        _check_modules(rs, stage_modules)
        self.user_ops = dict(user_ops or {})
        _check_user_ops(rs, self.user_ops)
        if split_backward not in ("autograd", "kernels"):
            raise ValueError(f"split_backward must be 'autograd' or 'kernels', not {split_backward!r}")
        self.streams, self.rank, self.stream = streams, rank, rs
        self.modules = {s: stage_modules[s] for s in rs.stages}
        self.loss_fn = loss_fn
        self.split_backward = split_backward
        self.group, self.dp_group = group, dp_group
        self.m = streams.num_microbatches
        # the stage graph (schedlang.isa): who feeds whom; several chains are weight replicas
        self._producer = {s: streams.producer(s) for s in range(streams.num_stages)}
        self._consumer = {s: streams.consumer(s) for s in range(streams.num_stages)}
        self._loss_stages = frozenset(streams.loss_stages)
        self._chains = streams.chains()
        self._replicas = _replica_sets(streams)
        self._tied = _tied_sets(streams, rank, self.modules, tied)
        self.device = torch.device(device) if device is not None else _module_device(self.modules.values())
        self.comm_device = torch.device(comm_device) if comm_device is not None else self.device
        self.params = {s: [p for p in mod.parameters() if p.requires_grad] for s, mod in self.modules.items()}
        all_params = list({id(p): p for s in rs.stages for p in self.params[s]}.values())
        self.optimizer = optimizer_factory(all_params) if optimizer_factory is not None else None
        self.wgrad_store: Any = None
        self.weights = streams.weights
        if self.weights != "flush":
            if split_backward != "autograd":
                raise StreamError(f"weights={self.weights} streams need split_backward='autograd' (the kernels "
                                  "split keeps no per-microbatch weight versions); refusing to run them "
                                  "under other semantics")
            if dp_group is not None:
                raise StreamError(f"weights={self.weights} streams with a data-parallel group are not supported")
        self._async = _AsyncWeights(self) if self.weights != "flush" else None
        if split_backward == "kernels":
            from schedlang.kernels.layers import WeightGradStore, attach_store

            self.wgrad_store = WeightGradStore()
            for mod in self.modules.values():
                attach_store(mod, self.wgrad_store)
        self._global = _global_ranks(group, streams.num_ranks)
        self.record = record
        if prepost < 0:
            raise ValueError("prepost must be >= 0")
        self.prepost = prepost
        self._recv_plan = [(index, part) for index, ins in enumerate(rs.instrs)
                           for part in (ins.parts if ins.op is Opcode.BATCH else (ins,)) if part.op.is_recv]
        self._next_recv = 0
        self.events: list[Event] = []
        self.step_index = 0
        self.peak_live = 0  # most (stage, microbatch) buffer entries alive at once in the last step
        self.peak_sends = 0  # most sends in flight (buffers held) at once in the last step
        self._shapes: dict[int, tuple[tuple[int, ...], torch.dtype]] | None = None
        self._mb_shape: tuple[int, ...] | None = None
        self._table: dict[tuple[int, int], _Slot] = {}
        self._sends: dict[tuple[int, int], tuple[Any, torch.Tensor]] = {}  # (peer, n) -> work, buffer
        self._sent: dict[int, int] = {}  # messages sent to / received from each peer this step
        self._received: dict[int, int] = {}
        self._release = send_release_points(streams, rank)
        self._losses: dict[int, torch.Tensor] = {}
        # data-parallel reductions in flight: (stage, work, flat bucket, the grads it averages)
        self._buckets: list[tuple[int, Any, torch.Tensor, list[torch.Tensor]]] = []
        self._inputs: Sequence[torch.Tensor] = ()
        self._targets: Sequence[Any] = ()
        if store is None and dist.is_available() and dist.is_initialized():
            store = _default_store()
        self.monitor = FaultMonitor(store, rank, prefix=f"schedlang/run{next(_RUN_IDS)}",
                                    timeout=timeout, action=fault_action)
        self.monitor.start()

    # ------------------------------------------------------------------ public API

    def step(self, inputs: torch.Tensor | None = None, targets: Any = None, *,
             broadcast_loss: bool = False) -> torch.Tensor | None:
        """Run one training step (the whole stream) and return the loss (see the module docstring)."""
        self._prepare(inputs, targets)
        current: tuple[int, Instr] | None = None
        try:
            for index, ins in enumerate(self.stream.instrs):
                current = (index, ins)
                self.monitor.check()
                self._run(index, ins)
            current = None
            self._finish_buckets()  # normally done by OPT_STEP already
            self._finish_sends()
            leftover = sorted(self._table)
            assert not leftover, f"buffers left at the end of the step: {leftover}"
            if self._async is not None:
                self._async.end_step()
        except PipelineError:
            raise
        except Exception as exc:
            where = f"instruction {current[0]} ({current[1]})" if current else "the end of the step"
            message = (f"rank {self.rank} failed at {where} in step {self.step_index}: "
                       f"{type(exc).__name__}: {exc}")
            origin: dict[str, object] = {"rank": self.rank, "instruction": current[0] if current else None,
                      "instr": str(current[1]) if current else None, "step": self.step_index,
                      "error": f"{type(exc).__name__}: {exc}"}
            published = self.monitor.publish(message)
            raise PipelineError(published, origin if self.monitor.was_first else None) from exc
        finally:
            self.monitor.end()
        self.step_index += 1
        return self._loss(broadcast_loss)

    def close(self) -> None:
        """Stop the fault watchdog (call before destroying the process group)."""
        self.monitor.close()

    @property
    def holds_loss(self) -> bool:
        """True on a rank that holds a stage computing the loss (it needs the targets)."""
        return any(s in self.modules for s in self._loss_stages)

    @property
    def holds_input(self) -> bool:
        """True on a rank that holds a stage reading the batch (it needs the inputs)."""
        return any(self._producer[s] == -1 for s in self.modules)

    def step_events(self, step: int) -> list[Event]:
        """The recorded events of one step."""
        return [e for e in self.events if e.step == step]

    # ------------------------------------------------------------------ step set-up and end

    def _prepare(self, inputs: torch.Tensor | None, targets: Any) -> None:
        if self._async is not None:
            self._async.start_step()
        self._table.clear()
        self._next_recv = 0
        self.peak_live = self.peak_sends = 0
        self._losses = {}
        self._inputs, self._targets = (), ()
        if self.holds_input:
            if inputs is None:
                raise ValueError(f"rank {self.rank} holds a first stage: step() needs the inputs")
            self._inputs = _split(inputs.to(self.device), self.m, "inputs")
        if self.holds_loss:
            if targets is None:
                raise ValueError(f"rank {self.rank} holds a loss stage: step() needs the targets")
            self._targets = _split(_to(targets, self.device), self.m, "targets")
        if self._shapes is None:
            self._shapes = self._infer_shapes()
            if self._inputs:
                self._mb_shape = tuple(self._inputs[0].shape)
        elif self._inputs and tuple(self._inputs[0].shape) != self._mb_shape:
            raise ValueError(f"microbatch shape {tuple(self._inputs[0].shape)} differs from the first "
                             f"step's {self._mb_shape}; build a new runner for a new shape")

    def _infer_shapes(self) -> dict[int, tuple[tuple[int, ...], torch.dtype]]:
        """Output shape and dtype of every stage but the loss stages, broadcast from its holder."""
        shapes: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}
        for s in (s for chain in self._chains for s in chain if s not in self._loss_stages):
            holder = self.streams.placement[s]
            obj: list[Any] = [None]
            if holder == self.rank:
                if self._producer[s] == -1:
                    x = self._inputs[0]
                else:
                    shape, dtype = shapes[self._producer[s]]
                    x = torch.zeros(shape, dtype=dtype, device=self.device)
                obj[0] = _probe(self.modules[s], x, self.device)
            if self.streams.num_ranks > 1:
                dist.broadcast_object_list(obj, src=self._global[holder], group=self.group)
            shape, dtype_name = obj[0]
            shapes[s] = (tuple(shape), getattr(torch, dtype_name))
        return shapes

    def _finish_sends(self) -> None:
        for work, _ in self._sends.values():
            work.wait()
        self._sends.clear()
        self._sent.clear()
        self._received.clear()

    def _release_sends(self, peer: int, n: int) -> None:
        """The n-th message from ``peer`` arrived: sends it had to receive first are complete."""
        for k in self._release.get((peer, n), ()):
            pending = self._sends.pop((peer, k), None)
            if pending is not None:
                pending[0].wait()  # the peer has posted the receive: this returns promptly

    def _loss(self, broadcast: bool) -> torch.Tensor | None:
        holders = {self.streams.placement[s] for s in self._loss_stages}
        if len(holders) > 1:
            # the loss stages (one per chain) live on several ranks: sum their microbatch losses
            local = [self._losses[i].to(torch.float64) for i in sorted(self._losses)]
            total = torch.stack(local).sum() if local else torch.zeros((), dtype=torch.float64, device=self.device)
            self._losses = {}
            dist.all_reduce(total, group=self.group)
            return total / self.m
        loss = torch.stack([self._losses[i] for i in range(self.m)]).mean() if self.holds_loss else None
        self._losses = {}
        if not broadcast or self.streams.num_ranks == 1:
            return loss
        buf = loss if loss is not None else torch.zeros((), dtype=torch.float64, device=self.device)
        buf = buf.to(torch.float64).contiguous()
        (holder,) = holders
        dist.broadcast(buf, src=self._global[holder], group=self.group)
        return buf

    # ------------------------------------------------------------------ the interpreter

    def _run(self, index: int, ins: Instr) -> None:
        if self.prepost:
            self._post_receives_until(index + self.prepost)
        if ins.op is Opcode.BATCH:
            self._timed(index, ins, self._batch)
        elif ins.op.is_p2p:
            self._timed(index, ins, lambda i: self._p2p([i]))
        else:
            self._timed(index, ins, self._HANDLERS[ins.op].__get__(self))

    def _timed(self, index: int, ins: Instr, fn: Callable[[Instr], None]) -> None:
        self._wait_inputs(index, ins)
        self.monitor.begin(f"instruction {index} ({ins}) in step {self.step_index}")
        start = time.perf_counter_ns()
        fn(ins)
        end = time.perf_counter_ns()
        self.monitor.end()
        if self.record:
            self.events.append(Event(self.rank, self.step_index, index, event_name(ins.op, ins.kind),
                                     ins.stage, ins.mb, start, end))

    def _wait_inputs(self, index: int, ins: Instr) -> None:
        """Wait for the receives an instruction consumes (recorded as ``wait`` events)."""
        for work, what, channel in self._pending_for(ins):
            self.monitor.begin(f"instruction {index} ({ins}) in step {self.step_index}, waiting for {what}")
            start = time.perf_counter_ns()
            try:
                work.wait()
            except Exception as exc:
                raise RuntimeError(f"waiting for {what}: {exc}") from exc
            self._release_sends(*channel)
            end = time.perf_counter_ns()
            self.monitor.end()
            if self.record:
                self.events.append(Event(self.rank, self.step_index, index, f"wait {ins.op.value}",
                                         ins.stage, ins.mb, start, end, cat="wait"))

    def _pending_for(self, ins: Instr) -> Iterable[tuple[Any, str, tuple[int, int]]]:
        keys: list[tuple[str, int, int]] = []
        if ins.op in (Opcode.F, Opcode.FB):
            keys.append(("x", ins.stage, ins.mb))
        if ins.op in (Opcode.B, Opcode.BW):
            keys.append(("dy", ins.stage, ins.mb))
        if ins.op is Opcode.FB:
            keys.append(("dy", ins.stage2, ins.mb2))
        for field, s, i in keys:
            slot = self._table.get((s, i))
            attr = f"{field}_wait"
            pending = getattr(slot, attr) if slot is not None else None
            if pending is not None:
                setattr(slot, attr, None)
                yield pending

    def _slot(self, stage: int, mb: int) -> _Slot:
        slot = self._table.get((stage, mb))
        if slot is None:
            slot = self._table[(stage, mb)] = _Slot()
            self.peak_live = max(self.peak_live, len(self._table))
        return slot

    def _local(self, stage: int) -> bool:
        return stage in self.modules

    # ------------------------------------------------------------------ compute

    def _forward(self, s: int, i: int, ver: int = -1) -> None:
        slot = self._slot(s, i)
        q = self._producer[s]
        if q == -1:
            x = self._inputs[i]
        elif self._local(q):
            prev = self._table[(q, i)].out
            assert prev is not None
            x = slot.x = prev.detach().requires_grad_()
        else:
            assert slot.x is not None, "receive missing"
            x = slot.x = slot.x.to(self.device).requires_grad_()
        with torch.enable_grad():
            if self._async is not None:
                out = self._async.forward(s, slot, x, ver)
            else:
                out = self.modules[s](x)
            if s in self._loss_stages:
                out = self.loss_fn(out, self._targets[i])
                self._losses[i] = out.detach()
        slot.out = out

    def _output_grad(self, s: int, i: int, slot: _Slot) -> torch.Tensor | None:
        c = self._consumer[s]
        if c == -1:
            return None
        if self._local(c):
            nxt = self._table[(c, i)]
            dy, nxt.dx = nxt.dx, None
            self._maybe_free(c, i)
            return dy
        return slot.dy.to(self.device) if slot.dy is not None else None

    def _backward_input(self, s: int, i: int) -> None:
        slot = self._table[(s, i)]
        slot.dy = self._output_grad(s, i, slot)
        assert slot.out is not None
        if self.wgrad_store is not None:
            with self.wgrad_store.scope(s, i), torch.enable_grad():
                torch.autograd.backward(slot.out, slot.dy)
            slot.dx = slot.x.grad if slot.x is not None else None
            slot.out = slot.dy = slot.x = None
        elif self._producer[s] != -1:
            assert slot.x is not None
            slot.dx, slot.work = input_backward(slot.out, slot.x, slot.dy, self._weights_of(s, slot))
            slot.x = None
        # autograd path, a first stage: no input gradient; W runs the whole backward.

    def _backward_weight(self, s: int, i: int) -> None:
        slot = self._table[(s, i)]
        if self.wgrad_store is not None:
            self.wgrad_store.run_w(s, i)
        elif slot.work is not None:  # from the gradients B captured at the weight nodes
            slot.work.run()
            slot.work = None
            slot.out = slot.dy = None
        else:  # a first stage, or a graph the capture does not handle: backward again from the output
            assert slot.out is not None
            if self.params[s]:
                torch.autograd.backward(slot.out, slot.dy, inputs=self._weights_of(s, slot))
            slot.out = slot.dy = None
        slot.done = True
        if self._async is not None:
            self._async.gradient_done(s, slot)
        self._maybe_free(s, i)

    def _backward_full(self, s: int, i: int) -> None:
        slot = self._table[(s, i)]
        dy = self._output_grad(s, i, slot)
        assert slot.out is not None
        with torch.enable_grad():
            torch.autograd.backward(slot.out, dy)
        slot.dx = slot.x.grad if slot.x is not None else None
        slot.out = slot.dy = slot.x = None
        slot.done = True
        if self._async is not None:
            self._async.gradient_done(s, slot)
        self._maybe_free(s, i)

    def _weights_of(self, s: int, slot: _Slot) -> Sequence[torch.Tensor]:
        """The weight tensors a backward differentiates: the microbatch's own under an
        asynchronous policy, else the stage's parameters."""
        return slot.leaves if slot.leaves is not None else self.params[s]

    def _maybe_free(self, s: int, i: int) -> None:
        slot = self._table.get((s, i))
        if slot is not None and slot.done and slot.dx is None:
            del self._table[(s, i)]

    def _op_f(self, ins: Instr) -> None:
        self._forward(ins.stage, ins.mb, ins.ver)

    def _op_b(self, ins: Instr) -> None:
        self._backward_input(ins.stage, ins.mb)

    def _op_w(self, ins: Instr) -> None:
        self._backward_weight(ins.stage, ins.mb)

    def _op_bw(self, ins: Instr) -> None:
        self._backward_full(ins.stage, ins.mb)

    def _op_fb(self, ins: Instr) -> None:
        self._forward(ins.stage, ins.mb)
        if ins.kind == "BW":
            self._backward_full(ins.stage2, ins.mb2)
        else:
            self._backward_input(ins.stage2, ins.mb2)

    def _op_user(self, ins: Instr) -> None:
        self.user_ops[ins.kind](self, ins)

    def _op_reduce(self, ins: Instr) -> None:
        """Scale the stage's gradients by 1/m; with ``dp_group``, start one flat all-reduce of
        them (a bucket per stage), which runs while the stream goes on and is waited for at the
        optimizer step."""
        grads = [p.grad for p in self.params[ins.stage] if p.grad is not None]
        if self.dp_group is None:
            for g in grads:
                g.mul_(1.0 / self.m)
            return
        if not grads:
            return
        # the 1/m scale and the 1/replicas mean folded into the flat copy: one pass over the grads
        size = dist.get_world_size(self.dp_group)
        flat = torch.cat([g.reshape(-1) for g in grads]).mul_(1.0 / (self.m * size))
        work = dist.all_reduce(flat, group=self.dp_group, async_op=True)
        self._buckets.append((ins.stage, work, flat, grads))

    def _finish_buckets(self) -> None:
        """Wait for the data-parallel reductions and copy the averaged gradients back."""
        for _, work, flat, grads in self._buckets:
            work.wait()
            at = 0
            for g in grads:
                n = g.numel()
                g.copy_(flat[at:at + n].view_as(g))
                at += n
        self._buckets.clear()

    def _op_step(self, ins: Instr) -> None:
        self._finish_buckets()
        self._sum_replicas()
        self._sum_tied()
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def _sum_replicas(self) -> None:
        """Stages that run the same model part (one per chain) sum their gradients.

        Parts in ascending order on every rank; per part, the holders send their local sums to
        the lowest holder, which adds them in rank order and sends the total back, so every
        replica steps with the same gradient.
        """
        for part, stages in self._replicas:
            mine = [s for s in stages if s in self.modules]
            if not mine:
                continue
            holders = sorted({self.streams.placement[s] for s in stages})
            flats = [self._flat_grad(s) for s in mine]
            if any(f.numel() != flats[0].numel() for f in flats):
                raise ValueError(f"replicas of model part {part} (stages {mine}) differ in size")
            total = self._sum_over(holders, torch.stack(flats).sum(0) if len(flats) > 1 else flats[0])
            for s in mine:
                self._set_flat_grad(s, total)

    def _sum_over(self, holders: Sequence[int], total: torch.Tensor) -> torch.Tensor:
        """The sum of ``total`` over the ranks ``holders`` (ascending, this rank among them).

        The others send theirs to the lowest holder, which adds them in rank order and sends the
        sum back: every holder gets the same bits.
        """
        if len(holders) < 2:
            return total
        leader = holders[0]  # tensors cross ranks on comm_device (host memory for gloo with CUDA)
        if self.rank == leader:
            for r in holders[1:]:
                other = torch.empty_like(total, device=self.comm_device)
                dist.recv(other, self._global[r], group=self.group)
                total = total + other.to(self.device)
            for r in holders[1:]:
                dist.send(total.to(self.comm_device), self._global[r], group=self.group)
            return total
        dist.send(total.to(self.comm_device), self._global[leader], group=self.group)
        other = torch.empty_like(total, device=self.comm_device)
        dist.recv(other, self._global[leader], group=self.group)
        return other.to(self.device)

    def _sum_tied(self) -> None:
        """Sum the gradients of every tied parameter over the places that hold it (in order)."""
        for holders, params in self._tied:
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            total = self._sum_over(holders, torch.stack(grads).sum(0) if len(grads) > 1 else grads[0])
            for p in params:
                p.grad = total.clone()

    def _flat_grad(self, s: int) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.params[s]]) if self.params[s] else torch.zeros(0, device=self.device)

    def _set_flat_grad(self, s: int, flat: torch.Tensor) -> None:
        at = 0
        for p in self.params[s]:
            n = p.numel()
            p.grad = flat[at:at + n].view_as(p).clone()
            at += n

    def _op_update(self, ins: Instr) -> None:
        assert self._async is not None, "UPDATE in flush streams (the checker refuses them)"
        self._async.update(ins.stage)

    _HANDLERS: dict[Opcode, Callable[[PipelineRunner, Instr], None]] = {
        Opcode.F: _op_f, Opcode.B: _op_b, Opcode.W: _op_w, Opcode.BW: _op_bw, Opcode.FB: _op_fb, Opcode.USER: _op_user,
        Opcode.REDUCE_GRAD: _op_reduce, Opcode.OPT_STEP: _op_step, Opcode.UPDATE: _op_update,
    }

    # ------------------------------------------------------------------ communication

    def _batch(self, ins: Instr) -> None:
        self._p2p(list(ins.parts))

    def _post_receives_until(self, last: int) -> None:
        """Pre-post, one by one and in stream order, the receives of instructions up to ``last``."""
        while self._next_recv < len(self._recv_plan) and self._recv_plan[self._next_recv][0] <= last:
            self._p2p([self._recv_plan[self._next_recv][1]], preposted=False)
            self._next_recv += 1

    def _p2p(self, parts: list[Instr], preposted: bool | None = None) -> None:
        """Post sends and receives; receives are waited for by their first consumer.

        With ``prepost`` the stream's receives were already posted (in stream order, so each
        channel keeps its order): only the sends remain.
        """
        if preposted is None and self.prepost:
            parts = [p for p in parts if p.op.is_send]
            if not parts:
                return
        ops = [self._p2p_op(p) for p in parts]
        if len(ops) == 1:
            fn, tensor, peer = ops[0]
            works = [fn(tensor, peer, group=self.group)]
        else:
            works = dist.batch_isend_irecv([dist.P2POp(fn, t, peer, group=self.group) for fn, t, peer in ops])
        for part, (_, tensor, _), work in zip(parts, ops, works, strict=True):
            count = self._sent if part.op.is_send else self._received
            n = count.get(part.peer, 0)
            count[part.peer] = n + 1
            if part.op.is_send:
                self._sends[(part.peer, n)] = (work, tensor)
                self.peak_sends = max(self.peak_sends, len(self._sends))
                continue
            slot = self._slot(part.stage, part.mb)
            pending = (work, f"{part} from rank {part.peer}", (part.peer, n))
            if part.op is Opcode.RECV_ACT:
                slot.x, slot.x_wait = tensor, pending
            else:
                slot.dy, slot.dy_wait = tensor, pending

    def _p2p_op(self, ins: Instr) -> tuple[Callable[..., Any], torch.Tensor, int]:
        peer = self._global[ins.peer]
        assert self._shapes is not None
        if ins.op is Opcode.SEND_ACT:
            out = self._table[(ins.stage, ins.mb)].out
            assert out is not None
            return dist.isend, out.detach().to(self.comm_device).contiguous(), peer
        if ins.op is Opcode.SEND_GRAD:
            slot = self._table[(ins.stage, ins.mb)]
            dx, slot.dx = slot.dx, None
            assert dx is not None
            self._maybe_free(ins.stage, ins.mb)
            return dist.isend, dx.to(self.comm_device).contiguous(), peer
        producer = self._producer[ins.stage] if ins.op is Opcode.RECV_ACT else ins.stage
        shape, dtype = self._shapes[producer]
        return dist.irecv, torch.empty(shape, dtype=dtype, device=self.comm_device), peer



# ---------------------------------------------------------------------- weight versions


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A tensor on ``t``'s storage with a version counter of its own: an in-place update of ``t``
    would change it silently, so a version's storage is never updated in place while needed."""
    with torch.no_grad():
        return torch.empty(0, dtype=t.dtype, device=t.device).set_(
            t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


class _AsyncWeights:
    """The weight versions of this rank's stages under an asynchronous policy (module docstring)."""

    def __init__(self, runner: PipelineRunner) -> None:
        from collections import Counter

        self.r = runner
        self.names = {s: [n for n, p in mod.named_parameters() if p.requires_grad]
                      for s, mod in runner.modules.items()}
        self.versions: dict[int, dict[int, list[torch.Tensor]]] = {}
        self.current: dict[int, int] = {}
        self.acc: dict[int, list[torch.Tensor] | None] = {}
        self.acc_n: dict[int, int] = {}
        self.unfinished: dict[int, Counter[int]] = {}
        self.future: dict[int, Counter[int]] = {}
        self._plan: dict[int, Counter[int]] = {s: Counter() for s in runner.modules}
        for ins in runner.stream.instrs:
            if ins.op is Opcode.F:
                self._plan[ins.stage][ins.ver] += 1
        self.copies = 0  # parameter copies made by updates (a version still needed), all steps

    def start_step(self) -> None:
        from collections import Counter

        for s in self.r.modules:
            self.current[s] = 0
            self.versions[s] = {0: [_alias(p) for p in self.r.params[s]]}
            self.acc[s], self.acc_n[s] = None, 0
            self.unfinished[s] = Counter()
            self.future[s] = Counter(self._plan[s])

    def end_step(self) -> None:
        for s in self.r.modules:
            assert self.acc_n[s] == 0, f"stage {s}: weight gradients left unapplied at the end of the step"
            assert not +self.unfinished[s], f"stage {s}: microbatches left unfinished"

    def _needed(self, s: int, v: int) -> bool:
        return self.future[s][v] > 0 or self.unfinished[s][v] > 0

    def _drop_unneeded(self, s: int) -> None:
        for v in [v for v in self.versions[s] if v != self.current[s] and not self._needed(s, v)]:
            del self.versions[s][v]

    def forward(self, s: int, slot: _Slot, x: torch.Tensor, ver: int) -> torch.Tensor:
        from torch.func import functional_call

        tensors = self.versions[s].get(ver)
        if tensors is None:
            raise RuntimeError(f"stage {s} has no weight version {ver} (held: {sorted(self.versions[s])})")
        leaves = [_alias(t).requires_grad_() for t in tensors]
        slot.leaves, slot.ver = leaves, ver
        self.future[s][ver] -= 1
        self.unfinished[s][ver] += 1
        return functional_call(self.r.modules[s], dict(zip(self.names[s], leaves, strict=True)), (x,))  # type: ignore[no-any-return]

    def gradient_done(self, s: int, slot: _Slot) -> None:
        """A microbatch's weight gradient is complete: add it to the stage's accumulator."""
        assert slot.leaves is not None
        grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in slot.leaves]
        acc = self.acc[s]
        if acc is None:
            self.acc[s] = [g.detach().clone() for g in grads]
        else:
            for a, g in zip(acc, grads, strict=True):
                a.add_(g)
        self.acc_n[s] += 1
        self.unfinished[s][slot.ver] -= 1
        slot.leaves = None
        self._drop_unneeded(s)

    def update(self, s: int) -> None:
        """Step stage ``s`` with the mean accumulated gradient; the result is the next version."""
        acc, n = self.acc[s], self.acc_n[s]
        if acc is None or n == 0:
            raise RuntimeError(f"UPDATE of stage {s} with no weight gradient accumulated")
        params = self.r.params[s]
        cur = self.current[s]
        with torch.no_grad():
            if self._needed(s, cur):  # the version stays in use: the update goes to a copy
                for p in params:
                    p.data = p.data.clone()
                self.copies += 1
            else:
                del self.versions[s][cur]
            for p, a in zip(params, acc, strict=True):
                p.grad = a.div_(n)
        if self.r.optimizer is not None:
            self.r.optimizer.step()
        for p in params:
            p.grad = None
        self.acc[s], self.acc_n[s] = None, 0
        self.current[s] = cur + 1
        self.versions[s][cur + 1] = [_alias(p) for p in params]
        self._drop_unneeded(s)


# ---------------------------------------------------------------------- helpers


def send_release_points(streams: Streams, rank: int) -> dict[tuple[int, int], list[int]]:
    """When this rank may wait for its sends without risk: ``(peer, n) -> [k, ...]``.

    Gloo send handles only complete through ``wait()``, and waiting for a send before the peer
    posts the matching receive could deadlock. But once the n-th message from ``peer`` has
    arrived, every message of ours that ``peer`` receives at or before the instruction that sent
    that n-th message (sends and receives in one ``BATCH`` count as one instruction) has its
    receive posted, so waiting for our k-th send to ``peer`` returns promptly. Each send is
    listed under the first such n; sends with none are waited for at the end of the step.
    """
    out: dict[tuple[int, int], list[int]] = {}
    for peer_stream in streams.ranks:
        peer = peer_stream.rank
        if peer == rank:
            continue
        recv_at: list[int] = []  # instruction index of the peer's k-th receive from us
        send_at: list[int] = []  # instruction index of the peer's n-th send to us
        for index, ins in enumerate(peer_stream.instrs):
            for part in ins.parts if ins.op is Opcode.BATCH else (ins,):
                if part.op.is_recv and part.peer == rank:
                    recv_at.append(index)
                elif part.op.is_send and part.peer == rank:
                    send_at.append(index)
        n = 0
        for k, at in enumerate(recv_at):
            while n < len(send_at) and send_at[n] < at:
                n += 1
            if n < len(send_at):
                out.setdefault((peer, n), []).append(k)
    return out


def _replica_sets(streams: Streams) -> list[tuple[int, tuple[int, ...]]]:
    """(model part, its stages) for every part run by more than one stage, parts ascending."""
    by_part: dict[int, list[int]] = {}
    for s in range(streams.num_stages):
        by_part.setdefault(streams.part(s), []).append(s)
    return [(k, tuple(v)) for k, v in sorted(by_part.items()) if len(v) > 1]


def _tied_sets(streams: Streams, rank: int, modules: Mapping[int, nn.Module],
               tied: Sequence[Sequence[tuple[int, str]]]) -> list[tuple[list[int], list[nn.Parameter]]]:
    """Per tied group this rank holds a piece of: (ranks holding it, ascending; local parameters)."""
    if tied and len(streams.chains()) > 1:
        raise ValueError("tied parameters with several chains (weight replicas) are not supported")
    out = []
    for group in tied:
        parts = {k for k, _ in group}
        bad = [k for k in parts if not 0 <= k < streams.num_parts]
        if bad:
            raise ValueError(f"tied parameter group {list(group)} names model parts {bad}; there are "
                             f"{streams.num_parts}")
        holders = sorted({streams.placement[s] for s in range(streams.num_stages) if streams.part(s) in parts})
        if rank not in holders:
            continue
        params = [modules[s].get_parameter(name) for s in sorted(modules)
                  for k, name in group if streams.part(s) == k]
        out.append((holders, params))
    return out


def _check_modules(rs: RankStream, modules: Mapping[int, nn.Module]) -> None:
    missing = [s for s in rs.stages if s not in modules]
    extra = sorted(s for s in modules if s not in rs.stages)
    if missing:
        raise StreamError(f"rank {rs.rank}: no module for stage(s) {missing} (the stream runs stages "
                          f"{list(rs.stages)})")
    if extra:
        raise StreamError(f"rank {rs.rank}: modules given for stage(s) {extra} that the stream does "
                          f"not place on this rank (it runs stages {list(rs.stages)})")
    owner: dict[int, int] = {}
    for s in rs.stages:
        first = owner.setdefault(id(modules[s]), s)
        if first != s:
            raise StreamError(f"rank {rs.rank}: stages {first} and {s} are given the same module object; "
                              "give each stage its own (replicas stay in sync through their gradients)")


def _check_user_ops(rs: RankStream, handlers: Mapping[str, UserOp]) -> None:
    for index, ins in enumerate(rs.instrs):
        if ins.op is Opcode.USER and ins.kind not in handlers:
            raise StreamError(f"rank {rs.rank}, instruction {index} ({ins}): no handler for user op "
                              f"kind {ins.kind!r} (pass user_ops={{{ins.kind!r}: fn}})")


def _global_ranks(group: Any, n: int) -> list[int]:
    if group is None or not dist.is_initialized():
        return list(range(n))
    return [dist.get_global_rank(group, r) for r in range(n)]


def _default_store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # a private helper: without it, only the local stall timeout works
        return None


def _module_device(modules: Iterable[nn.Module]) -> torch.device:
    for mod in modules:
        for p in itertools.chain(mod.parameters(), mod.buffers()):
            return p.device
    return torch.device("cpu")


def _to(x: Any, device: torch.device) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _split(x: Any, m: int, what: str) -> Sequence[Any]:
    if isinstance(x, torch.Tensor):
        if x.shape[0] % m:
            raise ValueError(f"{what}: batch dimension {x.shape[0]} is not divisible by {m} microbatches")
        return x.chunk(m)
    if isinstance(x, Sequence) and len(x) == m:
        return x
    raise ValueError(f"{what}: expected a tensor or a list of {m} microbatches")


def _probe(module: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[list[int], str]:
    """Run ``module`` once without gradients (and without touching the RNG) for its output shape."""
    devices = [device] if device.type == "cuda" else []
    was_training = module.training
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        module.eval()
        try:
            y = module(x)
        finally:
            module.train(was_training)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"a stage must return one tensor, got {type(y).__name__}")
    return list(y.shape), str(y.dtype).removeprefix("torch.")
