"""From a model to its fastest schedule: profile, partition, schedule every candidate, run the best.

:func:`schedlang.api.tune` runs the loop ``schedlang tune`` prints; this module holds its pieces
(the candidates, the result, the parameters from a profile, the ``.sched`` text of the choice):

1. Profile the layers of the model (built by its factory for ``layers_from`` stages, default
   ``2 * nproc`` so that placements with two chunks per rank have a layer per stage).
2. Partition them (:mod:`schedlang.partition`; ``auto`` minimises the slowest stage) into
   ``nproc`` stages for the one-chunk schedules and into ``2 * nproc`` for the two-chunk ones
   (interleaved 1F1B, ZB-V and its lower-memory variants), and profile those stages.
3. Schedule every candidate on the measured costs, memory in units of one microbatch's
   activations on stage 0 under the memory limit: the built-ins that fit it, the zero-bubble
   greedy search (``zb-auto``) and ``zb-v`` under it, and the CP-SAT optimizer under it (wall-
   clock ``time_limit``, objective the step's makespan). A candidate that does not fit is a row
   with its reason. The prediction is the simulated makespan of one step: the fused backward
   of 1F1B-like schedules at its own measured time, communication ``tc`` per message between
   ranks as measured (a stage's output sent between two worker processes), and, when the ranks
   outnumber the cores they run on (processes on one CPU), the cores shared among the ranks
   that compute at each moment (:func:`schedlang.simulate.shared_makespan`).
4. Calibrate (where each rank has its own core and no ``tc`` was given): run 1F1B first and fit
   to its run the ops' speed against the profile and what a message costs in a run
   (:func:`calibrate`), then simulate every candidate again in its own orders with both
   (:func:`with_comm`).
5. Run the ``top`` best predicted (and 1F1B, the baseline) for ``steps`` steps on ``nproc``
   processes, and measure each step's makespan (median over the steps after the first) and each
   rank's peak of activations saved for backward.
6. Choose the candidate with the least measured step time (the least predicted among those not
   run cannot be chosen: a choice is measured), and write it as a ``.sched`` program with
   explicit orders and as PyTorch's compute-only schedule CSV.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schedlang.source import SchedlangError

__all__ = ["Calibration", "Candidate", "TuneResult", "calibrate", "candidate_specs", "check_machine_options",
           "check_options", "fit_op_times", "params_for", "sched_text", "with_comm"]

COSTS = ("tf", "tb", "tw", "mem_f", "mem_w")


@dataclass
class Candidate:
    """One schedule tried: ``name`` (what the table shows), the program and scheduler it comes
    from, chunks per rank ``v``; then what was predicted and (for those run) measured. Times in
    ms; ``*_peak`` in activation units (one microbatch's activations on stage 0), ``*_bytes``
    in bytes; ``*_busy_ms`` is the busiest rank's compute time in one step (measured: the median
    over the timed steps), which tells slower compute from more waiting."""

    name: str
    path: str
    scheduler: str | None
    v: int
    error: str = ""
    predicted_ms: float = math.nan
    predicted_peak: float = math.nan
    predicted_peak_bytes: float = math.nan
    measured_ms: float = math.nan
    measured_steps_ms: list[float] = field(default_factory=list)
    measured_peak_bytes: float = math.nan
    measured_peak: float = math.nan
    predicted_own_cores_ms: float = math.nan  # the simulator's makespan, a processor per rank
    predicted_busy_ms: float = math.nan
    measured_busy_ms: float = math.nan
    busy_steps_ms: list[float] = field(default_factory=list)
    run_error: str = ""
    chosen: bool = False
    program: Any = None
    predicted_first_ms: float = math.nan  # before the message cost was calibrated on 1F1B's run
    op_samples: list[tuple[float, float]] = field(default_factory=list)  # (planned, measured) ms, first run

    @property
    def error_pct(self) -> float:
        """(predicted - measured) / measured, in percent; NaN when not run."""
        if math.isnan(self.measured_ms) or self.measured_ms == 0:
            return math.nan
        return 100.0 * (self.predicted_ms - self.measured_ms) / self.measured_ms

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``schedlang tune --json``); NaN becomes ``None``."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {"name": self.name, "program": self.path, "scheduler": self.scheduler, "v": self.v,
                "error": self.error or None, "predicted_ms": num(self.predicted_ms),
                "predicted_own_cores_ms": num(self.predicted_own_cores_ms),
                "predicted_before_calibration_ms": num(self.predicted_first_ms),
                "measured_ms": num(self.measured_ms), "measured_steps_ms": self.measured_steps_ms,
                "prediction_error_pct": num(self.error_pct),
                "predicted_peak_activations": num(self.predicted_peak),
                "predicted_peak_bytes": num(self.predicted_peak_bytes),
                "measured_peak_activations": num(self.measured_peak),
                "measured_peak_bytes": num(self.measured_peak_bytes),
                "predicted_busy_ms": num(self.predicted_busy_ms), "measured_busy_ms": num(self.measured_busy_ms),
                "measured_busy_steps_ms": self.busy_steps_ms,
                "run_error": self.run_error or None, "chosen": self.chosen}


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` fitted: an op planned at ``t`` ms takes ``scale * t + overhead_ms``
    in a run, a message between ranks ``message_ms``; ``samples`` are the (planned, measured) op
    times in ms the first two came from (none when only the busiest rank's compute was known)."""

    scale: float
    overhead_ms: float
    message_ms: float
    samples: tuple[tuple[float, float], ...] = ()


