"""Hypothesis strategies and assertion helpers for testing schedules and schedulers.

Users import these to test their own schedules the way schedlang tests its own::

    from hypothesis import given
    from schedlang import testing as st_sched

    @given(st_sched.scheduled_programs())
    def test_my_pass_keeps_validity(program):
        st_sched.assert_valid(my_pass(program))

Strategies:

- :func:`costs` — cost parameters (``tf, tb, tw, tc, mem_f, mem_w``), uniform or per stage.
- :func:`placements` — a placement kind and its ``place`` clause (linear, interleaved, V, random).
- :func:`pipeline_sources` — schedlang source text of a random valid pipeline (no schedule).
- :func:`programs` — the lowered :class:`~schedlang.ir.Program` of such a source.
- :func:`valid_orders` / :func:`scheduled_programs` — a program with random per-rank orders that
  are valid by construction (the projection of a random topological order onto the ranks).

Assertion helpers raise ``AssertionError`` with the verifier's located message:
:func:`assert_valid`, :func:`assert_deadlock_free`, :func:`assert_within_memory`,
:func:`assert_schedule_consistent` (the simulated timeline obeys the orders), :func:`assert_scheduler_ok`
(schedule with a named scheduler, then all of these) and :func:`assert_no_worse` (against a
baseline); :func:`schedulers_for` lists the schedulers that apply to a program. docs/testing.md
shows them at work.
"""

from __future__ import annotations

from typing import Any

try:
    from hypothesis import strategies as st
except ModuleNotFoundError as exc:  # an optional dependency: say how to get it
    raise ModuleNotFoundError("schedlang.testing needs hypothesis: pip install 'schedlang[testing]'",
                              name=exc.name) from exc

from schedlang.ir import Orders, Program
from schedlang.source import SchedlangError

PAPER_PROFILES: dict[str, dict[str, float]] = {
    # profiled times (ms) measured in the Zero Bubble paper (Qi et al., ICLR 2024), p=8, m=24
    "1.5B": {"tf": 18.522, "tb": 18.086, "tw": 9.337, "tc": 0.601},
    "6.2B": {"tf": 29.718, "tb": 29.444, "tw": 19.927, "tc": 0.527},
}


def _fmt(x: float | list[float]) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return repr(float(x))


_time = st.floats(min_value=0.25, max_value=8.0, allow_nan=False).map(lambda x: round(x * 4) / 4)


@st.composite
def costs(draw: st.DrawFn, num_stages: int | None = None, comm: bool = True) -> dict[str, Any]:
    """Cost parameters; with ``num_stages`` given, each time may be a per-stage list."""

    def t() -> float | list[float]:
        if num_stages is not None and draw(st.booleans()):
            return [draw(_time) for _ in range(num_stages)]
        return draw(_time)

    mem_f = draw(st.sampled_from([1.0, 2.0, 4.0]))
    return {
        "tf": t(), "tb": t(), "tw": t(),
        "tc": draw(st.sampled_from([0.0, 0.25, 1.0])) if comm else 0.0,
        "mem_f": mem_f,
        "mem_w": draw(st.sampled_from([0.0, mem_f / 2, mem_f])),
    }


@st.composite
def placements(draw: st.DrawFn, p: int, v: int) -> tuple[str, str]:
    """(kind, place clause) for ``v`` stages per rank on ``p`` ranks."""
    kinds = ["linear"] if v == 1 else ["interleaved", "random"]
    if v == 2:
        kinds.append("vshape")
    if v == 1 and p > 1:
        kinds.append("random")
    kind = draw(st.sampled_from(kinds))
    if kind == "linear":
        return kind, "place s => s"
    if kind == "interleaved":
        return kind, "place s => s % num_ranks"
    if kind == "vshape":
        return kind, "place s => s < num_ranks ? s : 2 * num_ranks - 1 - s"
    ranks = [r for r in range(p) for _ in range(v)]
    ranks = draw(st.permutations(ranks))
    return kind, "place [" + ", ".join(map(str, ranks)) + "]"


