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
  ``--params``, ``--config``, ``--scheduler``, ``--dump-after``), :func:`parse_assignment`,
  :func:`parse_value`, :func:`read_params_file`, :func:`read_config_for` and
  :func:`parse_scheduler_spec` read them; :func:`load_items` gives
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
  :func:`summarize_timelines` (need torch), :func:`measured_program` (the program on a run's
  measured op times, each op's from :func:`measured_op_times`); :func:`weights_note` (how a program with an asynchronous weight-update
  policy trains).
- ``profile``: :func:`profile` (a :class:`Profile`), :func:`check_profile_options`,
  :func:`profile_program`, :func:`model_parts`, :func:`resolve_partition`, :func:`partition_for`,
  :func:`step_time_cost`
  (need torch; the cutting itself is :mod:`schedlang.partition`).
- ``tune``: :func:`tune` (needs torch; :mod:`schedlang.tune`).
- ``list``: :func:`builtins`.
- ``serve``: :mod:`schedlang.serve` (it calls these functions; needs Flask). ``compile --emit
  sched`` is :func:`emit` with ``"sched"``.

``import_root=DIR`` sets the folder imports must lie under (default: the program's folder), and
``limits={"max_ops": 5_000_000}`` (or a :class:`~schedlang.limits.Limits`) raises or lowers the
work limits (see :mod:`schedlang.limits`); both are keyword-only, so they are never parameters.
:func:`check_output_path` refuses an output path before the work that would produce it.

Importing this module loads the compiler (lark) but not torch, triton or ortools: the functions
that need them import them when called.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from schedlang import limits as _limits
from schedlang import syntax as S
from schedlang.config import Config, check_config, read_config
from schedlang.evaluate import compile_expr
from schedlang.ir import Orders, Program, SchedulerCall, Value, format_slots
from schedlang.limits import Limits
from schedlang.load import Item, load_program_items, read_source, read_text_file
from schedlang.lower import lower_source
from schedlang.model_check import model_parts
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
    text = read_text_file(path).text  # a regular UTF-8 file (a byte-order mark is dropped), size-capped
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


def read_config_for(config_path: str, program_path: str) -> Config:
    """Parameter overrides from a JSON or YAML config file (``--config FILE``, the keys of the
    common 1F1B visualizer or parameter names; see :mod:`schedlang.config`), checked against the
    parameters the program ``program_path`` declares: a key it does not have is an error located
    at the key."""
    config = read_config(config_path)
    source = read_source(program_path)
    from schedlang.lower import _declared_params

    check_config(config, list(_declared_params(load_program_items(source))), source.name)
    return config


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
    if not name.strip():
        raise SchedlangError("--scheduler needs a name", Span(src, 1, 1))
    args: list[tuple[str, Value]] = []
    spans: list[Span | None] = []
    col = len(name) + 2
    for part in _split_top(rest):
        key, sep, val = part.partition("=")
        span = Span(src, 1, col, 1, col + len(part))
        if not sep or not key.strip().isidentifier():
            raise SchedlangError(f"expected ARG=VALUE, got {part!r}", span)
        if key.strip() in (k for k, _ in args):
            raise SchedlangError(f"scheduler argument '{key.strip()}' given twice", span)
        v = val.strip()
        try:
            value: Value = v if v.isidentifier() and v not in ("true", "false", "inf") else parse_value(v, "<--scheduler>")
        except SchedlangError as exc:
            raise SchedlangError(f"{key.strip()}: {exc.message}", span) from None
        args.append((key.strip(), value))
        spans.append(span)
        col += len(part) + 1
    return SchedulerCall(name.strip(), tuple(args), Span(src, 1, 1, 1, len(name) + 1), tuple(spans))


def load_items(path: str, *, import_root: str | None = None) -> tuple[Source, list[Item]]:
    """The source of ``path`` (a file or ``std:NAME``) and its parsed items, imports included (not checked yet)."""
    source = read_source(path)
    return source, load_program_items(source, import_root)


def load(path: str, params: Mapping[str, Any] | None = None, *, import_root: str | None = None,
         limits: Limits | Mapping[str, int] | None = None, **kw: Any) -> Program:
    """Parse, check and lower a file or ``std:NAME``; the result is not scheduled yet if it names
    a scheduler (run :func:`schedule` or use :func:`compile`)."""
    with _limits.using(limits):
        return lower_source(read_source(path), {**(params or {}), **kw}, import_root=import_root)


def loads(text: str, name: str = "<string>", params: Mapping[str, Any] | None = None, *,
          import_root: str | None = None, limits: Limits | Mapping[str, int] | None = None,
          **kw: Any) -> Program:
    """Like :func:`load`, from source text (its imports resolve under the current folder unless
    ``import_root`` says otherwise)."""
    return lower_source(Source(name, text), {**(params or {}), **kw}, import_root=import_root, limits=limits)


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


def compile(path: str, params: Mapping[str, Any] | None = None, *, scheduler: str | None = None,  # noqa: A001
            passes: Sequence[str] = DEFAULT_PIPELINE, import_root: str | None = None,
            limits: Limits | Mapping[str, int] | None = None, **kw: Any) -> Program:
    """Load, schedule and verify: the result has explicit, valid orders."""
    with _limits.using(limits):
        program = load(path, params, import_root=import_root, **kw)
        if scheduler is not None:
            program = with_scheduler(program, scheduler)
        return schedule(program, passes)


def check_output_path(path: str | None) -> None:
    """Refuse an output path whose folder does not exist (or is not a folder), before the work
    that would produce the output starts. ``None`` and ``-`` (stdout) pass."""
    if path is None or path == "-":
        return
    if "\0" in path:
        raise SchedlangError("an output path cannot contain a NUL character")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise SchedlangError(f"cannot write '{path}': the folder '{folder}' does not exist")
    if os.path.isdir(path):
        raise SchedlangError(f"cannot write '{path}': it is a folder")


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
                 on_warning: Callable[[SchedlangError], None] | None = None,
                 param_items: Sequence[tuple[str, Value, Span]] = (),
                 config_file: str | None = None, import_root: str | None = None) -> Program:
    """Parse, check, lower (and by default schedule and verify) ``path`` under command-line overrides.

    ``sets`` are ``NAME=VALUE`` texts (``--set``), located on the command line in errors;
    ``params_file`` holds ``NAME=VALUE`` lines (``--params``; ``sets`` win over it).
    ``scheduler`` replaces the schedule clause (``NAME[:ARG=VALUE,...]``). Each front-end warning
    goes to ``on_warning`` as soon as the program is lowered. ``dump(name, program)`` receives
    the IR after the pass ``dump_after`` (``lower`` included). ``param_items`` are overrides
    already read (``(name, value, span)``, as :func:`read_params_file` returns them), applied
    first. ``config_file`` is a JSON or YAML config (``--config``, see :func:`read_config_for`);
    ``params_file`` and ``sets`` win over it. ``import_root`` widens where imports may reach
    (default: the program's folder).
    """
    params: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    if config_file:
        config = read_config_for(config_file, path)
        params.update(config.params)
        spans.update(config.spans)
    for name, value, span in [*param_items, *(read_params_file(params_file) if params_file else ())]:
        params[name], spans[name] = value, span
    for text in sets:
        name, value = parse_assignment(text)
        params[name] = value
        spans[name] = Span(cli_source(text), 1, 1, 1, len(name) + 1)
    program = lower_source(read_source(path), params, spans, import_root=import_root)
    if on_warning is not None:
        for warning in program.warnings:
            on_warning(warning)
    if scheduler is not None:
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


