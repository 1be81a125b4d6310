"""The Python API: everything the command line does, as plain, typed functions.

Typical use::

    import schedlang
    prog = schedlang.compile("std:1f1b", p=4, m=8)        # parse, check, lower, schedule, verify
    sim = schedlang.simulate(prog)
    print(sim.bubble_rate, sim.makespan, [r.peak_memory for r in sim.ranks])
    print(schedlang.orders(prog)[0])                       # ['F[0,0]', 'F[0,1]', ...]

Parameters are keyword arguments (``p=4``) or a mapping (``params={"p": 4}``); overriding a
parameter the program does not declare is an error. ``scheduler="list:priority=BFW"`` swaps the
program's schedule clause for a named scheduler.

What it offers, by ``schedlang`` command:

- programs: :func:`load`, :func:`loads`, :func:`compile`, :func:`schedule`, :func:`with_scheduler`,
  :func:`orders`; :func:`load_program` takes command-line style overrides (``--set``,
  ``--params``, ``--scheduler``, ``--dump-after``), :func:`parse_assignment`, :func:`parse_value`,
  :func:`read_params_file` and :func:`parse_scheduler_spec` read them; :func:`load_items` gives
  a file's parsed items and :func:`lower_source` lowers a :class:`Source` under overrides.
- ``check``: :func:`compile` (a bad program raises a located :class:`SchedlangError`) and
  :func:`describe` (the one-line summary).
- ``simulate``: :func:`simulate`, :func:`simulation_dict`.
- ``compile --emit``: :func:`emit` (formats in :mod:`schedlang.emitters`), :func:`streams`
  (codegen), :func:`chrome_trace`.
- ``optimize``: :func:`optimize` (CP-SAT; needs ortools).
- ``compare``: :func:`compare_rows`.
- ``streams``: :func:`check_streams` (:func:`load_streams` reads without checking). ``import``:
  :func:`import_torch_csv`.
- ``render``: :func:`render` (a scene to write as SVG or PNG), :func:`read_trace`.
- ``run``: :func:`run`, :func:`check_run`, :func:`check_model`, :func:`runner_from_program`,
  :func:`summarize_timelines` (need torch).
- ``profile``: :func:`profile` (a :class:`Profile`), :func:`check_profile_options`,
  :func:`profile_program`, :func:`model_parts`, :func:`resolve_partition`, :func:`partition_for`,
  :func:`step_time_cost`
  (need torch; the cutting itself is :mod:`schedlang.partition`).
- ``tune``: :func:`tune` (needs torch; :mod:`schedlang.tune`).
- ``list``: :func:`builtins`.

Importing this module loads the compiler (lark) but not torch, triton or ortools: the functions
that need them import them when called.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from schedlang import syntax as S
from schedlang.evaluate import compile_expr
from schedlang.ir import Orders, Program, SchedulerCall, Value, format_slots
from schedlang.load import Item, load_program_items, read_source
from schedlang.lower import lower_source
from schedlang.parse import parse_expr
from schedlang.passes import DEFAULT_PIPELINE, run_passes
from schedlang.simulate import Simulation
from schedlang.simulate import simulate as _simulate
from schedlang.source import SchedlangError, Source, Span, cli_source
from schedlang.verify import verify


def parse_value(text: str, what: str = "<command line>") -> Value:
    """Parse a literal value given as text (``8``, ``1.5``, ``[1, 2]``, ``true``, ``"span"``)."""
    src = cli_source(text, what)
    expr = parse_expr(src)
    try:
        return compile_expr(expr)({"inf": float("inf")})  # type: ignore[no-any-return]
    except SchedlangError as exc:
        raise SchedlangError(f"{text!r} is not a literal value: {exc.message}", Span(src, 1, 1)) from None


def parse_assignment(text: str) -> tuple[str, Value]:
    """``NAME=VALUE`` from the command line (``--set p=8``)."""
    name, sep, value = text.partition("=")
    name = name.strip()
    src = cli_source(text)
    if not sep or not name.isidentifier():
        raise SchedlangError(f"expected NAME=VALUE, got {text!r}", Span(src, 1, 1))
    try:
        return name, parse_value(value.strip(), "<command line>")
    except SchedlangError as exc:
        raise SchedlangError(f"--set {name}: {exc.message}", Span(src, 1, len(name) + 2)) from None


def read_params_file(path: str) -> list[tuple[str, Value, Span]]:
    """Parameter overrides from a file: one ``NAME=VALUE`` per line, ``#`` comments, blank lines.

    This is what ``schedlang profile`` writes and ``--params FILE`` reads. Returns
    ``(name, value, span)`` in file order; a later line for the same name wins.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SchedlangError(f"cannot read '{path}': {exc.strerror}") from None
    src = Source(path, text)
    out: list[tuple[str, Value, Span]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        col = len(line) - len(line.lstrip()) + 1
        name, sep, value = line.strip().partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise SchedlangError(f"expected NAME=VALUE, got {line.strip()!r}", Span(src, lineno, col))
        span = Span(src, lineno, col, lineno, col + len(name))
        try:
            out.append((name, parse_value(value.strip(), path), span))
        except SchedlangError as exc:
            raise SchedlangError(f"{name}: {exc.message}",
                                 Span(src, lineno, col + line.strip().index("=") + 1)) from None
    return out


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def parse_scheduler_spec(spec: str) -> SchedulerCall:
    """``NAME[:ARG=VALUE,...]`` (``--scheduler``). A bare word value is a string (``objective=span``)."""
    name, _, rest = spec.partition(":")
    src = cli_source(spec, "<--scheduler>")
    if not name:
        raise SchedlangError("--scheduler needs a name", Span(src, 1, 1))
    args: list[tuple[str, Value]] = []
    spans: list[Span | None] = []
    col = len(name) + 2
    for part in _split_top(rest):
        key, sep, val = part.partition("=")
        span = Span(src, 1, col, 1, col + len(part))
        if not sep or not key.strip().isidentifier():
            raise SchedlangError(f"expected ARG=VALUE, got {part!r}", span)
        v = val.strip()
        value: Value = v if v.isidentifier() and v not in ("true", "false", "inf") else parse_value(v, "<--scheduler>")
        args.append((key.strip(), value))
        spans.append(span)
        col += len(part) + 1
    return SchedulerCall(name.strip(), tuple(args), Span(src, 1, 1, 1, len(name) + 1), tuple(spans))


def load_items(path: str) -> tuple[Source, list[Item]]:
    """The source of ``path`` (a file or ``std:NAME``) and its parsed items, imports included (not checked yet)."""
    source = read_source(path)
    return source, load_program_items(source)


def load(path: str, params: Mapping[str, Any] | None = None, **kw: Any) -> Program:
    """Parse, check and lower a file or ``std:NAME``; the result is not scheduled yet if it names
    a scheduler (run :func:`schedule` or use :func:`compile`)."""
    return lower_source(read_source(path), {**(params or {}), **kw})


def loads(text: str, name: str = "<string>", params: Mapping[str, Any] | None = None, **kw: Any) -> Program:
    """Like :func:`load`, from source text."""
    return lower_source(Source(name, text), {**(params or {}), **kw})


def with_scheduler(program: Program, scheduler: str | SchedulerCall) -> Program:
    """Replace the program's schedule clause with a named scheduler (``NAME[:ARG=VALUE,...]``)."""
    call = parse_scheduler_spec(scheduler) if isinstance(scheduler, str) else scheduler
    return replace(program, schedule=call)


def schedule(program: Program, passes: Sequence[str] = DEFAULT_PIPELINE, *, verify_each: bool = False,
             dump_after: str | None = None, dump: Callable[[str, Program], None] | None = None) -> Program:
    """Run the passes (by default: the program's scheduler) and verify the result.

    ``dump(name, program)`` receives the IR after the pass ``dump_after`` (``lower`` included)."""
    out = run_passes(program, passes, verify_each=verify_each, dump_after=dump_after, dump=dump)
    verify(out)
    return out


def compile(path: str, params: Mapping[str, Any] | None = None, *, scheduler: str | None = None,
            passes: Sequence[str] = DEFAULT_PIPELINE, **kw: Any) -> Program:  # noqa: A001 - the verb users expect
    """Load, schedule and verify: the result has explicit, valid orders."""
    program = load(path, params, **kw)
    if scheduler is not None:
        program = with_scheduler(program, scheduler)
    return schedule(program, passes)


def simulate(program: Program) -> Simulation:
    """Simulate a scheduled program (see :mod:`schedlang.simulate`)."""
    if not isinstance(program.schedule, Orders):
        program = schedule(program)
    return _simulate(program)


def orders(program: Program) -> dict[int, list[str]]:
    """Per-rank op orders as labels (``'F[0,3]'``; overlapped ops joined by ``&``)."""
    return {r: format_slots(program, slots).split() for r, slots in enumerate(program.orders.ranks)}


# ------------------------------------------------------------------ what the command line does


def load_program(path: str, *, sets: Sequence[str] = (), params_file: str | None = None,
                 scheduler: str | None = None, scheduled: bool = True, dump_after: str | None = None,
                 dump: Callable[[str, Program], None] | None = None,
                 on_warning: Callable[[SchedlangError], None] | None = None) -> Program:
    """Parse, check, lower (and by default schedule and verify) ``path`` under command-line overrides.

    ``sets`` are ``NAME=VALUE`` texts (``--set``), located on the command line in errors;
    ``params_file`` holds ``NAME=VALUE`` lines (``--params``; ``sets`` win over it).
    ``scheduler`` replaces the schedule clause (``NAME[:ARG=VALUE,...]``). Each front-end warning
    goes to ``on_warning`` as soon as the program is lowered. ``dump(name, program)`` receives
    the IR after the pass ``dump_after`` (``lower`` included).
    """
    params: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    if params_file:
        for name, value, span in read_params_file(params_file):
            params[name], spans[name] = value, span
    for text in sets:
        name, value = parse_assignment(text)
        params[name] = value
        spans[name] = Span(cli_source(text), 1, 1, 1, len(name) + 1)
    program = lower_source(read_source(path), params, spans)
    if on_warning is not None:
        for warning in program.warnings:
            on_warning(warning)
    if scheduler:
        program = with_scheduler(program, scheduler)
    if not scheduled:
        return program
    return schedule(program, dump_after=dump_after, dump=dump)


def describe(program: Program) -> str:
    """One line: ranks, stages, microbatches, ops and dependencies (what ``schedlang check`` prints)."""
    return (f"{program.num_ranks} ranks, {program.num_stages} stages, {program.num_microbatches} microbatches, "
            f"{len(program.ops)} ops, {len(program.edges)} dependencies")


def simulation_dict(program: Program) -> dict[str, Any]:
    """The simulation of a scheduled program as plain data (``schedlang simulate --json``)."""
    sim = _simulate(program)
    return {"name": program.name, "num_ranks": program.num_ranks, "num_stages": program.num_stages,
            "num_microbatches": program.num_microbatches, "num_ops": len(program.ops), **sim.as_dict()}


def optimize(program: Program, options: Any = None, *, progress: TextIO | None = None,
             **changes: Any) -> tuple[Program, Any]:
    """Optimize the orders of ``program`` with CP-SAT (needs ortools).

    ``options`` is a :class:`schedlang.schedulers.ilp.options.IlpOptions` (default: its defaults)
    and ``changes`` are keyword names of its fields (objective, time_limit, mem_limit, seed,
    workers, lns, periodic, wall_limit, ...); ``progress`` is the stream progress lines go to.
    Returns the program with the optimized orders (origin ``ilp``) and the solver's report
    (status, objective, bound, gap).
    """
    from schedlang.schedulers.ilp import optimize as _optimize

    orders, report = _optimize(program, options, progress=progress, **changes)
    return replace(program, schedule=replace(orders, origin="ilp")), report


def emit(program: Program, fmt: str) -> str:
    """``program`` written in an ``--emit`` format (see :mod:`schedlang.emitters` for the list)."""
    from schedlang import emitters

    return emitters.emit(program, fmt)


def streams(program: Program) -> Any:
    """The per-rank instruction streams (:class:`schedlang.isa.Streams`) of a scheduled program."""
    from schedlang.codegen import codegen

    return codegen(program)


def load_streams(path: str) -> Any:
    """Read an instruction-stream file (text or JSON) or a PyTorch CSV (``.csv``; a compute-only
    one gets the communication PyTorch adds to it) as :class:`schedlang.isa.Streams`, unchecked;
    malformed input raises a located :class:`SchedlangError`."""
    from schedlang.stream_files import load_stream_file

    return load_stream_file(path)[0]


def check_streams(path: str, sends: str = "buffered", recvs: str | None = None) -> str:
    """Read a stream file or PyTorch CSV (see :func:`load_streams`) and run the one stream checker
    (:mod:`schedlang.isa_check`) on it: shape, data flow, matched sends and receives, no deadlock
    under ``sends``/``recvs`` semantics (``recvs`` defaults to ``blocking`` for streams, the ISA's,
    and ``posted`` for a CSV, as PyTorch's runtime runs it). Returns the one-line summary that
    ``schedlang streams`` prints; raises a located :class:`SchedlangError` on any problem."""
    from schedlang.stream_files import check_stream_file

    return check_stream_file(path, sends, recvs)


def import_torch_csv(path: str, fmt: str = "auto", out_name: str = "<imported>") -> tuple[str, Program]:
    """A PyTorch schedule CSV as schedlang: the program's source text (named ``out_name``) and the
    program itself (explicit orders, verified). See :func:`schedlang.export.import_torch`."""
    from schedlang.export import import_torch
    from schedlang.source import read_file

    return import_torch(read_file(path).text, path, fmt, out_name=out_name)


def chrome_trace(program: Program) -> str:
    """The simulated timeline of a scheduled program as a Chrome/Perfetto trace (JSON text)."""
    from schedlang.trace import chrome_trace as _chrome_trace

    return _chrome_trace(program)


def read_trace(path: str) -> tuple[Program, Simulation]:
    """The timeline recorded in a Chrome trace file (planned by ``--emit chrome-trace`` or
    measured by the runtime), as a program and its simulation, ready to render as recorded."""
    import os

    from schedlang.trace import timeline_from_trace

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise SchedlangError(f"cannot read '{path}': {exc.strerror}") from None
    return timeline_from_trace(text, os.path.basename(path).removesuffix(".json"))


def render(program: Program, sim: Simulation | None = None, *, memory: bool = False, width: int = 0) -> Any:
    """The pipeline picture (:class:`schedlang.render.Scene`): one row per rank, time across.

    Write it with :func:`schedlang.render.scene_svg` (text) or :func:`schedlang.render.scene_png`.
    ``sim`` draws a given timeline (e.g. from :func:`read_trace`) instead of simulating.
    """
    from schedlang.render import Style, layout

    return layout(program, sim, memory=memory, style=Style(width=width))


def _declared(path: str) -> set[str]:
    _, items = load_items(path)
    return {it.decl.name for it in items if isinstance(it.decl, S.ParamDecl)}


def _sets_for(files: Sequence[str], sets: Sequence[str]) -> dict[str, list[str]]:
    """The ``--set`` arguments each file declares; an override that no file declares is an error."""
    declared = {f: _declared(f) for f in files}
    out: dict[str, list[str]] = {f: [] for f in files}
    for text in sets:
        name, _ = parse_assignment(text)
        users = [f for f in files if name in declared[f]]
        if not users:
            raise SchedlangError(f"no program declares a parameter '{name}'",
                                 Span(cli_source(text), 1, 1, 1, len(name) + 1))
        for f in users:
            out[f].append(text)
    return out


def compare_rows(files: Sequence[str], sets: Sequence[str] = (), schedulers: Sequence[str] = (), *,
                 on_warning: Callable[[SchedlangError], None] | None = None) -> list[dict[str, Any]]:
    """One dict per (program, scheduler): the figures ``simulate`` reports plus generation time.

    Each ``NAME=VALUE`` in ``sets`` applies to the programs that declare it (one that no program
    declares is an error). A combination that fails becomes a row with its rendered ``error``,
    unless it is the only one (then the error is raised).
    """
    per_file = _sets_for(files, sets)
    rows: list[dict[str, Any]] = []
    for f in files:
        choices: list[str | None] = list(schedulers) or [None]
        for sched in choices:
            t0 = time.perf_counter()
            try:
                prog = load_program(f, sets=per_file[f], scheduler=sched, on_warning=on_warning)
            except SchedlangError as exc:
                if len(files) * max(1, len(schedulers)) == 1:
                    raise
                # one combination that does not work (a scheduler that does not apply, an
                # infeasible limit) is a row of the table, not the end of the comparison
                rows.append({"program": f, "scheduler": sched or "(own)", "error": exc.render(),
                             "ignored_sets": [s for s in sets if s not in per_file[f]]})
                continue
            gen = time.perf_counter() - t0
            sim = _simulate(prog)
            rows.append({
                "program": f, "scheduler": sched or prog.orders.origin,
                "num_ranks": prog.num_ranks, "num_stages": prog.num_stages,
                "num_microbatches": prog.num_microbatches, "num_ops": len(prog.ops),
                "bubble_rate": sim.bubble_rate, "makespan": sim.makespan, "cost": sim.cost, "bubble": sim.bubble,
                "peak_memory": [r.peak_memory for r in sim.ranks], "generation_s": gen,
                "ignored_sets": [s for s in sets if s not in per_file[f]],
            })
    return rows


def builtins() -> list[Any]:
    """Every built-in schedule (``std:NAME``), scheduler and importable module, as
    :class:`schedlang.catalog.Entry` objects (what ``schedlang list`` prints)."""
    from schedlang.catalog import all_entries

    return all_entries()


# ------------------------------------------------------------------ runtime and profiling (need torch)


def runner_from_program(program: Program, rank: int, stage_modules: Mapping[int, Any], loss_fn: Any,
                        optimizer_factory: Any = None, **options: Any) -> Any:
    """A :class:`schedlang.runtime.executor.PipelineRunner` for ``rank`` of a scheduled, verified
    program (codegen included)."""
    from schedlang.codegen import codegen
    from schedlang.runtime.executor import PipelineRunner

    return PipelineRunner(codegen(program), rank, stage_modules, loss_fn, optimizer_factory, **options)


def summarize_timelines(out_dir: str) -> tuple[list[Any], dict[str, Any]]:
    """Read the workers' timelines (``rank*.json`` in ``out_dir``); return all events and the
    measured bubble (mean over the steps after the first; ``step_makespans_s`` lists each of those
    steps, ``peak_saved_bytes`` each rank's peak of activations saved for backward)."""
    import json

    from schedlang.runtime.timeline import Event, measured_bubble

    events: list[Event] = []
    peaks: dict[int, int] = {}
    for path in sorted(Path(out_dir).glob("rank*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        events.extend(Event.from_dict(e) for e in doc["events"])
        if "peak_saved_bytes" in doc:
            peaks[int(doc["rank"])] = int(doc["peak_saved_bytes"])
    steps = sorted({e.step for e in events})
    measured = [measured_bubble([e for e in events if e.step == s]) for s in steps[1:] or steps]
    if not measured:
        return events, {}
    n = len(measured)
    return events, {
        "steps": n,
        "bubble_rate": sum(b.bubble_rate for b in measured) / n,
        "cost_s": sum(b.cost for b in measured) / n,
        "makespan_s": sum(b.makespan for b in measured) / n,
        "step_makespans_s": [b.makespan for b in measured],
        **({"peak_saved_bytes": [peaks[r] for r in sorted(peaks)]} if peaks else {}),
    }


def check_model(spec: str) -> None:
    """Import the model factory ``MODULE:FACTORY`` here first: a typo is a plain error, not a crash
    on every rank."""
    from schedlang.runtime.worker import load_factory

    try:
        factory = load_factory(spec)
    except (ValueError, ImportError, AttributeError) as exc:
        raise SchedlangError(f"--model {spec}: {exc}") from None
    if not callable(factory):
        raise SchedlangError(f"--model {spec}: not a callable factory")


def check_run(program: Program, *, nproc: int | None = None, steps: int = 10,
              model: str = "schedlang.runtime.models:tiny_gpt") -> int:
    """Check the arguments of :func:`run` before any process starts; returns the process count."""
    nproc = nproc if nproc is not None else program.num_ranks
    if nproc != program.num_ranks:
        raise SchedlangError(f"--nproc {nproc}, but the schedule has {program.num_ranks} ranks "
                             f"(set the program's rank parameter, e.g. --set p={nproc})")
    if steps < 1:
        raise SchedlangError("--steps must be at least 1")
    check_model(model)
    return nproc


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` measured. ``exit_code`` is 0 when every worker succeeded; ``failures``
    has one line per failed rank (spawn launcher); ``measured`` is the measured bubble (see
    :func:`summarize_timelines`; empty when the workers failed)."""

    exit_code: int
    failures: tuple[str, ...]
    events: tuple[Any, ...]
    measured: dict[str, Any]
    simulated_bubble_rate: float


def _launch_torchrun(nproc: int, worker_args: list[str]) -> int:
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "schedlang.runtime.worker", *worker_args]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(cmd, env=env).returncode


def _launch_spawn(nproc: int, worker_args: list[str], timeout: float) -> tuple[int, list[str]]:
    from schedlang.runtime.launch import spawn
    from schedlang.runtime.worker import worker_main

    results = spawn(worker_main, nproc, (worker_args,), timeout=timeout, join_timeout=10 * timeout,
                    check=False)
    code, failures = 0, []
    for r in results:
        if r.exitcode != 0:
            code = 1
            lines = [ln for ln in r.stderr.splitlines() if "schedlang runtime:" in ln or "Error" in ln]
            failures.append(f"rank {r.rank}: exit {r.exitcode}: {r.error or (lines[-1] if lines else '')}")
    return code, failures


def run(program: Program, *, model: str = "schedlang.runtime.models:tiny_gpt", steps: int = 10,
        nproc: int | None = None, split_backward: str = "autograd", launcher: str = "torchrun",
        prepost: int = 4, timeout: float = 60.0, cuts: Sequence[int] | None = None,
        layers_from: int | None = None, quiet: bool = False, measure_memory: bool = False) -> RunResult:
    """Train ``model`` (``MODULE:FACTORY``) with a scheduled program's streams on one process per
    rank (``torchrun`` or ``spawn``) for ``steps`` steps; return what was measured.

    ``cuts`` (with ``layers_from``): build the model for ``layers_from`` stages (default: the
    program's model parts) and cut its layers there instead of the factory's own split (see
    :func:`partition_for`).

    The workers' own output (each step's loss, unless ``quiet``) goes to this process's stdout
    and stderr. ``measure_memory``: each rank records the peak bytes of activations saved for
    backward alive at once during the first step (untimed), in ``measured["peak_saved_bytes"]``.
    """
    import os
    import tempfile

    from schedlang import isa
    from schedlang.codegen import codegen

    nproc = check_run(program, nproc=nproc, steps=steps, model=model)
    code_streams = codegen(program)
    sim = _simulate(program)
    with tempfile.TemporaryDirectory(prefix="schedlang-run-") as tmp:
        path = os.path.join(tmp, "streams.json")
        Path(path).write_text(isa.to_json(code_streams), encoding="utf-8")
        worker_args = ["--streams", path, "--model", model, "--steps", str(steps), "--out", tmp,
                       "--split-backward", split_backward, "--timeout", str(timeout),
                       "--prepost", str(prepost)]
        if quiet:
            worker_args.append("--quiet")
        if measure_memory:
            worker_args.append("--measure-memory")
        if cuts is not None:
            worker_args += ["--cuts", ",".join(map(str, cuts)),
                            "--layers-from", str(layers_from or model_parts(program))]
        failures: list[str] = []
        if launcher == "torchrun":
            code = _launch_torchrun(nproc, worker_args)
        else:
            code, failures = _launch_spawn(nproc, worker_args, timeout)
        if code != 0:
            return RunResult(code, tuple(failures), (), {}, sim.bubble_rate)
        events, measured = summarize_timelines(tmp)
    return RunResult(0, (), tuple(events), measured, sim.bubble_rate)


def _build_model(model: str, num_stages: int, num_microbatches: int) -> Any:
    """The factory's :class:`ModelSpec` for ``num_stages`` stages; its failures are user errors."""
    from schedlang.runtime.worker import load_factory

    try:
        factory = load_factory(model)
    except (ValueError, ImportError, AttributeError) as exc:
        raise SchedlangError(f"--model {model}: {exc}") from None
    try:
        spec = factory(num_stages, num_microbatches)
        stages = list(spec.stages)
    except Exception as exc:  # the user's factory: its failure is a user error, not ours
        raise SchedlangError(f"--model {model}: the factory failed: {type(exc).__name__}: {exc}") from None
    if len(stages) != num_stages:
        raise SchedlangError(f"--model {model} built {len(stages)} stages for a {num_stages}-stage pipeline")
    return spec


@dataclass(frozen=True)
class Profile:
    """What :func:`profile` measured: one row per stage and one per layer (see
    :mod:`schedlang.kernels.profile` for the figures; times in ms, memory in bytes per
    microbatch), and the partition the stages come from: the model built for ``layers_from``
    stages, its layers cut at ``cuts`` (``partition``: ``"params"``, ``"auto"`` or ``"given"``)."""

    stages: tuple[dict[str, Any], ...]
    layers: tuple[dict[str, Any], ...]
    cuts: tuple[int, ...]
    layers_from: int
    partition: str
    layer_names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain data (``schedlang profile --json``)."""
        return {"units": {"time": "ms", "memory": "bytes"}, "partition": self.partition,
                "layers_from": self.layers_from, "cuts": list(self.cuts),
                "stages": list(self.stages),
                "layers": [dict(row, name=self.layer_names[i] if i < len(self.layer_names) else "")
                           for i, row in enumerate(self.layers)]}


def resolve_partition(partition: str, layers: Sequence[Mapping[str, Any]], param_counts: Sequence[int],
                      num_stages: int, *, placement: Sequence[int] | None = None,
                      factor: Sequence[float] | None = None,
                      mem_limit: float | Sequence[float] = float("inf"),
                      step_cost: Callable[[list[dict[str, float]]], float] | None = None,
                      first_fused: bool = False) -> tuple[list[int], str]:
    """Cut points for ``--partition``: ``params`` (balanced parameter counts), ``auto`` (the
    slowest stage minimised under the memory limit, from the per-layer profile), ``step`` (the
    least ``step_cost`` of the stages' summed layer costs, see :func:`step_time_cost`; all
    partitions when there are at most 500, else a local search from ``auto``'s cuts) or
    ``CUT,CUT,...``; returns them and which it was. ``first_fused``: the first stage's B is
    folded into its W (the autograd split)."""
    from schedlang import partition as P

    n = len(layers)
    if num_stages > n:
        raise SchedlangError(f"--partition: the model has {n} layers, too few for {num_stages} stages")
    if partition == "params":
        return P.params_cuts(param_counts, num_stages), "params"
    if partition in ("auto", "step"):
        times = [float(r["tf"]) + float(r["tb"]) + float(r["tw"]) for r in layers]
        try:
            cuts, _ = P.min_max_cuts(times, num_stages, mem=[float(r["mem_f"]) for r in layers],
                                     mem_limit=mem_limit, factor=factor, placement=placement)
        except ValueError as exc:
            raise SchedlangError(f"--partition {partition}: {exc}") from None
        if partition == "auto":
            return cuts, "auto"
        if step_cost is None:
            raise SchedlangError("--partition step needs a schedule to simulate")
        cost = step_cost
        best, _, _ = P.best_cuts(lambda c: cost(P.stage_costs(layers, c, first_fused=first_fused)), n, num_stages,
                                 start=cuts)
        return best, "step"
    return P.parse_cuts(partition, n, num_stages), "given"


def step_time_cost(path: str, *, sets: Sequence[str] = (), params_file: str | None = None,
                   scheduler: str | None = None) -> Callable[[list[dict[str, float]]], float]:
    """The simulated makespan of the program ``path`` (under ``sets``, ``params_file`` and
    ``scheduler`` as :func:`load_program` takes them) as a function of per-stage ``tf``, ``tb``
    and ``tw``: the cost ``--partition step`` minimises. Memory figures stay the program's."""
    def cost(stages: list[dict[str, float]]) -> float:
        costs = [f"{name}=[{', '.join(repr(float(r[name])) for r in stages)}]" for name in ("tf", "tb", "tw")]
        return _simulate(load_program(path, sets=[*sets, *costs], params_file=params_file,
                                      scheduler=scheduler)).makespan

    return cost


def _model_layers(model: str, build: int, num_microbatches: int, split_backward: str) -> tuple[Any, ...]:
    """The factory's spec for ``build`` stages, its layers (on this device, prepared for the
    split), one microbatch ``x`` and the loss of the last stage's output on it."""
    import torch

    from schedlang.runtime.models import layers_of
    from schedlang.runtime.worker import default_device, prepare_stages

    spec = _build_model(model, build, num_microbatches)
    device = default_device()
    blocks = layers_of([m.to(device) for m in spec.stages])
    prepared = prepare_stages(dict(enumerate(blocks)), split_backward)
    blocks = [prepared[i] for i in range(len(blocks))]
    x, y = spec.batch(0)
    if x.shape[0] % num_microbatches:
        raise SchedlangError(f"--model {model}: a batch of {x.shape[0]} does not split into "
                             f"{num_microbatches} microbatches")
    size = x.shape[0] // num_microbatches
    x_mb = x[:size].to(device)
    y_mb = y[:size].to(device) if isinstance(y, torch.Tensor) else y

    def loss(out: torch.Tensor) -> torch.Tensor:
        return spec.loss_fn(out, y_mb)  # type: ignore[no-any-return]

    return spec, blocks, x_mb, loss


def profile_program(num_stages: int, num_microbatches: int, model: str, *, split_backward: str = "autograd",
                    repeats: int = 10, warmup: int = 3, threads: int = 1, partition: str = "params",
                    layers_from: int | None = None, placement: Sequence[int] | None = None,
                    factor: Sequence[float] | None = None,
                    mem_limit: float | Sequence[float] = float("inf"), stages: bool = True,
                    step_cost: Callable[[list[dict[str, float]]], float] | None = None) -> Profile:
    """Build ``model`` (``MODULE:FACTORY``) for ``layers_from`` stages (default: the pipeline's),
    profile its layers, cut them into ``num_stages`` stages by ``partition`` (see
    :func:`resolve_partition`) and (unless ``stages`` is false) profile those stages."""
    from torch import nn

    from schedlang.kernels.profile import profile_ops
    from schedlang.runtime.models import split_sequential

    build = layers_from or num_stages
    spec, blocks, x_mb, loss = _model_layers(model, build, num_microbatches, split_backward)
    opts = {"warmup": warmup, "split_backward": split_backward, "threads": threads}
    layer_rows = profile_ops(blocks, x_mb, loss, repeats, **opts)
    counts = [sum(p.numel() for p in b.parameters()) for b in blocks]
    if partition == "params" and build == num_stages:  # the factory's own stages
        cuts = list(itertools.accumulate(len(m) if isinstance(m, nn.Sequential) else 1
                                         for m in spec.stages[:-1]))
        how = "params"
    else:
        cuts, how = resolve_partition(partition, layer_rows, counts, num_stages, placement=placement,
                                      factor=factor, mem_limit=mem_limit, step_cost=step_cost,
                                      first_fused=split_backward == "autograd")
    rows = []
    if stages:
        rows = profile_ops(list(split_sequential(blocks, num_stages, cuts)), x_mb, loss, repeats, **opts)
    names = tuple(type(b).__name__ for b in blocks)
    return Profile(tuple(rows), tuple(layer_rows), tuple(cuts), build, how, names)


def model_parts(program: Program) -> int:
    """How many model parts a program's pipeline runs: the stages of one chain (Chimera's two
    chains run replicas of the same parts)."""
    from schedlang import isa
    from schedlang.codegen import stage_graph

    return len(isa.chains_of(program.num_stages, stage_graph(program))[0])


def partition_for(program: Program, model: str, partition: str, *, layers_from: int | None = None,
                  split_backward: str = "autograd", repeats: int = 10, warmup: int = 3,
                  threads: int = 1,
                  step_cost: Callable[[list[dict[str, float]]], float] | None = None) -> Profile | None:
    """The stages ``--partition`` asks :func:`run` for: ``None`` for the factory's own split
    (``params`` without ``layers_from``); else a :class:`Profile` whose ``cuts`` and
    ``layers_from`` go to :func:`run`, with the per-layer profile they come from (no stage rows)."""
    check_profile_options(repeats, warmup, threads)
    if partition == "params" and layers_from is None:
        return None
    _require_torch("--partition")
    parts = model_parts(program)
    build = layers_from or parts
    if build < 1:
        raise SchedlangError("--layers-from must be at least 1")
    placement = [program.placement[s] for s in range(parts)] if parts == program.num_stages else None
    return profile_program(parts, program.num_microbatches, model, split_backward=split_backward,
                           repeats=repeats, warmup=warmup, threads=threads, partition=partition,
                           layers_from=build, placement=placement, stages=False, step_cost=step_cost)


def check_profile_options(repeats: int, warmup: int, threads: int = 1) -> None:
    """``repeats`` at least 1, ``warmup`` at least 0 and ``threads`` at least 1, or a user error."""
    if repeats < 1 or warmup < 0:
        raise SchedlangError("--repeats must be at least 1 and --warmup at least 0")
    if threads < 1:
        raise SchedlangError("--threads must be at least 1")


def _require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise SchedlangError(f"schedlang {what} needs torch: pip install 'schedlang[runtime]'") from None


def profile(program: Program, model: str = "schedlang.runtime.models:tiny_gpt", *,
            split_backward: str = "autograd", repeats: int = 10, warmup: int = 3, threads: int = 1,
            partition: str = "params", layers_from: int | None = None,
            step_cost: Callable[[list[dict[str, float]]], float] | None = None) -> Profile:
    """Measure T_F, T_B, T_W and memory of each layer of ``model`` and of each model part a
    (lowered) program's pipeline needs: one stage row per stage of a chain (Chimera's two chains
    run replicas of the same parts). ``partition`` is ``params``, ``auto`` or ``CUT,CUT,...``
    over the layers of the model built for ``layers_from`` stages (default: the pipeline's)."""
    check_profile_options(repeats, warmup, threads)
    _require_torch("profile")
    if layers_from is not None and layers_from < 1:
        raise SchedlangError("--layers-from must be at least 1")
    parts = model_parts(program)
    placement = [program.placement[s] for s in range(parts)] if parts == program.num_stages else None
    return profile_program(parts, program.num_microbatches, model, split_backward=split_backward,
                           repeats=repeats, warmup=warmup, threads=threads, partition=partition,
                           layers_from=layers_from, placement=placement, step_cost=step_cost)


def _tune_schedule(c: Any, profile: Any, unit: float, tc: float, nproc: int, m: int, mem_limit: float) -> None:
    """Compile and simulate one candidate on the measured costs (or record why it cannot run)."""
    from schedlang import tune as T

    params = T.params_for(profile, unit, tc)
    params.update(p=nproc, m=m, mem_limit=mem_limit)
    if c.path == "std:interleaved-1f1b":
        params["v"] = c.v
    try:
        prog = compile(c.path, params, scheduler=c.scheduler)
        sim = simulate(prog)
    except SchedlangError as exc:
        c.error = exc.message.splitlines()[0]
        return
    c.program = prog
    c.predicted_ms = sim.makespan
    c.predicted_peak = max(r.peak_memory for r in sim.ranks)
    c.predicted_peak_bytes = c.predicted_peak * unit
    c.predicted_busy_ms = max(r.busy for r in sim.ranks)


def _tune_measure(c: Any, profile: Any, unit: float, model: str, nproc: int, steps: int,
             split_backward: str, launcher: str, timeout: float) -> None:
    """Run one candidate for ``steps`` steps; record each step's makespan after the first (ms)
    and the peak of activations saved for backward."""
    res = run(c.program, model=model, steps=steps, nproc=nproc, split_backward=split_backward,
                  launcher=launcher, timeout=timeout, cuts=profile.cuts, layers_from=profile.layers_from,
                  quiet=True, measure_memory=True)
    if res.exit_code != 0 or not res.measured:
        c.run_error = "; ".join(res.failures) or f"exit status {res.exit_code}"
        return
    c.measured_steps_ms += [1e3 * t for t in res.measured["step_makespans_s"]]
    c.measured_ms = statistics.median(c.measured_steps_ms)
    busy: dict[tuple[int, int], float] = {}
    first = min((e.step for e in res.events), default=0)
    for e in res.events:
        if e.is_compute and e.step != first:
            busy[(e.step, e.rank)] = busy.get((e.step, e.rank), 0.0) + (e.end_ns - e.start_ns) / 1e6
    per_step = [max(v for (st, _), v in busy.items() if st == step) for step in sorted({st for st, _ in busy})]
    c.busy_steps_ms += per_step
    if c.busy_steps_ms:
        c.measured_busy_ms = statistics.median(c.busy_steps_ms)
    peaks = res.measured.get("peak_saved_bytes")
    if peaks:
        c.measured_peak_bytes = max(float(max(peaks)), 0.0 if math.isnan(c.measured_peak_bytes) else c.measured_peak_bytes)
        c.measured_peak = c.measured_peak_bytes / unit


def tune(model: str = "schedlang.runtime.models:tiny_gpt", nproc: int = 4, *, microbatches: int | None = None,
         mem_limit: float = math.inf,
         time_limit: float = 10.0, steps: int = 5, top: int = 3, layers_from: int | None = None,
         partition: str = "auto", split_backward: str = "autograd", repeats: int = 10, warmup: int = 3,
         threads: int = 1, tc: float = 0.0, launcher: str = "spawn", timeout: float = 120.0,
         optimizer: bool = True, rounds: int = 1, progress: Callable[[str], None] | None = None) -> Any:
    """Profile ``model``, partition it, schedule every candidate on the measured costs, run the
    best few on ``nproc`` processes and choose the fastest measured one: a
    :class:`schedlang.tune.TuneResult` (the steps are in :mod:`schedlang.tune`'s docstring;
    needs torch, and ortools for the optimizer). ``mem_limit`` is in
    units of one microbatch's activations on stage 0 (per rank); ``time_limit`` is the
    optimizer's wall-clock budget in seconds; ``tc`` the communication time (ms) the prediction
    assumes. The measured step time of a candidate is the median over its steps after the first,
    over ``rounds`` runs each (the candidates take turns, so a busy spell of the machine is
    spread over them rather than landing on one)."""
    _require_torch("tune")
    from schedlang import tune as T

    say = progress or (lambda _line: None)
    m = microbatches if microbatches is not None else 2 * nproc
    T.check_options(nproc, steps, top, time_limit, mem_limit, m)
    if rounds < 1:
        raise SchedlangError("--rounds must be at least 1")
    if partition == "step":
        raise SchedlangError("--partition step minimises one schedule's step; tune compares many: "
                             "use auto, params or cut points")
    check_profile_options(repeats, warmup, threads)
    check_model(model)
    build = layers_from if layers_from is not None else 2 * nproc
    families: tuple[int, ...] = (1, 2)
    if partition not in ("auto", "params"):  # given cuts say how many stages: one family
        ncuts = len([c for c in partition.split(",") if c.strip()])
        families = tuple(v for v in (1, 2) if v * nproc - 1 == ncuts) or (1,)
    profiles: dict[int, Any] = {}
    notes: list[str] = []
    for v in families:
        say(f"profiling the layers of the model built for {build} stages, then {v * nproc} stages "
            f"({partition} partition)")
        try:
            profiles[v] = profile_program(v * nproc, m, model, split_backward=split_backward, repeats=repeats,
                                              warmup=warmup, threads=threads, partition=partition,
                                              layers_from=build)
        except SchedlangError as exc:
            if v == families[0]:
                raise
            notes.append(f"no {v}-chunk candidates: {exc.message}")
            say(notes[-1])
    unit = float(profiles[families[0]].stages[0]["mem_f"])
    if unit <= 0:
        raise SchedlangError("stage 0 saves no activations: no unit for memory")
    cands = [T.Candidate(name, path, sched, v) for name, path, sched, v in
             T.candidate_specs(nproc, mem_limit, time_limit, optimizer) if v in profiles]
    for c in cands:
        say(f"scheduling {c.name}")
        _tune_schedule(c, profiles[c.v], unit, tc, nproc, m, mem_limit)
    ok = sorted((c for c in cands if not c.error), key=lambda c: c.predicted_ms)
    if not ok:
        raise SchedlangError("no candidate schedule fits the memory limit")
    to_run = ok[:top] + [c for c in ok[top:] if c.name == "1f1b"]
    for c in [c for _ in range(rounds) for c in to_run]:
        if c.run_error:
            continue
        say(f"running {c.name} for {steps} steps on {nproc} processes")
        _tune_measure(c, profiles[c.v], unit, model, nproc, steps, split_backward, launcher, timeout)
    ran = [c for c in to_run if not math.isnan(c.measured_ms)]
    chosen = min(ran, key=lambda c: c.measured_ms) if ran else None
    result = T.TuneResult(ok + [c for c in cands if c.error], chosen, profiles, unit, mem_limit, notes=notes)
    if chosen is not None:
        chosen.chosen = True
        try:
            result.csv_text = emit(chosen.program, "torch-csv")
        except SchedlangError as exc:
            notes.append(f"{chosen.name} has no PyTorch CSV: {exc.message}")
        result.sched_text = T.sched_text(chosen.program, result.csv_text, profiles[chosen.v], unit, tc)
    return result