@st.composite
def pipeline_sources(draw: st.DrawFn, max_ranks: int = 4, max_stages_per_rank: int = 2,
                     max_microbatches: int = 5, fused: bool | None = None, user_kind: bool | None = None) -> str:
    """Source text of a random valid pipeline: shape, placement, F/B/W (or F/BW) ops with per-stage
    costs, optionally a user op kind (a recompute before B), the standard rules. No schedule."""
    p = draw(st.integers(1, max_ranks))
    v = draw(st.integers(1, max_stages_per_rank))
    m = draw(st.integers(1, max_microbatches))
    S = p * v
    c = draw(costs(num_stages=S))
    _, place = draw(placements(p, v))
    use_fused = draw(st.booleans()) if fused is None else fused
    use_user = draw(st.booleans()) if user_kind is None else user_kind
    lines = [f"param {k} = {_fmt(val)}" for k, val in c.items()]
    lines += [f"param p = {p}", f"param m = {m}", "ranks p", f"stages {v} * p", "microbatches m", place,
              "comm tc"]
    lines.append("op F[s, i] time at(tf, s) mem at(mem_f, s)")
    back = "BW" if use_fused else "B"
    if use_fused:
        lines.append("op BW[s, i] time at(tb, s) + at(tw, s) mem -at(mem_f, s)")
    else:
        lines.append("op B[s, i] time at(tb, s) mem at(mem_w, s) - at(mem_f, s)")
        lines.append("op W[s, i] time at(tw, s) mem -at(mem_w, s)")
    lines += ["dep F[s, i] -> F[s + 1, i]", f"dep F[s, i] -> {back}[s, i] where s == num_stages - 1",
              f"dep {back}[s, i] -> {back}[s - 1, i]"]
    if not use_fused:
        lines.append("dep B[s, i] -> W[s, i]")
    if use_user:
        lines.append("op R[s, i] role USER time at(tf, s) / 2 mem 0 where s < num_stages - 1")
        lines.append(f"dep R[s, i] -> {back}[s, i]")
        lines.append("dep F[s, i] -> R[s, i]")
    return "\n".join(lines) + "\n"


@st.composite
def programs(draw: st.DrawFn, **kw: Any) -> Program:
    """A lowered, unscheduled program (see :func:`pipeline_sources` for the keyword arguments)."""
    from schedlang.api import loads

    return loads(draw(pipeline_sources(**kw)), name="generated")


@st.composite
def valid_orders(draw: st.DrawFn, program: Program) -> Orders:
    """Per-rank orders that respect every dependency: a random topological order of all ops,
    projected onto each rank (such orders can never deadlock)."""
    preds = program.preds()
    succs = program.succs()
    missing = [len(preds[k]) for k in range(len(program.ops))]
    ready = sorted(k for k, n in enumerate(missing) if n == 0)
    ranks: list[list[tuple[int, ...]]] = [[] for _ in range(program.num_ranks)]
    while ready:
        k = ready.pop(draw(st.integers(0, len(ready) - 1)))
        ranks[program.ops[k].rank].append((k,))
        for d, _ in succs[k]:
            missing[d] -= 1
            if missing[d] == 0:
                ready.append(d)
    return Orders(tuple(tuple(r) for r in ranks), origin="random-topological")


@st.composite
def scheduled_programs(draw: st.DrawFn, **kw: Any) -> Program:
    """A program with valid random orders and no memory limit."""
    program = draw(programs(**kw))
    return program.with_orders(draw(valid_orders(program)))


# ------------------------------------------------------------------ assertions


def assert_valid(program: Program) -> None:
    """Every op once, dependencies respected, no deadlock, memory within the limit."""
    from schedlang.verify import verify

    try:
        verify(program)
    except SchedlangError as exc:
        raise AssertionError(f"invalid schedule: {exc.render()}") from None


def assert_deadlock_free(program: Program) -> None:
    """The orders can run to completion (the simulator finishes)."""
    from schedlang.simulate import DeadlockError, simulate

    try:
        simulate(program)
    except DeadlockError as exc:
        raise AssertionError(exc.render()) from None


def assert_within_memory(program: Program, limit: float | None = None) -> None:
    """No rank's memory exceeds ``limit`` (default: the program's limit) at any point."""
    from schedlang.simulate import memory_profile

    for r in range(program.num_ranks):
        lim = limit if limit is not None else (program.mem_limit[r] if program.mem_limit else None)
        if lim is None:
            continue
        peak = max([0.0] + memory_profile(program, r))
        assert peak <= lim + 1e-9 * max(1.0, abs(lim)), f"rank {r}: peak memory {peak:g} over limit {lim:g}"


# ------------------------------------------------------------------ more assertion helpers (ux)