@dataclass
class TuneResult:
    """What :func:`tune` found: every candidate (best predicted first), the chosen one, the
    partitions (chunks per rank -> the profile of its stages), the activation unit in bytes,
    and the chosen schedule as ``.sched`` text and as PyTorch CSV text."""

    candidates: list[Candidate]
    chosen: Candidate | None
    profiles: dict[int, Any]
    unit_bytes: float
    mem_limit: float
    sched_text: str = ""
    csv_text: str = ""
    notes: list[str] = field(default_factory=list)
    comm_alone_ms: float = math.nan  # one message between two processes, measured (or --tc)
    # what the predictions assume: fitted to 1F1B's run, or scale 1, no overhead, the message alone
    calibration: Calibration = field(default_factory=lambda: Calibration(1.0, 0.0, math.nan))

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``schedlang tune --json``)."""
        fit = self.calibration
        return {
            "units": {"time": "ms", "memory": "activations of one microbatch on stage 0",
                      "activation_bytes": self.unit_bytes},
            "mem_limit": None if math.isinf(self.mem_limit) else self.mem_limit,
            "chosen": self.chosen.name if self.chosen else None,
            "calibration": {"message_alone_ms": None if math.isnan(self.comm_alone_ms) else self.comm_alone_ms,
                            "message_ms": None if math.isnan(fit.message_ms) else fit.message_ms,
                            "compute_scale": fit.scale, "op_overhead_ms": fit.overhead_ms,
                            "op_samples": [list(x) for x in fit.samples]},
            "candidates": [c.as_dict() for c in self.candidates],
            "partitions": {str(v): {"cuts": list(p.cuts), "layers_from": p.layers_from, "partition": p.partition,
                                    "stages": list(p.stages)} for v, p in self.profiles.items()},
            "notes": self.notes,
        }


def candidate_specs(nproc: int, mem_limit: float, time_limit: float,
                    optimizer: bool = True) -> list[tuple[str, str, str | None, int]]:
    """``(name, program, scheduler, v)`` for every candidate (see the module docstring)."""
    specs: list[tuple[str, str, str | None, int]] = [
        ("1f1b", "std:1f1b", None, 1),
        ("gpipe", "std:gpipe", None, 1),
        ("zb-h1", "std:zb-h1", None, 1),
        ("zb-h2", "std:zb-h2", None, 1),
        ("zb-1p", "std:zb-1p", None, 1),
        ("zb-2p", "std:zb-2p", None, 1),
        ("interleaved-1f1b", "std:interleaved-1f1b", None, 2),
        ("zb-v", "std:zb-v", None, 2),
        ("v-half", "std:v-half", None, 2),
        ("v-min", "std:v-min", None, 2),
    ]
    if not math.isinf(mem_limit):  # the greedy searches under the user's limit, not their default
        specs.append(("zb-auto@limit", "std:zb-h1", f"zb-auto:mem_limit={mem_limit:g}", 1))
        specs.append(("zb-v@limit", "std:zb-v", f"zb-v:mem_limit={mem_limit:g}", 2))
    if optimizer:
        limit = "" if math.isinf(mem_limit) else f",mem_limit={mem_limit:g}"
        specs.append(("optimizer", "std:zb-h1",
                      f"ilp:objective=makespan,time_limit={time_limit:g},progress=false{limit}", 1))
    return specs


def params_for(profile: Any, unit: float, tc: float, fused: bool = False) -> dict[str, Any]:
    """A profile's stage rows as schedule parameters: times in ms, memory divided by ``unit``;
    with ``fused`` (a program whose ``BW`` runs B and W as one backward) also ``tbw``, the
    fused backward's measured time, which is not ``tb + tw``."""
    rows = profile.stages
    names = (*COSTS, "tbw") if fused and all("tbw" in r for r in rows) else COSTS
    out: dict[str, Any] = {name: [float(r[name]) / (unit if name.startswith("mem") else 1.0) for r in rows]
                           for name in names}
    out["tc"] = tc
    return out


def with_comm(program: Any, old: float, new: float, scale: float = 1.0, overhead: float = 0.0) -> Any:
    """``program`` (same ops and orders) with each dependency between two ranks whose latency is
    the communication time ``old`` (the program's ``comm``) set to ``new``, a rule's own latency
    of another value kept, and every op's time ``t`` made ``scale * t + overhead``."""
    from dataclasses import replace

    ops = program.ops
    edges = tuple(replace(e, latency=new) if e.latency == old and ops[e.src].rank != ops[e.dst].rank else e
                  for e in program.edges)
    if scale != 1.0 or overhead != 0.0:
        ops = tuple(replace(o, time=o.time * scale + overhead) for o in ops)
    return replace(program, ops=ops, edges=edges)