def optimize(program: Program, options: Any = None, *, progress: Callable[[Any], None] | TextIO | None = None,
             **changes: Any) -> tuple[Program, Any]:
    """Optimize the orders of ``program`` with CP-SAT (needs ortools).

    ``options`` is a :class:`schedlang.schedulers.ilp.options.IlpOptions` (default: its defaults)
    and ``changes`` are keyword names of its fields (objective, time_limit, mem_limit, seed,
    workers, lns, periodic, deterministic, wall_limit, ...); ``time_limit`` is wall-clock seconds
    for the whole run unless ``deterministic``. ``progress`` is called with a
    :class:`schedlang.schedulers.ilp.cpsat.ProgressEvent` at each phase and result as it happens
    (a text stream gets their lines).
    Returns the program with the optimized orders (origin ``ilp``; a ``mem_limit`` option, which
    may only tighten the program's, becomes its memory limit, so that ``--emit sched`` writes the
    limit the orders were optimized under) and the solver's report (status, objective, bound, gap).
    """
    from schedlang.schedulers.ilp import optimize as _optimize

    orders, report = _optimize(program, options, progress=progress, **changes)
    out = replace(program, schedule=replace(orders, origin="ilp"))
    limit = changes.get("mem_limit", None if options is None else options.mem_limit)
    if limit is not None and float(limit) != float("inf"):
        out = replace(out, mem_limit=(float(limit),) * program.num_ranks)
    return out, report


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
    return import_torch(read_text_file(path).text, path, fmt, out_name=out_name)


def chrome_trace(program: Program) -> str:
    """The simulated timeline of a scheduled program as a Chrome/Perfetto trace (JSON text)."""
    from schedlang.trace import chrome_trace as _chrome_trace

    return _chrome_trace(program)