def assert_schedule_consistent(program: Program, eps: float = 1e-9) -> None:
    """The simulated timeline obeys the schedule: every op starts no earlier than each of its
    predecessors' end plus the latency; the slots of a rank run one after another in order, each
    lasting the sum (``overlap sum``) or the maximum (``overlap max``) of its ops' times; the
    reported makespan, busy times and bubble rate follow from the timeline. An independent check
    of the simulator (or of any orders a scheduler returns)."""
    from schedlang.simulate import simulate

    sim = simulate(program)
    ops = program.ops
    for e in program.edges:
        if sim.start[e.dst] != sim.start[e.src] or sim.end[e.dst] != sim.end[e.src]:  # not one slot
            assert sim.start[e.dst] >= sim.end[e.src] + e.latency - eps, (
                f"{ops[e.dst].label} starts at {sim.start[e.dst]:g}, before {ops[e.src].label} "
                f"ends at {sim.end[e.src]:g} plus latency {e.latency:g}")
    for r, slots in enumerate(program.orders.ranks):
        t, busy = 0.0, 0.0
        for slot in slots:
            times = [ops[k].time for k in slot]
            dur = max(times) if program.overlap == "max" else sum(times)
            t0 = sim.start[slot[0]]
            assert all(sim.start[k] == t0 and abs(sim.end[k] - (t0 + dur)) <= eps * max(1.0, t0 + dur)
                       for k in slot), f"rank {r}: slot {[ops[k].label for k in slot]} is not one interval of {dur:g}"
            assert t0 >= t - eps, f"rank {r}: {ops[slot[0]].label} starts at {t0:g} before the previous slot ends at {t:g}"
            t, busy = t0 + dur, busy + dur
        assert abs(sim.ranks[r].busy - busy) <= eps * max(1.0, busy), f"rank {r}: busy {sim.ranks[r].busy:g} != {busy:g}"
    assert abs(sim.makespan - max(sim.end, default=0.0)) <= eps * max(1.0, sim.makespan)
    assert 0.0 <= sim.bubble_rate < 1.0 or sim.cost == 0, f"bubble rate {sim.bubble_rate:g} outside [0, 1)"
    assert sim.cost >= max(r.busy for r in sim.ranks) - eps, "cost below the busiest rank's work"


def assert_scheduler_ok(program: Program, scheduler: str) -> Program:
    """Schedule ``program`` with ``scheduler`` (``NAME[:ARG=VALUE,...]``) and check the result:
    valid (every op once, dependencies, memory limit), deadlock-free and consistent with its
    simulation. Returns the scheduled program. A scheduler that rejects the program with a
    located :class:`SchedlangError` (e.g. the memory limit is infeasible for it) fails the
    assertion too; catch ``AssertionError`` or filter programs with :func:`schedulers_for`."""
    from schedlang.api import schedule, with_scheduler

    try:
        out = schedule(with_scheduler(program, scheduler))
    except SchedlangError as exc:
        raise AssertionError(f"scheduler '{scheduler}' failed: {exc.render()}") from None
    assert_valid(out)
    assert_deadlock_free(out)
    assert_within_memory(out)
    assert_schedule_consistent(out)
    return out


def schedulers_for(program: Program, exclude: tuple[str, ...] = ("ilp",)) -> list[str]:
    """Names of the registered schedulers that say they apply to ``program`` (the slow ``ilp``
    is left out unless ``exclude`` is changed)."""
    from schedlang.schedulers import SCHEDULERS

    return [name for name, s in SCHEDULERS.items() if name not in exclude and s.applies(program)]


def assert_no_worse(program: Program, baseline: Program, metric: str = "cost", rel: float = 1e-9) -> None:
    """``program`` is at least as good as ``baseline`` on ``metric`` (``cost``, ``makespan``,
    ``bubble_rate`` or ``peak_memory``, the largest over ranks): for checking that an optimizer
    never loses to its warm start, or that a change to a schedule does not regress it."""
    from schedlang.simulate import simulate

    def value(p: Program) -> float:
        sim = simulate(p)
        if metric == "peak_memory":
            return max(r.peak_memory for r in sim.ranks)
        return float(getattr(sim, metric))

    a, b = value(program), value(baseline)
    assert a <= b + rel * max(1.0, abs(b)), f"{metric} {a:g} is worse than the baseline's {b:g}"