def fit_op_times(samples: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``measured = scale * planned + overhead`` over (planned, measured) op times;
    None when the planned times do not vary enough to tell the two apart (all within 10% of each
    other) or the fit is not physical (a scale or an overhead below zero)."""
    if len(samples) < 2:
        return None
    xs = [x for x, _ in samples]
    if max(xs) <= 1.1 * min(xs):
        return None
    n = len(samples)
    mx, my = sum(xs) / n, sum(y for _, y in samples) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    scale = sum((x - mx) * (y - my) for x, y in samples) / sxx
    overhead = my - scale * mx
    if scale <= 0 or overhead < 0:
        return None
    return scale, overhead


def calibrate(program: Any, measured_ms: float, measured_busy_ms: float, tc: float,
              predict: Callable[[Any], float], samples: Sequence[tuple[float, float]] = ()) -> Calibration:
    """Fit the ops' speed and the cost of a message to one measured run of ``program`` (fixed
    orders). The ops: from ``samples``, (planned, measured) ms per op, a scale and a fixed cost
    per op (:func:`fit_op_times`: small ops pay the runtime's per-instruction cost more than big
    ones); without usable samples, the busiest rank's measured compute over its simulated
    compute as the scale. Then the communication time per message at which ``predict`` (a
    program's predicted step, ms) of the program with its ops so timed meets ``measured_ms``:
    what a message costs in the runtime, its instructions and wake-ups included. The prediction
    never falls as latencies grow, so this is a bisection; it is 0 when even free messages
    predict a longer step."""
    from schedlang.simulate import simulate

    fitted = fit_op_times(samples)
    if fitted is not None:
        scale, overhead = fitted
        used = tuple(samples)
    else:
        busy = max(r.busy for r in simulate(program).ranks)
        scale = measured_busy_ms / busy if busy > 0 and measured_busy_ms > 0 else 1.0
        overhead, used = 0.0, ()

    def at(x: float) -> float:
        return predict(with_comm(program, tc, x, scale, overhead))

    def done(msg: float) -> Calibration:
        return Calibration(scale, overhead, msg, used)

    if at(0.0) >= measured_ms:
        return done(0.0)
    hi = max(tc, 1e-3)
    while at(hi) < measured_ms:
        if hi > measured_ms:  # a message costing a whole step does not explain it either
            return done(hi)
        hi *= 2
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if at(mid) < measured_ms:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-7 * hi:
            break
    return done(hi)


def check_options(nproc: int, steps: int, top: int, time_limit: float, mem_limit: float, microbatches: int) -> None:
    """The options of a tune that no run can use, as user errors."""
    if nproc < 2:
        raise SchedlangError("--nproc must be at least 2 for a pipeline")
    if steps < 2:
        raise SchedlangError("--steps must be at least 2 (the first step is a warm-up and not timed)")
    if top < 1:
        raise SchedlangError("--top must be at least 1")
    if not time_limit > 0:
        raise SchedlangError("--time-limit must be positive")
    if not mem_limit > 0:
        raise SchedlangError("--mem-limit must be positive")
    if microbatches < 1:
        raise SchedlangError("--microbatches must be at least 1")


def check_machine_options(cores: float | None, tc: float | None) -> None:
    """``cores`` positive and ``tc`` at least 0 where given, or a user error."""
    if cores is not None and not cores > 0:
        raise SchedlangError("--cores must be positive")
    if tc is not None and not tc >= 0:
        raise SchedlangError("--tc must be at least 0")


def sched_text(program: Any, csv_text: str, profile: Any, unit: float, tc: float) -> str:
    """The chosen schedule as schedlang source with explicit per-rank orders and the measured
    costs as its parameters' values."""
    from schedlang import emitters

    if "sched" in emitters.names():
        return emitters.emit(program, "sched")
    if not csv_text:
        return ""
    # without a schedlang emitter: the CSV's own round trip into schedlang (explicit orders, the
    # standard op definitions), with the measured costs set at the top
    from schedlang.export import parse_torch_csv, torch_to_sched

    text, _ = torch_to_sched(parse_torch_csv(csv_text, f"{program.name}.csv"), program.name)
    costs = params_for(profile, unit, tc)
    head = [f"# measured costs: times in ms, memory in units of one microbatch's activations on stage 0 "
            f"({unit:.0f} bytes)"]
    for name in (*COSTS, "tc"):
        value = costs[name]
        shown = "[" + ", ".join(f"{x!r}" for x in value) + "]" if isinstance(value, list) else repr(float(value))
        head.append(f"param {name} = {shown}")
    lines = text.splitlines()
    lines[0] = f"# {program.name}, chosen by schedlang tune: explicit per-rank orders (from its PyTorch CSV)"
    at = next(i for i, line in enumerate(lines) if line.startswith("import ")) + 1
    return "\n".join(lines[:at] + head + lines[at:]) + "\n"