def read_trace(path: str) -> tuple[Program, Simulation]:
    """The timeline recorded in a Chrome trace file (planned by ``--emit chrome-trace`` or
    measured by the runtime), as a program and its simulation, ready to render as recorded."""
    from schedlang.trace import timeline_from_trace

    text = read_text_file(path).text  # a regular UTF-8 file within the size limit
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
                 params_file: str | None = None,
                 on_warning: Callable[[SchedlangError], None] | None = None) -> list[dict[str, Any]]:
    """One dict per (program, scheduler): the figures ``simulate`` reports plus generation time.

    Each ``NAME=VALUE`` in ``sets``, and each line of ``params_file`` (``--params``; ``sets``
    win over it), applies to the programs that declare it (one that no program declares is an
    error). A combination that fails becomes a row with its rendered ``error``, unless it is the
    only one (then the error is raised).
    """
    per_file = _sets_for(files, sets)
    from_file = read_params_file(params_file) if params_file else []
    declared = {f: _declared(f) for f in files}
    for name, _, span in from_file:
        if not any(name in declared[f] for f in files):
            raise SchedlangError(f"no program declares a parameter '{name}'", span)
    file_items = {f: [x for x in from_file if x[0] in declared[f]] for f in files}
    # what a program leaves at its default: the --set texts and the params lines it does not declare
    ignored = {f: [s for s in sets if s not in per_file[f]]
               + [f"{name} ({params_file}:{span.line})" for name, _, span in from_file if name not in declared[f]]
               for f in files}
    rows: list[dict[str, Any]] = []
    for f in files:
        choices: list[str | None] = list(schedulers) or [None]
        for sched in choices:
            t0 = time.perf_counter()
            try:
                prog = load_program(f, sets=per_file[f], scheduler=sched, on_warning=on_warning,
                                    param_items=file_items[f])
            except SchedlangError as exc:
                if len(files) * max(1, len(schedulers)) == 1:
                    raise
                # one combination that does not work (a scheduler that does not apply, an
                # infeasible limit) is a row of the table, not the end of the comparison
                rows.append({"program": f, "scheduler": sched or "(own)", "error": exc.render(),
                             "ignored_sets": ignored[f]})
                continue
            gen = time.perf_counter() - t0
            sim = _simulate(prog)
            rows.append({
                "program": f, "scheduler": sched or prog.orders.origin,
                "num_ranks": prog.num_ranks, "num_stages": prog.num_stages,
                "num_microbatches": prog.num_microbatches, "num_ops": len(prog.ops),
                "bubble_rate": sim.bubble_rate, "makespan": sim.makespan, "cost": sim.cost, "bubble": sim.bubble,
                "peak_memory": [r.peak_memory for r in sim.ranks], "generation_s": gen,
                "ignored_sets": ignored[f],
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
    steps, ``peak_saved_bytes`` each rank's peak of activations saved for backward, ``threads``
    each rank's intra-op threads)."""
    import json

    from schedlang.runtime.timeline import Event, measured_bubble

    events: list[Event] = []
    peaks: dict[int, int] = {}
    threads: dict[int, int] = {}
    for path in sorted(Path(out_dir).glob("rank*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        events.extend(Event.from_dict(e) for e in doc["events"])
        if "peak_saved_bytes" in doc:
            peaks[int(doc["rank"])] = int(doc["peak_saved_bytes"])
        if "threads" in doc:
            threads[int(doc["rank"])] = int(doc["threads"])
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
        **({"threads": [threads[r] for r in sorted(threads)]} if threads else {}),
    }


def measured_op_times(program: Program, events: Sequence[Any]) -> dict[int, float]:
    """Each op's mean measured duration in ``events`` (seconds; the steps after the first when
    there are several), by op id, for the ops that have an event of their own."""
    from schedlang.ir import Role

    steps = sorted({e.step for e in events})
    use = set(steps[1:] or steps)
    total: dict[tuple[str, int, int], float] = {}
    count: dict[tuple[str, int, int], int] = {}
    for e in events:
        if e.step in use and e.cat == "instr":
            key = (e.name, e.stage, e.mb)
            total[key] = total.get(key, 0.0) + (e.end_ns - e.start_ns) / 1e9
            count[key] = count.get(key, 0) + 1
    times: dict[int, float] = {}
    for op in program.ops:
        role = program.role(op)
        key = (op.kind if role is Role.USER else role.value, op.stage, op.mb)
        if key in count:
            times[op.id] = total[key] / count[key]
    return times


def measured_program(program: Program, events: Sequence[Any]) -> tuple[Program, int]:
    """``program`` with each op's time replaced by its mean measured duration in ``events``
    (the runtime's :class:`schedlang.runtime.timeline.Event` records, in seconds; the steps after
    the first when there are several) and every dependency's latency set to 0; returns it and the
    number of ops that had no event of their own (an overlapped ``FB`` slot is recorded as one
    event) and keep their planned time, scaled like the rest.

    Its simulation is the schedule's bubble on this run's op times with communication free: the
    difference to the measured bubble is what communication and waiting cost."""
    times = measured_op_times(program, events)
    # ops without an event keep their planned time, in seconds at the run's mean ratio
    planned = sum(program.ops[k].time for k in times)
    scale = sum(times.values()) / planned if planned > 0 else 1.0
    ops = tuple(replace(o, time=times.get(o.id, o.time * scale)) for o in program.ops)
    edges = tuple(replace(e, latency=0.0) for e in program.edges)
    return replace(program, ops=ops, edges=edges), len(program.ops) - len(times)


def check_model(spec: str, program: Program | None = None, split: str | Sequence[str] | None = None, *,
                split_backward: str = "autograd") -> Any:
    """Check the model factory ``spec`` (``MODULE:FACTORY`` or ``path/to/file.py:FACTORY``) here,
    before any worker starts. Without ``program`` it is only imported (a typo is a plain error,
    not a crash on every rank); with it, it is built for the program's shape, cut at ``split``,
    and one microbatch runs through it (:func:`schedlang.model_check.check_model_for`, which returns
    the checked model). Each mistake is one :class:`SchedlangError` naming the factory."""
    from schedlang import model_check

    if program is None:
        from schedlang.runtime.intake import ModelError, load_factory

        try:
            load_factory(spec)
        except ModelError as exc:
            raise SchedlangError(str(exc)) from None
        return None
    return model_check.check_model_for(model_parts(program), program.num_microbatches, spec, split,
                                 split_backward=split_backward)


def check_run(program: Program, *, nproc: int | None = None, steps: int = 10,
              model: str = "schedlang.runtime.models:tiny_gpt", dp: int = 1, nnodes: int = 1,
              node_rank: int = 0, rdzv_endpoint: str | None = None, nproc_per_node: int | None = None,
              launcher: str = "torchrun", backend: str | None = None, threads: int = 1) -> int:
    """Check the arguments of :func:`run` before any process starts; returns the process count
    (of all nodes: the schedule's ranks times ``dp``)."""
    if dp < 1:
        raise SchedlangError(f"--dp must be at least 1, not {dp}")
    total = program.num_ranks * dp
    layout = f"{program.num_ranks} ranks" + (f" x --dp {dp} = {total} processes" if dp > 1 else "")
    if nproc is not None and nproc != total:
        raise SchedlangError(f"--nproc {nproc}, but the schedule has {layout} "
                             f"(set the program's rank parameter, e.g. --set p={nproc // dp or 1})")
    _check_nodes(total, layout, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                 nproc_per_node=nproc_per_node, launcher=launcher)
    if backend is not None and backend not in ("gloo", "nccl"):
        raise SchedlangError(f"--backend must be gloo or nccl, not {backend!r}")
    if launcher == "spawn" and backend == "nccl":
        raise SchedlangError("--launcher spawn runs gloo; launch through torchrun (the default) for NCCL")
    if steps < 1:
        raise SchedlangError("--steps must be at least 1")
    if not 1 <= threads <= 1024:
        raise SchedlangError(f"--threads must be between 1 and 1024, not {threads}")
    check_model(model)
    return total


def _check_nodes(total: int, layout: str, *, nnodes: int, node_rank: int, rdzv_endpoint: str | None,
                 nproc_per_node: int | None, launcher: str) -> None:
    """The multi-node arguments (torchrun's names) agree with each other and with the layout."""
    if nnodes < 1:
        raise SchedlangError(f"--nnodes must be at least 1, not {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise SchedlangError(f"--node-rank {node_rank} is not in 0..{nnodes - 1} (--nnodes {nnodes})")
    if nproc_per_node is not None and nproc_per_node < 1:
        raise SchedlangError(f"--nproc-per-node must be at least 1, not {nproc_per_node}")
    per_node = nproc_per_node if nproc_per_node is not None else total // nnodes
    if per_node * nnodes != total:
        raise SchedlangError(f"--nnodes {nnodes} x --nproc-per-node {nproc_per_node if nproc_per_node else '?'} "
                             f"processes, but the schedule has {layout}")
    if nnodes > 1 or rdzv_endpoint is not None:
        if launcher != "torchrun":
            raise SchedlangError("several nodes launch through torchrun: drop --launcher spawn")
        if rdzv_endpoint is None:
            raise SchedlangError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (node 0's address)")
        host, sep, port = rdzv_endpoint.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SchedlangError(f"--rdzv-endpoint expects HOST:PORT, got {rdzv_endpoint!r}")


_POLICY_WORDS = {
    "stash": "PipeDream weight stashing: each stage updates its weights after every microbatch's "
             "backward, which uses the weight version its forward used",
    "stash+vsync": "PipeDream weight stashing with vertical sync: each stage updates after every "
                   "microbatch's backward; all stages use the version stage 0 used for the microbatch",
    "2bw": "PipeDream-2BW: each stage updates once per {every} microbatches (their mean gradient); "
           "microbatches of group g use the version made after group g-2",
}


def weights_note(program: Program) -> str:
    """One line saying how a program with an asynchronous policy trains ('' under ``flush``)."""
    w = program.weights
    if not w.asynchronous:
        return ""
    return (f"weights {w.policy}: {_POLICY_WORDS[w.policy].format(every=w.every)}; asynchronous, "
            f"not synchronous training (weights are updated within each window of "
            f"{program.num_microbatches} microbatches, which drains at the end of each step)")


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` measured: the loss of every step (``losses``), the measured bubble
    (``measured``, see :func:`summarize_timelines`), the timeline ``events``, the schedule
    simulated on the program's own costs (``simulated_bubble_rate``) and on this run's measured
    op times with communication free (``measured_times_bubble_rate``, see
    :func:`measured_program`). A run whose workers fail raises :class:`SchedlangError` instead."""

    losses: tuple[float, ...]
    measured: dict[str, Any]
    simulated_bubble_rate: float
    events: tuple[Any, ...] = ()
    measured_times_bubble_rate: float | None = None
    model: str = "schedlang.runtime.models:tiny_gpt"


def _launch_torchrun(nproc: int, worker_args: list[str], log: Any, echo: bool, *, nnodes: int = 1,
                     node_rank: int = 0, rdzv_endpoint: str | None = None) -> int:
    import subprocess
    import sys

    if rdzv_endpoint is None:
        where = ["--standalone"]
    else:  # torchrun's static rendezvous: node 0 hosts the store at the endpoint, ranks follow node ranks
        where = [f"--nnodes={nnodes}", f"--node-rank={node_rank}", f"--rdzv-endpoint={rdzv_endpoint}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc-per-node={nproc}",
           "-m", "schedlang.runtime.worker", *worker_args]
    # each worker runs as `python -m`, so this folder comes first on its path, as it does here
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    return subprocess.run(cmd, env=env, stdout=None if echo else log, stderr=log).returncode


def _launch_spawn(nproc: int, worker_args: list[str], timeout: float, log: Any) -> int:
    from schedlang.runtime.launch import spawn
    from schedlang.runtime.worker import worker_main

    results = spawn(worker_main, nproc, (worker_args,), timeout=timeout, join_timeout=10 * timeout,
                    check=False)
    code = 0
    for r in results:
        log.write(f"----- rank {r.rank}: exit {r.exitcode} {r.error or ''}\n{r.stderr}\n")
        if r.exitcode != 0:
            code = 1
    return code


def _losses(out_dir: str) -> tuple[float, ...]:
    import json

    for path in sorted(Path(out_dir).glob("rank*.json"), key=lambda p: int(p.stem[4:])):
        losses = json.loads(path.read_text(encoding="utf-8")).get("losses") or []
        if losses:
            return tuple(float(x) for x in losses)
    return ()


def run(program: Program, *, model: str = "schedlang.runtime.models:tiny_gpt",
        split: str | Sequence[str] | None = None, steps: int = 10, nproc: int | None = None,
        split_backward: str = "autograd", launcher: str = "torchrun", prepost: int = 4,
        timeout: float = 60.0, dp: int = 1, backend: str | None = None, nnodes: int = 1,
        node_rank: int = 0, rdzv_endpoint: str | None = None, nproc_per_node: int | None = None,
        save: str | None = None, echo: bool = False, cuts: Sequence[int] | None = None,
        layers_from: int | None = None, measure_memory: bool = False, threads: int = 1) -> RunResult:
    """Train ``model`` (``MODULE:FACTORY`` or ``path/to/file.py:FACTORY``, cut at ``split``, see
    docs/models.md) with a program's schedule on one process per rank (``torchrun`` or
    ``spawn``) for ``steps`` steps; return what was measured.

    The model is checked once, in this process, before any worker starts (:func:`check_model`).
    ``dp`` runs that many data-parallel replicas of the pipeline (ranks x ``dp`` processes on a
    DeviceMesh with dimensions "dp" and "pp"; each replica trains on its shard of every batch).
    ``nnodes``, ``node_rank``, ``rdzv_endpoint`` and ``nproc_per_node`` (torchrun's names) start
    this node's share of the processes and join the others through torchrun's rendezvous; every
    node runs this function with the same program, and the ranks check that they do. ``backend``
    overrides the process-group backend (NCCL with CUDA, gloo without). ``save`` is a directory
    for each stage's final parameters (``stage{S}.pt``) and the losses (``losses.json``).
    ``echo`` lets the workers print each step's loss on this process's stdout. The workers'
    standard error (torchrun's own messages included) goes to a log file; a failed run raises
    :class:`SchedlangError` naming the failed rank and instruction and that file, which is
    removed after a successful run. The measured bubble covers the ranks of this node.

    ``cuts`` (with ``layers_from``): build the model for ``layers_from`` stages (default: the
    program's model parts) and cut its layers there instead of the factory's own split (see
    :func:`partition_for`). ``measure_memory``: each rank records the peak bytes of activations
    saved for backward alive at once during the first step (untimed), in
    ``measured["peak_saved_bytes"]``. ``threads``: intra-op threads per process
    (``torch.set_num_threads``), recorded per rank in ``measured["threads"]``.
    """
    import tempfile

    from schedlang import isa
    from schedlang.codegen import codegen

    if not isinstance(program.schedule, Orders):
        program = schedule(program)
    nproc = check_run(program, nproc=nproc, steps=steps, model=model, dp=dp, nnodes=nnodes,
                      node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, nproc_per_node=nproc_per_node,
                      launcher=launcher, backend=backend, threads=threads)
    if program.weights.asynchronous and split_backward != "autograd":
        raise SchedlangError(f"weights {program.weights.policy}: the runtime keeps weight versions only with "
                             "--split-backward autograd", program.weights.span)
    checked = check_model(model, program, split, split_backward=split_backward)
    code_streams = codegen(program)
    sim = _simulate(program)
    with tempfile.TemporaryDirectory(prefix="schedlang-run-") as tmp:
        path = os.path.join(tmp, "streams.json")
        Path(path).write_text(isa.to_json(code_streams), encoding="utf-8")
        worker_args = ["--streams", path, "--model", model, "--steps", str(steps), "--out", tmp,
                       "--split-backward", split_backward, "--timeout", str(timeout),
                       "--prepost", str(prepost), "--dp", str(dp), "--fingerprint", checked.fingerprint,
                       "--threads", str(threads)]
        if checked.split:
            worker_args += ["--split", ",".join(checked.split)]
        if backend is not None:
            worker_args += ["--backend", backend]
        if save is not None:
            worker_args += ["--save", os.path.abspath(save)]
        if not echo:
            worker_args.append("--quiet")
        if measure_memory:
            worker_args.append("--measure-memory")
        if cuts is not None:
            worker_args += ["--cuts", ",".join(map(str, cuts)),
                            "--layers-from", str(layers_from or model_parts(program))]
        fd, log = tempfile.mkstemp(prefix="schedlang-run-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as log_fh:
            if launcher == "torchrun":
                code = _launch_torchrun(nproc // nnodes, worker_args, log_fh, echo, nnodes=nnodes,
                                        node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
            else:
                code = _launch_spawn(nproc, worker_args, timeout, log_fh)
        if code != 0:
            from schedlang.runtime.worker import read_faults

            what = read_faults(tmp) or f"the workers failed (exit status {code})"
            raise SchedlangError(f"run failed: {what}; the workers' output is in {log}")
        os.unlink(log)
        events, measured = summarize_timelines(tmp)
        losses = _losses(tmp)
    on_measured = _simulate(measured_program(program, events)[0]).bubble_rate if events else None
    return RunResult(losses, measured, sim.bubble_rate, tuple(events), on_measured, model)


def _build_model(model: str, num_stages: int, num_microbatches: int,
                 split: str | Sequence[str] | None = None) -> Any:
    """The model for ``num_stages`` stages, as :func:`run` builds and checks it (the factory's
    ``ModelSpec``, ``nn.Sequential`` or traced ``nn.Module``, cut at ``split``; see
    :mod:`schedlang.model_check`): it has ``stages``, ``batch`` and ``loss_fn``."""
    from schedlang.model_check import check_model_for

    return check_model_for(num_stages, num_microbatches, model, split).prepared


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


def _model_layers(model: str, build: int, num_microbatches: int, split_backward: str,
                  split: str | Sequence[str] | None = None) -> tuple[Any, ...]:
    """The factory's spec for ``build`` stages, its layers (on this device, prepared for the
    split), one microbatch ``x`` and the loss of the last stage's output on it."""
    import torch

    from schedlang.runtime.models import layers_of
    from schedlang.runtime.worker import default_device, prepare_stages

    spec = _build_model(model, build, num_microbatches, split)
    device = default_device()
    from schedlang.runtime.worker import on_device

    blocks = layers_of([on_device(m, device) for m in spec.stages])
    prepared = prepare_stages(dict(enumerate(blocks)), split_backward)
    blocks = [prepared[i] for i in range(len(blocks))]
    x, y = spec.batch(0)
    size = x.shape[0] // num_microbatches
    x_mb = x[:size].to(device)
    y_mb = y[:size].to(device) if isinstance(y, torch.Tensor) else y

    def loss(out: torch.Tensor) -> torch.Tensor:
        return spec.loss_fn(out, y_mb)  # type: ignore[no-any-return]

    return spec, blocks, x_mb, loss


def profile_program(num_stages: int, num_microbatches: int, model: str, *, split_backward: str = "autograd",
                    repeats: int = 10, warmup: int = 3, threads: int = 1, partition: str = "params",
                    min_time: float = 0.1,
                    layers_from: int | None = None, placement: Sequence[int] | None = None,
                    factor: Sequence[float] | None = None,
                    mem_limit: float | Sequence[float] = float("inf"), stages: bool = True,
                    step_cost: Callable[[list[dict[str, float]]], float] | None = None,
                    split: str | Sequence[str] | None = None) -> Profile:
    """Build ``model`` (``MODULE:FACTORY`` or ``path/to/file.py:FACTORY``, checked as :func:`run`
    checks it, cut at ``split``) for ``layers_from`` stages (default: the pipeline's), profile its
    layers, cut them into ``num_stages`` stages by ``partition`` (see :func:`resolve_partition`)
    and (unless ``stages`` is false) profile those stages. ``min_time``: seconds of timed runs
    per layer and stage at least (more runs than ``repeats`` for short ones)."""
    from torch import nn

    from schedlang.kernels.profile import profile_ops
    from schedlang.runtime.models import split_sequential

    build = layers_from or num_stages
    spec, blocks, x_mb, loss = _model_layers(model, build, num_microbatches, split_backward, split)
    layer_rows = profile_ops(blocks, x_mb, loss, repeats, warmup=warmup, split_backward=split_backward,
                             threads=threads, min_time=min_time)
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
        rows = profile_ops(list(split_sequential(blocks, num_stages, cuts)), x_mb, loss, repeats, warmup=warmup,
                           split_backward=split_backward, threads=threads, min_time=min_time)
    names = tuple(type(b).__name__ for b in blocks)
    return Profile(tuple(rows), tuple(layer_rows), tuple(cuts), build, how, names)


def partition_for(program: Program, model: str, partition: str, *, layers_from: int | None = None,
                  split_backward: str = "autograd", repeats: int = 10, warmup: int = 3,
                  threads: int = 1, min_time: float = 0.1,
                  step_cost: Callable[[list[dict[str, float]]], float] | None = None) -> Profile | None:
    """The stages ``--partition`` asks :func:`run` for: ``None`` for the factory's own split
    (``params`` without ``layers_from``); else a :class:`Profile` whose ``cuts`` and
    ``layers_from`` go to :func:`run`, with the per-layer profile they come from (no stage rows)."""
    check_profile_options(repeats, warmup, threads, min_time)
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
                           min_time=min_time, layers_from=build, placement=placement, stages=False,
                           step_cost=step_cost)


def check_profile_options(repeats: int, warmup: int, threads: int = 1, min_time: float = 0.0) -> None:
    """``repeats`` at least 1, ``warmup`` at least 0, ``threads`` at least 1 and ``min_time`` at
    least 0, or a user error."""
    if repeats < 1 or warmup < 0:
        raise SchedlangError("--repeats must be at least 1 and --warmup at least 0")
    if not min_time >= 0:
        raise SchedlangError("--min-time must be at least 0")
    if threads < 1:
        raise SchedlangError("--threads must be at least 1")


def _require_torch(what: str) -> None:
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise SchedlangError(f"schedlang {what} needs torch: pip install 'schedlang[runtime]'") from None


def profile(program: Program, model: str = "schedlang.runtime.models:tiny_gpt", *,
            split_backward: str = "autograd", repeats: int = 10, warmup: int = 3, threads: int = 1,
            min_time: float = 0.1, partition: str = "params", layers_from: int | None = None,
            step_cost: Callable[[list[dict[str, float]]], float] | None = None,
            split: str | Sequence[str] | None = None) -> Profile:
    """Measure T_F, T_B, T_W and memory of each layer of ``model`` and of each model part a
    (lowered) program's pipeline needs: one stage row per stage of a chain (Chimera's two chains
    run replicas of the same parts). ``partition`` is ``params``, ``auto`` or ``CUT,CUT,...``
    over the layers of the model built for ``layers_from`` stages (default: the pipeline's)."""
    check_profile_options(repeats, warmup, threads, min_time)
    _require_torch("profile")
    if layers_from is not None and layers_from < 1:
        raise SchedlangError("--layers-from must be at least 1")
    parts = model_parts(program)
    placement = [program.placement[s] for s in range(parts)] if parts == program.num_stages else None
    return profile_program(parts, program.num_microbatches, model, split_backward=split_backward,
                           repeats=repeats, warmup=warmup, threads=threads, partition=partition,
                           min_time=min_time, layers_from=layers_from, placement=placement,
                           step_cost=step_cost, split=split)


def _tune_schedule(c: Any, profile: Any, unit: float, tc: float, nproc: int, m: int, mem_limit: float,
                   cores: float | None = None) -> None:
    """Compile and simulate one candidate on the measured costs (or record why it cannot run);
    with fewer ``cores`` than ranks the ranks share them (:func:`schedlang.simulate.shared_makespan`)."""
    from schedlang import tune as T

    params = T.params_for(profile, unit, tc, fused="tbw" in _declared(c.path))
    params.update(p=nproc, m=m, mem_limit=mem_limit)
    if c.path == "std:interleaved-1f1b":
        params["v"] = c.v
    try:
        prog = compile(c.path, params, scheduler=c.scheduler)
        sim = simulate(prog)
    except SchedlangError as exc:
        c.error = exc.message.splitlines()[0]
        return
    c.predicted_peak = max(r.peak_memory for r in sim.ranks)
    c.predicted_peak_bytes = c.predicted_peak * unit
    _tune_predict(c, prog, nproc, cores)


def _tune_predict(c: Any, prog: Program, nproc: int, cores: float | None) -> None:
    """Set a candidate's program and its predicted step: the simulated makespan, or with fewer
    ``cores`` than ranks the makespan of the ranks sharing them."""
    sim = simulate(prog)
    c.program = prog
    c.predicted_own_cores_ms = sim.makespan
    c.predicted_ms = _predicted_step(prog, nproc, cores, sim.makespan)
    c.predicted_busy_ms = max(r.busy for r in sim.ranks)


def _predicted_step(prog: Program, nproc: int, cores: float | None, makespan: float | None = None) -> float:
    from schedlang.simulate import shared_makespan

    if cores is not None and cores < nproc:
        return shared_makespan(prog, cores)
    return simulate(prog).makespan if makespan is None else makespan


def _tune_calibrate(cands: list[Any], base: Any, tc: float, nproc: int, cores: float | None,
                    notes: list[str], say: Callable[[str], None]) -> Any:
    """After 1F1B's first run: the compute scale and message cost that make its prediction meet
    its measured step (:func:`schedlang.tune.calibrate`), and every candidate re-predicted with
    them, in the same orders. Returns the :class:`schedlang.tune.Calibration`."""
    from schedlang import tune as T

    fit = T.calibrate(base.program, base.measured_ms, base.measured_busy_ms, tc,
                      lambda p: _predicted_step(p, nproc, cores), base.op_samples)
    for c in cands:
        c.predicted_first_ms = c.predicted_ms
        _tune_predict(c, T.with_comm(c.program, tc, fit.message_ms, fit.scale, fit.overhead_ms), nproc, cores)
    ops = (f"{fit.scale:.3f} x their profiled times + {fit.overhead_ms:.4f} ms each" if fit.overhead_ms
           else f"{fit.scale:.3f} x their profiled times")
    notes.append(f"calibrated on 1F1B's first run ({base.measured_ms:.2f} ms a step): the ops ran at {ops}, and "
                 f"a message costs {fit.message_ms:.4f} ms in a run (alone: {tc:.4f} ms); every prediction uses "
                 "these (1F1B's own is fitted, not predicted)")
    say(notes[-1])
    return fit


def _tune_profiles(families: tuple[int, ...], nproc: int, m: int, model: str, build: int, notes: list[str],
                   say: Callable[[str], None], **opts: Any) -> dict[int, Any]:
    """Profile the model cut into ``v * nproc`` stages for each ``v`` of ``families``; a family
    after the first that cannot be cut is a note, not an error."""
    profiles: dict[int, Any] = {}
    for v in families:
        say(f"profiling the layers of the model built for {build} stages, then {v * nproc} stages "
            f"({opts['partition']} partition)")
        try:
            profiles[v] = profile_program(v * nproc, m, model, layers_from=build, **opts)
        except SchedlangError as exc:
            if v == families[0]:
                raise
            notes.append(f"no {v}-chunk candidates: {exc.message}")
            say(notes[-1])
    return profiles


def _tune_runs(ok: list[Any], measure: Callable[[Any], None], top: int, rounds: int, calibrate: bool, tc: float,
               nproc: int, cores: float | None, notes: list[str],
               say: Callable[[str], None]) -> tuple[list[Any], Any]:
    """Run the candidates (see :func:`tune`): 1F1B first when calibrating, then the best ``top``
    predicted and 1F1B, ``rounds`` times in turn. Sorts ``ok`` by prediction; returns those run
    and the :class:`schedlang.tune.Calibration` the predictions assume (none fitted: scale 1,
    no overhead, the message time as given)."""
    from schedlang import tune as T

    fit = T.Calibration(1.0, 0.0, tc)
    base = next((c for c in ok if c.name == "1f1b"), None)
    shared = cores is not None and cores < nproc
    if calibrate and shared:
        notes.append(f"not calibrated: {nproc} ranks share {cores:g} cores, where waiting is mostly for a core, "
                     "not for a message")
    first = base if calibrate and not shared else None
    if calibrate and not shared and base is None:
        notes.append("not calibrated: 1F1B, the run it calibrates on, does not fit the memory limit")
    if first is not None:  # 1F1B runs first: its step calibrates the compute and the messages
        measure(first)
        if math.isnan(first.measured_ms) or math.isnan(first.measured_busy_ms):
            notes.append(f"not calibrated: 1F1B's run measured no step ({first.run_error or 'no timeline'})")
        else:
            fit = _tune_calibrate(ok, first, tc, nproc, cores, notes, say)
    ok.sort(key=lambda c: c.predicted_ms)
    to_run = ok[:top] + [c for c in ok[top:] if c.name == "1f1b"]
    for r in range(rounds):
        for c in to_run:
            if not (r == 0 and c is first):  # its first round ran already
                measure(c)
    return to_run, fit


def _tune_machine(profile: Any, nproc: int, threads: int, cores: float | None, tc: float | None,
                  notes: list[str], say: Callable[[str], None]) -> tuple[float | None, float]:
    """The cores the ranks share and the communication time per message, from the options or
    this machine (see :func:`tune`); each is noted."""
    if cores is None:
        cores = _shared_cores(threads)
    if cores is not None and cores < nproc:
        notes.append(f"{nproc} processes share {cores:g} core(s) ({threads} thread(s) each): the prediction "
                     "shares them among the ranks that compute at each moment")
    if tc is None:
        from schedlang.runtime.launch import p2p_seconds

        size = max(int(r.get("out_bytes", 0)) for r in profile.stages[:-1])
        say(f"measuring one message of {size} bytes between two processes while {nproc - 2} more compute")
        tc = 1e3 * p2p_seconds(size, busy=nproc - 2, samples=5)
        notes.append(f"communication: {tc:.4f} ms per message of {size} bytes (measured between two processes "
                     f"while {nproc - 2} more computed, as the run's other ranks do; median of 5)")
    return cores, tc


def _shared_cores(threads: int) -> float | None:
    """How many ranks of ``threads`` threads this machine's CPU runs at once, when the ranks run
    on the CPU (no CUDA device); ``None`` on GPUs, where each rank has its own."""
    import os

    import torch

    if torch.cuda.is_available():
        return None
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1.0, n / threads)


def _tune_measure(c: Any, profile: Any, unit: float, model: str, nproc: int, steps: int,
                  split_backward: str, launcher: str, timeout: float, threads: int) -> None:
    """Run one candidate for ``steps`` steps; record each step's makespan after the first (ms)
    and the peak of activations saved for backward."""
    try:
        res = run(c.program, model=model, steps=steps, nproc=nproc, split_backward=split_backward,
                  launcher=launcher, timeout=timeout, cuts=profile.cuts, layers_from=profile.layers_from,
                  measure_memory=True, threads=threads)
    except SchedlangError as exc:  # a candidate that fails to run is recorded, the others still run
        c.run_error = exc.message
        return
    if not res.measured:
        c.run_error = "no timeline was measured"
        return
    if not c.op_samples:  # each op's planned time and its mean measured one (ms), first run only
        measured_ops = measured_op_times(c.program, res.events)
        c.op_samples = [(c.program.ops[k].time, 1e3 * t) for k, t in sorted(measured_ops.items())]
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
         min_time: float = 0.1, threads: int = 1, tc: float | None = None, cores: float | None = None, launcher: str = "spawn",
         timeout: float = 120.0, optimizer: bool = True, rounds: int = 1, calibrate: bool = True,
         progress: Callable[[str], None] | None = None) -> Any:
    """Profile ``model``, partition it, schedule every candidate on the measured costs, run the
    best few on ``nproc`` processes and choose the fastest measured one: a
    :class:`schedlang.tune.TuneResult` (the steps are in :mod:`schedlang.tune`'s docstring;
    needs torch, and ortools for the optimizer). ``mem_limit`` is in
    units of one microbatch's activations on stage 0 (per rank); ``time_limit`` is the
    optimizer's wall-clock budget in seconds; ``tc`` the communication time (ms) the prediction
    assumes (default: measured, one stage output sent between two worker processes); ``threads``
    the intra-op threads of each process, in the profile and in the measured runs; ``cores``
    the processors the ranks share (default: on a CPU, this process's cores over ``threads``; on
    GPUs none are shared), below ``nproc`` the prediction shares them among the busy ranks. The measured step time of a candidate is the median over its steps after the first,
    over ``rounds`` runs each (the candidates take turns, so a busy spell of the machine is
    spread over them rather than landing on one). With ``calibrate`` (no ``tc`` given, and a core
    per rank), 1F1B runs first, and the ops' speed against the profile and the cost of a message
    in a run (the runtime's instructions and wake-ups, which a bare message between two processes
    does not pay) are fitted to its run (:func:`schedlang.tune.calibrate`); every candidate is
    then predicted again with both, in its own orders, before the best ``top`` are chosen."""
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
    check_profile_options(repeats, warmup, threads, min_time)
    T.check_machine_options(cores, tc)
    check_model(model)
    build = layers_from if layers_from is not None else 2 * nproc
    families: tuple[int, ...] = (1, 2)
    if partition not in ("auto", "params"):  # given cuts say how many stages: one family
        ncuts = len([c for c in partition.split(",") if c.strip()])
        families = tuple(v for v in (1, 2) if v * nproc - 1 == ncuts) or (1,)
    notes: list[str] = []
    profiles = _tune_profiles(families, nproc, m, model, build, notes, say, split_backward=split_backward,
                              repeats=repeats, warmup=warmup, threads=threads, partition=partition,
                              min_time=min_time)
    unit = float(profiles[families[0]].stages[0]["mem_f"])
    if unit <= 0:
        raise SchedlangError("stage 0 saves no activations: no unit for memory")
    calibrate = calibrate and tc is None  # a given --tc is assumed as given
    cores, tc = _tune_machine(profiles[families[0]], nproc, threads, cores, tc, notes, say)
    tc_alone = tc
    cands = [T.Candidate(name, path, sched, v) for name, path, sched, v in
             T.candidate_specs(nproc, mem_limit, time_limit, optimizer) if v in profiles]
    for c in cands:
        say(f"scheduling {c.name}")
        _tune_schedule(c, profiles[c.v], unit, tc, nproc, m, mem_limit, cores)
    ok = [c for c in cands if not c.error]
    if not ok:
        raise SchedlangError("no candidate schedule fits the memory limit")

    def measure(c: Any) -> None:
        if not c.run_error:
            say(f"running {c.name} for {steps} steps on {nproc} processes")
            _tune_measure(c, profiles[c.v], unit, model, nproc, steps, split_backward, launcher, timeout, threads)

    to_run, fit = _tune_runs(ok, measure, top, rounds, calibrate, tc, nproc, cores, notes, say)
    ran = [c for c in to_run if not math.isnan(c.measured_ms)]
    chosen = min(ran, key=lambda c: c.measured_ms) if ran else None
    result = T.TuneResult(ok + [c for c in cands if c.error], chosen, profiles, unit, mem_limit, notes=notes,
                          comm_alone_ms=tc_alone, calibration=fit)
    if chosen is not None:
        chosen.chosen = True
        try:
            result.csv_text = emit(chosen.program, "torch-csv")
        except SchedlangError as exc:
            notes.append(f"{chosen.name} has no PyTorch CSV: {exc.message}")
        result.sched_text = T.sched_text(chosen.program, result.csv_text, profiles[chosen.v], unit, fit.message_ms)
    return result
