"""Interop with PyTorch's pipeline schedules (``torch.distributed.pipelining``, torch 2.13).

Export (``--emit torch-csv`` and ``--emit torch-csv-comms``): one CSV row per rank, one cell per
action, no header, the format ``_PipelineScheduleRuntime._load_csv(path, format=...)`` reads.

- ``torch-csv`` (``format="compute_only"``): compute actions only, ``{stage}{type}{mb}`` with type
  ``F`` (role F), ``I`` (role B, the input backward), ``W`` (role W) and ``B`` (role BW, PyTorch's
  full backward); an overlapped forward and backward slot is ``({F};{B or I})OVERLAP_F_B``.
  PyTorch inserts the communication and the ``REDUCE_GRAD``s itself.
- ``torch-csv-comms`` (``format="compute_comms"``): the streams of :mod:`schedlang.codegen`
  translated action by action: ``SEND_ACT``/``RECV_ACT`` -> ``{s}SEND_F{mb}``/``{s}RECV_F{mb}``,
  ``SEND_GRAD``/``RECV_GRAD`` -> ``{s}SEND_B{mb}``/``{s}RECV_B{mb}`` (a receive names the
  receiving stage, as PyTorch's do), ``REDUCE_GRAD`` -> ``{s}REDUCE_GRAD``; ``BATCH`` is
  flattened (PyTorch posts every p2p action asynchronously and waits at the consumer) and
  ``OPT_STEP`` dropped (the caller steps its optimizer after ``schedule.step``).

Before exporting, :func:`check_exportable` reports, as located errors, the schedules PyTorch
would reject or run differently: user op kinds; several kinds with one role; a stage/microbatch
without exactly one forward and either one full backward or one input plus one weight backward;
multi-op slots other than one forward with one backward; a rank holding no stage; data edges
between non-adjacent stages (PyTorch only talks to stage s-1 and s+1) and missing standard
dependencies (PyTorch always runs them: F[s]->F[s+1], last F -> its backward, backward s+1 ->
backward s, I -> W).

Import (:func:`import_csv`, ``schedlang import FILE.csv``): a PyTorch CSV (either format, or a
``pipeline_order``) to a schedlang program with explicit orders. Ranks are the rows; stages and
microbatches are one more than the largest indices; the placement is where each stage's actions
are. Full backwards only give ``import "std:fused"`` (F, BW); split backwards only give
``import "std:fbw"`` (F, B, W); a mix gives a self-contained program with all four kinds, each
(stage, mb) using the kind the CSV names. Communication, ``REDUCE_GRAD``, ``UNSHARD`` and
``RESHARD`` actions are skipped (``compute_only`` rejects them, as PyTorch does); empty cells and
``None`` are idle steps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schedlang import isa
from schedlang.ir import Op, Program, Role
from schedlang.source import Note, SchedlangError, Source, Span

TORCH_TYPE = {Role.F: "F", Role.B: "I", Role.W: "W", Role.BW: "B"}
KIND_OF_TYPE = {"F": "F", "I": "B", "W": "W", "B": "BW"}
COMPUTE_TYPES = frozenset(KIND_OF_TYPE)
COMM_TYPES = frozenset({"SEND_F", "RECV_F", "SEND_B", "RECV_B", "UNSHARD", "RESHARD", "REDUCE_GRAD"})
FORMATS = ("auto", "compute_only", "compute_comms")


# ================================================================== export: checks


def _slot_positions(program: Program) -> dict[int, tuple[int, int]]:
    return {k: (r, i) for r, slots in enumerate(program.orders.ranks) for i, slot in enumerate(slots) for k in slot}


def _op_span(program: Program, op_id: int) -> Span | None:
    pos = _slot_positions(program).get(op_id)
    return program.orders.slot_span(*pos) if pos else program.schedule_span


def _kind_span(program: Program, name: str) -> Span | None:
    return program.kind(name).span


def _check_kinds(program: Program) -> None:
    used = {o.kind for o in program.ops}
    seen: dict[Role, str] = {}
    for k in program.kinds:
        if k.name not in used:
            continue
        if k.role is Role.USER:
            raise SchedlangError(f"PyTorch's schedule format has no user op kinds: '{k.name}' cannot be "
                                 "exported (torch-csv knows F, I, W and B only)", k.span)
        if k.role in seen:
            raise SchedlangError(f"PyTorch's schedule format has one action per role: kinds '{seen[k.role]}' "
                                 f"and '{k.name}' both have role {k.role.value}", k.span)
        seen[k.role] = k.name


def _check_coverage(program: Program) -> None:
    by_role: dict[Role, str] = {program.role(o): o.kind for o in program.ops}
    for s in range(program.num_stages):
        for i in range(program.num_microbatches):
            has = {r for r, name in by_role.items() if program.find(name, s, i) is not None}
            label = f"stage {s}, microbatch {i}"
            if Role.F not in has:
                f_kind = by_role.get(Role.F)
                raise SchedlangError(f"PyTorch runs every stage on every microbatch; {label} has no forward "
                                     "(its op declaration excludes it)" if f_kind else
                                     f"PyTorch runs one forward per stage and microbatch; {label} has none",
                                     _kind_span(program, f_kind) if f_kind else program.schedule_span)
            full, split = Role.BW in has, (Role.B in has, Role.W in has)
            if full == any(split) or split[0] != split[1]:
                raise SchedlangError(f"PyTorch needs either one full backward (B) or one input backward (I) "
                                     f"and one weight backward (W) per stage and microbatch; {label} has "
                                     f"{', '.join(sorted(by_role[r] for r in has if r is not Role.F)) or 'none'}",
                                     program.schedule_span)


def _check_slots(program: Program) -> None:
    for r, slots in enumerate(program.orders.ranks):
        for k, slot in enumerate(slots):
            if len(slot) == 1:
                continue
            roles = sorted(program.role(program.ops[x]).value for x in slot)
            if not (len(slot) == 2 and "F" in roles and ({"B", "BW"} & set(roles))):
                ops = " & ".join(program.ops[x].label for x in slot)
                raise SchedlangError(f"PyTorch can only overlap one forward with one backward "
                                     f"(OVERLAP_F_B); cannot export the slot {ops} of rank {r}",
                                     program.orders.slot_span(r, k) or program.schedule_span)


def _required_edges(program: Program) -> list[tuple[Op, Op, str]]:
    """The dependencies PyTorch's runtime always enforces, as (src, dst, why)."""
    S = program.num_stages
    by_role = {program.role(o): o.kind for o in program.ops}
    out: list[tuple[Op, Op, str]] = []

    def back(s: int, i: int) -> Op | None:
        return program.find(by_role.get(Role.BW, ""), s, i) or program.find(by_role.get(Role.B, ""), s, i)

    for i in range(program.num_microbatches):
        for s in range(S):
            f, b = program.find(by_role[Role.F], s, i), back(s, i)
            assert f is not None and b is not None
            if s + 1 < S:
                f2, b2 = program.find(by_role[Role.F], s + 1, i), back(s + 1, i)
                assert f2 is not None and b2 is not None
                out.append((f, f2, "its input activation"))
                out.append((b2, b, "its output gradient"))
            else:
                out.append((f, b, "the loss"))
            w = program.find(by_role.get(Role.W, ""), s, i)
            if w is not None and program.role(b) is Role.B:
                out.append((b, w, "its input backward (I before W)"))
    return out


def _check_edges(program: Program) -> None:
    from schedlang.codegen import message_kind

    have = {(e.src, e.dst) for e in program.edges}
    for src, dst, why in _required_edges(program):
        if (src.id, dst.id) not in have:
            raise SchedlangError(f"PyTorch runs {dst.label} only after {src.label} ({why}), but the program "
                                 f"has no such dependency, so its order may not respect it", _op_span(program, dst.id))
    for e in program.edges:
        src, dst = program.ops[e.src], program.ops[e.dst]
        if message_kind(program, src, dst) is not None and abs(src.stage - dst.stage) != 1:
            span = program.rule_spans[e.rule] if 0 <= e.rule < len(program.rule_spans) else None
            raise SchedlangError(f"PyTorch only moves tensors between adjacent stages; the dependency "
                                 f"{src.label} -> {dst.label} carries one from stage {src.stage} to stage "
                                 f"{dst.stage}", span)


def check_exportable(program: Program) -> None:
    """Raise a located :class:`SchedlangError` if PyTorch would reject or misrun the schedule."""
    if program.weights.asynchronous:
        raise SchedlangError(f"PyTorch's pipelining trains synchronously (one optimizer step per flushed "
                             f"batch): a schedule with 'weights {program.weights.policy}' would run there under "
                             "other semantics, so it is not exported", program.weights.span)
    for r in range(program.num_ranks):
        if not program.stages_on(r):
            raise SchedlangError(f"PyTorch needs at least one stage per rank; rank {r} holds none",
                                 program.schedule_span)
    _check_kinds(program)
    if not any(program.role(o).is_backward for o in program.ops):
        raise SchedlangError("PyTorch's training schedules need backward ops; this program has none",
                             program.schedule_span)
    _check_coverage(program)
    _check_slots(program)
    _check_edges(program)


# ================================================================== export: emitters


def _action(program: Program, op: Op) -> str:
    return f"{op.stage}{TORCH_TYPE[program.role(op)]}{op.mb}"


def torch_compute_rows(program: Program) -> list[list[str]]:
    """Per rank, its compute actions in PyTorch's notation (after :func:`check_exportable`)."""
    rows = []
    for slots in program.orders.ranks:
        row = []
        for slot in slots:
            ops = sorted((program.ops[k] for k in slot), key=lambda o: program.role(o) is not Role.F)
            if len(ops) == 1:
                row.append(_action(program, ops[0]))
            else:
                row.append("(" + ";".join(_action(program, o) for o in ops) + ")OVERLAP_F_B")
        rows.append(row)
    return rows


_COMM_NAME = {isa.Opcode.SEND_ACT: "SEND_F", isa.Opcode.RECV_ACT: "RECV_F", isa.Opcode.SEND_GRAD: "SEND_B",
              isa.Opcode.RECV_GRAD: "RECV_B"}
_ISA_TYPE = {isa.Opcode.F: "F", isa.Opcode.B: "I", isa.Opcode.W: "W", isa.Opcode.BW: "B"}


def _stream_action(ins: isa.Instr) -> str | None:
    if ins.op in _COMM_NAME:
        return f"{ins.stage}{_COMM_NAME[ins.op]}{ins.mb}"
    if ins.op in _ISA_TYPE:
        return f"{ins.stage}{_ISA_TYPE[ins.op]}{ins.mb}"
    if ins.op is isa.Opcode.FB:
        back = "B" if ins.kind == "BW" else "I"
        return f"({ins.stage}F{ins.mb};{ins.stage2}{back}{ins.mb2})OVERLAP_F_B"
    if ins.op is isa.Opcode.REDUCE_GRAD:
        return f"{ins.stage}REDUCE_GRAD"
    assert ins.op is isa.Opcode.OPT_STEP, f"cannot export {ins} to PyTorch"
    return None


def streams_to_torch_rows(streams: isa.Streams) -> list[list[str]]:
    """The ``compute_comms`` rows for instruction streams (batches flattened, OPT_STEP dropped)."""
    rows = []
    for rs in streams.ranks:
        actions = (_stream_action(ins) for ins in isa.flatten(rs.instrs))
        rows.append([a for a in actions if a is not None])
    return rows


def torch_rows_to_streams(rows: list[list[str]], placement: list[int] | tuple[int, ...],
                          num_microbatches: int) -> isa.Streams:
    """Instruction streams for PyTorch ``compute_comms`` rows (e.g. PyTorch's own lowering), so
    :func:`schedlang.isa_check.check_streams` can check them. ``UNSHARD``/``RESHARD`` are skipped."""
    S = len(placement)
    ranks = []
    for r, row in enumerate(rows):
        instrs = []
        for cell in row:
            if cell in ("", "None"):
                continue
            m = _OVERLAP.fullmatch(cell)
            if m is not None:
                f, b = (_ACTION.fullmatch(x.strip()) for x in m.group(1).split(";"))
                assert f is not None and b is not None, cell
                instrs.append(isa.Instr(isa.Opcode.FB, int(f.group(1)), int(f.group(3)), stage2=int(b.group(1)),
                                        mb2=int(b.group(3)), kind="BW" if b.group(2) == "B" else "B"))
                continue
            a = _ACTION.fullmatch(cell)
            assert a is not None, cell
            s, kind, mb = int(a.group(1)), a.group(2), int(a.group(3) or -1)
            ins = _torch_to_instr(s, kind, mb, placement, S)
            if ins is not None:
                instrs.append(ins)
        stages = tuple(s for s in range(S) if placement[s] == r)
        ranks.append(isa.RankStream(r, stages, tuple(instrs)))
    return isa.Streams(len(rows), S, num_microbatches, tuple(placement), tuple(ranks))


def _torch_to_instr(s: int, kind: str, mb: int, placement: list[int] | tuple[int, ...], S: int) -> isa.Instr | None:
    compute = {"F": isa.Opcode.F, "I": isa.Opcode.B, "W": isa.Opcode.W, "B": isa.Opcode.BW}
    if kind in compute:
        return isa.Instr(compute[kind], s, mb)
    if kind == "REDUCE_GRAD":
        return isa.Instr(isa.Opcode.REDUCE_GRAD, s)
    comm = {"SEND_F": (isa.Opcode.SEND_ACT, s + 1), "RECV_F": (isa.Opcode.RECV_ACT, s - 1),
            "SEND_B": (isa.Opcode.SEND_GRAD, s - 1), "RECV_B": (isa.Opcode.RECV_GRAD, s + 1)}
    if kind in comm:
        op, peer_stage = comm[kind]
        assert 0 <= peer_stage < S, f"{s}{kind}{mb}"
        return isa.Instr(op, s, mb, peer=placement[peer_stage], peer_stage=peer_stage)
    return None  # UNSHARD / RESHARD


_COMM_PEER = {"SEND_F": 1, "RECV_F": -1, "SEND_B": -1, "RECV_B": 1}  # peer stage offset
_STREAM_COMM = {"SEND_F": isa.Opcode.SEND_ACT, "RECV_F": isa.Opcode.RECV_ACT, "SEND_B": isa.Opcode.SEND_GRAD,
                "RECV_B": isa.Opcode.RECV_GRAD}
_STREAM_COMPUTE = {"F": isa.Opcode.F, "I": isa.Opcode.B, "W": isa.Opcode.W, "B": isa.Opcode.BW}

CsvSpans = dict[tuple[int | None, int | None], Span]


def torch_csv_streams(text: str, name: str = "<csv>") -> tuple[isa.Streams, CsvSpans, str]:
    """Instruction streams for a PyTorch schedule CSV, to check with the stream checker
    (:func:`schedlang.isa_check.check_streams`). Returns the streams, the CSV cell of each
    instruction (``(rank, index)``; ``(rank, None)``: the rank's row) and the CSV's kind:

    - ``csv`` (``compute_comms``: it has ``SEND``/``RECV``/``REDUCE_GRAD`` actions): each action
      becomes an instruction (``UNSHARD``/``RESHARD`` are skipped: they do not move pipeline
      tensors); every ``RECV`` and ``REDUCE_GRAD`` must be there, as PyTorch requires;
    - ``csv-compute-only`` (no such actions): the communication and ``REDUCE_GRAD``\\ s are added as
      PyTorch adds them when it loads a compute-only CSV (see :func:`_add_comms`).

    There is no ``OPT_STEP``: PyTorch's caller steps the optimizer after the schedule (check with
    ``opt_step=False``).
    The compute actions are checked as for import: each once, every stage on every microbatch,
    one forward and either a full backward or an input and a weight backward.
    """
    ts = parse_torch_csv(text, name, "auto")
    placement = _placement(ts)
    _check_actions(ts)
    cells = _csv_cells(ts.source)[:len(ts.rows)]
    comms = any((a := _ACTION.fullmatch(c)) is not None and a.group(2) in {*_STREAM_COMM, "REDUCE_GRAD"}
                for row in cells for c, _ in row)
    if comms:
        ranks, spans = _comm_rows(cells, placement)
    else:
        ranks, spans = _add_comms(ts, placement)
    rows = []
    for r, instrs in enumerate(ranks):
        spans[(r, None)] = Span(ts.source, r + 1, 1)
        spans[(r, len(instrs))] = spans.get((r, len(instrs) - 1), spans[(r, None)])  # the end of the row
        rows.append(isa.RankStream(r, tuple(s for s, q in enumerate(placement) if q == r), tuple(instrs)))
    streams = isa.Streams(len(ranks), len(placement), ts.num_microbatches, tuple(placement), tuple(rows))
    return streams, spans, "csv" if comms else "csv-compute-only"


def _csv_cells(src: Source) -> list[list[tuple[str, Span]]]:
    """Per line, its non-empty cells (quotes and blanks stripped, ``None`` skipped) and their spans."""
    rows = []
    for lineno, line in enumerate(src.text.splitlines(), start=1):
        row, col = [], 1
        for cell in line.split(","):
            text = cell.strip().strip('"').strip()
            if text not in ("", "None"):
                row.append((text, Span(src, lineno, col, lineno, col + max(len(cell), 1))))
            col += len(cell) + 1
        rows.append(row)
    return rows


def _comm_rows(cells: list[list[tuple[str, Span]]], placement: list[int]) -> tuple[list[list[isa.Instr]], CsvSpans]:
    S = len(placement)
    ranks: list[list[isa.Instr]] = []
    spans: CsvSpans = {}
    for r, row in enumerate(cells):
        instrs: list[isa.Instr] = []
        for text, span in row:
            a = _ACTION.fullmatch(text)
            kind = a.group(2) if a is not None else ""
            ins: isa.Instr | None
            if a is None or kind in _STREAM_COMPUTE:
                ins = _slot_instr(_parse_cell(text, span, "auto"))
            elif kind in ("UNSHARD", "RESHARD"):
                ins = None
            else:
                if len(a.group(1)) > 9 or len(a.group(3)) > 9:  # int() of a huge one is slow or refused
                    raise SchedlangError(f"stage or microbatch index too large in '{text[:40]}'", span)
                s = int(a.group(1))
                if s >= S:
                    raise SchedlangError(f"'{text}' names stage {s}, but the stages run 0..{S - 1}", span)
                if kind == "REDUCE_GRAD":
                    ins = isa.Instr(isa.Opcode.REDUCE_GRAD, s)
                else:
                    q = s + _COMM_PEER[kind]
                    if not 0 <= q < S:
                        raise SchedlangError(f"'{text}' has no peer stage (stages run 0..{S - 1})", span)
                    if a.group(3) == "":
                        raise SchedlangError(f"'{text}' needs a microbatch index", span)
                    ins = isa.Instr(_STREAM_COMM[kind], s, int(a.group(3)), peer=placement[q], peer_stage=q)
            if ins is not None:
                spans[(r, len(instrs))] = span
                instrs.append(ins)
        ranks.append(instrs)
    return ranks, spans


def _add_comms(ts: TorchSchedule, placement: list[int]) -> tuple[list[list[isa.Instr]], CsvSpans]:
    """Add communication and ``REDUCE_GRAD`` to a compute-only schedule as PyTorch 2.13 does on
    load: a ``REDUCE_GRAD`` of a stage becomes the action right after the stage's m-th ``B`` or
    ``W``; then, visiting the ranks in turn, each rank runs its next action once its inputs are
    there (computed on the rank or received), followed by a send for every output another rank
    consumes, whose receive is appended to that rank's stream at once. A schedule where no rank
    can go on is refused, as PyTorch refuses it, at the cell of the first stuck rank's next
    action."""
    S = len(placement)
    todo, reduce_of = _reduce_grad_actions(ts)
    heads = [0] * len(todo)
    ranks: list[list[isa.Instr]] = [[] for _ in todo]
    spans: CsvSpans = {}
    have: list[set[tuple[str, int, int]]] = [set() for _ in todo]

    def emit(r: int, ins: isa.Instr, span: Span) -> None:
        spans[(r, len(ranks[r]))] = span
        ranks[r].append(ins)

    def ready(r: int, a: Action) -> bool:
        if a.kind == "F" and a.stage > 0:
            return ("F", a.stage - 1, a.mb) in have[r] or ("recv_act", a.stage, a.mb) in have[r]
        if a.kind in ("I", "B") and a.stage < S - 1:
            return ("in", a.stage + 1, a.mb) in have[r] or ("recv_grad", a.stage, a.mb) in have[r]
        return True

    def here(r: int) -> Span:
        return todo[r][min(heads[r], len(todo[r]) - 1)][1]

    while any(h < len(items) for h, items in zip(heads, todo, strict=True)):
        progress = False
        for r, items in enumerate(todo):
            if heads[r] == len(items) or not all(ready(r, a) for a in items[heads[r]][0]):
                continue
            slot, span = items[heads[r]]
            if not slot:
                emit(r, isa.Instr(isa.Opcode.REDUCE_GRAD, reduce_of[(r, heads[r])]), span)
            else:
                emit(r, _slot_instr(slot), span)
            for a in slot:
                have[r].add(("in" if a.kind in ("I", "B") else a.kind, a.stage, a.mb))
                q = a.stage + 1 if a.kind == "F" else a.stage - 1 if a.kind in ("I", "B") else -1
                if 0 <= q < S and placement[q] != r:
                    grad, p = a.kind != "F", placement[q]
                    emit(r, isa.Instr(isa.Opcode.SEND_GRAD if grad else isa.Opcode.SEND_ACT, a.stage, a.mb, peer=p,
                                      peer_stage=q), span)
                    emit(p, isa.Instr(isa.Opcode.RECV_GRAD if grad else isa.Opcode.RECV_ACT, q, a.mb, peer=r,
                                      peer_stage=a.stage), here(p))
                    have[p].add(("recv_grad" if grad else "recv_act", q, a.mb))
            heads[r] += 1
            progress = True
        if not progress:
            stuck = [r for r, items in enumerate(todo) if heads[r] < len(items)]
            waits = ", ".join(f"rank {r} at {_fmt_cell(todo[r][heads[r]][0])}" for r in stuck)
            raise SchedlangError("PyTorch cannot add communication to this compute-only schedule: every rank "
                                 f"waits for an input no rank can send yet ({waits})", here(stuck[0]))
    return ranks, spans


def _reduce_grad_actions(ts: TorchSchedule) -> tuple[list[list[tuple[tuple[Action, ...], Span]]],
                                                      dict[tuple[int, int], int]]:
    """Per rank, its slots with their cells and, right after a stage's m-th ``B`` or ``W``, an
    empty slot standing for the stage's ``REDUCE_GRAD``; and (rank, position) -> that stage."""
    todo: list[list[tuple[tuple[Action, ...], Span]]] = []
    reduce_of: dict[tuple[int, int], int] = {}
    backwards: dict[int, int] = {}
    for r, (row, row_spans) in enumerate(zip(ts.rows, ts.spans, strict=True)):
        todo.append([])
        for slot, span in zip(row, row_spans, strict=True):
            todo[r].append((slot, span))
            for a in slot:
                if a.kind in ("B", "W"):
                    backwards[a.stage] = backwards.get(a.stage, 0) + 1
                    if backwards[a.stage] == ts.num_microbatches:
                        reduce_of[(r, len(todo[r]))] = a.stage
                        todo[r].append(((), span))
    return todo, reduce_of


def _fmt_cell(slot: tuple[Action, ...]) -> str:
    return ";".join(f"{a.stage}{a.kind}{a.mb}" for a in slot)


def _slot_instr(slot: tuple[Action, ...]) -> isa.Instr:
    if len(slot) == 1:
        a = slot[0]
        return isa.Instr(_STREAM_COMPUTE[a.kind], a.stage, a.mb)
    f = next(a for a in slot if a.kind == "F")
    b = next(a for a in slot if a.kind != "F")
    return isa.Instr(isa.Opcode.FB, f.stage, f.mb, stage2=b.stage, mb2=b.mb, kind="BW" if b.kind == "B" else "B")


def torch_comms_rows(program: Program) -> list[list[str]]:
    """Per rank, compute and communication actions (PyTorch's ``compute_comms`` format)."""
    from schedlang.codegen import codegen

    return streams_to_torch_rows(codegen(program))


def rows_to_csv(rows: list[list[str]]) -> str:
    """CSV text as PyTorch's ``csv.writer`` writes it (no cell needs quoting)."""
    return "".join(",".join(row) + "\n" for row in rows)


def emit_torch_csv(program: Program) -> str:
    """``--emit torch-csv``: compute-only CSV for ``_load_csv(format="compute_only")``."""
    check_exportable(program)
    return rows_to_csv(torch_compute_rows(program))


def emit_torch_csv_comms(program: Program) -> str:
    """``--emit torch-csv-comms``: CSV for ``_load_csv(format="compute_comms")``."""
    check_exportable(program)
    return rows_to_csv(torch_comms_rows(program))


# ================================================================== import

# indices of any length match, so that one of over 9 digits gets its own error (no schedule has
# one, and int() of a huge one is slow or refused)
_ACTION = re.compile(r"(\d+)(F|I|B|W|UNSHARD|RESHARD|REDUCE_GRAD|SEND_F|RECV_F|SEND_B|RECV_B)(\d*)")
_OVERLAP = re.compile(r"\((.*)\)OVERLAP_F_B")


@dataclass(frozen=True, slots=True)
class Action:
    """One compute action of an imported CSV: kind is F, I, W or B (PyTorch's types)."""

    stage: int
    kind: str
    mb: int


@dataclass(frozen=True, slots=True)
class TorchSchedule:
    """A parsed PyTorch CSV: per rank, its compute slots (1 or 2 actions) and their cell spans."""

    rows: tuple[tuple[tuple[Action, ...], ...], ...]
    spans: tuple[tuple[Span, ...], ...]
    source: Source

    @property
    def num_stages(self) -> int:
        return 1 + max((a.stage for row in self.rows for slot in row for a in slot), default=-1)

    @property
    def num_microbatches(self) -> int:
        return 1 + max((a.mb for row in self.rows for slot in row for a in slot), default=-1)


def _parse_one(text: str, span: Span, fmt: str) -> Action | None:
    m = _ACTION.fullmatch(text)
    if m is None:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise SchedlangError(f"not a PyTorch action: '{shown}' (expected e.g. 0F1, 2I0, 1SEND_B3)", span)
    stage, kind, mb = m.groups()
    if len(stage) > 9 or len(mb) > 9:  # also keeps int() clear of Python's 4300-digit limit
        raise SchedlangError(f"stage or microbatch index too large in '{text[:40]}'", span)
    if kind in COMM_TYPES:
        if fmt == "compute_only":
            raise SchedlangError(f"communication action '{text}' in a compute_only schedule (use "
                                 "--format compute_comms)", span)
        return None
    if mb == "":
        raise SchedlangError(f"compute action '{text}' needs a microbatch index", span)
    return Action(int(stage), kind, int(mb))


def _parse_cell(text: str, span: Span, fmt: str) -> tuple[Action, ...]:
    text = text.strip().strip('"').strip()
    if text in ("", "None"):
        return ()
    m = _OVERLAP.fullmatch(text)
    if m is None:
        one = _parse_one(text, span, fmt)
        return () if one is None else (one,)
    parts = tuple(a for p in m.group(1).split(";") if (a := _parse_one(p.strip(), span, fmt)) is not None)
    if len(parts) != 2 or sorted(a.kind == "F" for a in parts) != [False, True] or \
            not {a.kind for a in parts} & {"B", "I"}:
        raise SchedlangError("OVERLAP_F_B must hold one forward and one backward (B or I)", span)
    return parts


def parse_torch_csv(text: str, name: str = "<csv>", fmt: str = "auto") -> TorchSchedule:
    """Parse a PyTorch schedule CSV (see the module docstring); errors point at the cell."""
    if fmt not in FORMATS:
        raise SchedlangError(f"unknown CSV format '{fmt}' (formats: {', '.join(FORMATS)})")
    src = Source(name, text)
    rows, spans = [], []
    for cells in _csv_cells(src):
        slots = [(slot, span) for cell, span in cells if (slot := _parse_cell(cell, span, fmt))]
        rows.append(tuple(slot for slot, _ in slots))
        spans.append(tuple(span for _, span in slots))
    while rows and not rows[-1] and not text.splitlines()[len(rows) - 1].strip():
        rows.pop()
        spans.pop()
    if not rows:
        raise SchedlangError("empty schedule: no rows", Span(src, 1, 1))
    for r, row in enumerate(rows):
        if not row:
            raise SchedlangError(f"rank {r} (row {r + 1}) has no compute actions: PyTorch reads one row per rank "
                                 "and every rank holds at least one stage (a blank row would shift the ranks "
                                 "after it)", Span(src, r + 1, 1))
    return TorchSchedule(tuple(rows), tuple(spans), src)


def _placement(ts: TorchSchedule) -> list[int]:
    where: dict[int, tuple[int, Span]] = {}
    for r, (row, row_spans) in enumerate(zip(ts.rows, ts.spans, strict=True)):
        for slot, span in zip(row, row_spans, strict=True):
            for a in slot:
                prev = where.setdefault(a.stage, (r, span))
                if prev[0] != r:
                    raise SchedlangError(f"stage {a.stage} appears on rank {r} and on rank {prev[0]}", span,
                                         (Note(prev[1], f"stage {a.stage} first appears here"),))
    for s in range(ts.num_stages):
        if s not in where:
            raise SchedlangError(f"stage {s} has no actions (stages run 0..{ts.num_stages - 1})",
                                 Span(ts.source, 1, 1))
    return [where[s][0] for s in range(ts.num_stages)]


def _check_actions(ts: TorchSchedule) -> dict[tuple[int, int], bool]:
    """Each action once; per (stage, mb) one F and B or I+W. Returns (stage, mb) -> full backward."""
    seen: dict[Action, Span] = {}
    for row, row_spans in zip(ts.rows, ts.spans, strict=True):
        for slot, span in zip(row, row_spans, strict=True):
            for a in slot:
                if a in seen:
                    raise SchedlangError(f"action {a.stage}{a.kind}{a.mb} appears twice", span,
                                         (Note(seen[a], "first here"),))
                seen[a] = span
    full: dict[tuple[int, int], bool] = {}
    for s in range(ts.num_stages):
        for i in range(ts.num_microbatches):
            have = {k for k in COMPUTE_TYPES if Action(s, k, i) in seen}
            ok = "F" in have and (have - {"F"} in ({"B"}, {"I", "W"}))
            if not ok:
                got = ", ".join(f"{s}{k}{i}" for k in sorted(have)) or "nothing"
                raise SchedlangError(f"stage {s}, microbatch {i} needs {s}F{i} and either {s}B{i} or both "
                                     f"{s}I{i} and {s}W{i}; the schedule has {got}", Span(ts.source, 1, 1))
            full[(s, i)] = "B" in have
    return full


_MIXED_OPS = """\
import "std:costs"

op F[s, i] time at(tf, s) mem at(mem_f, s)
op B[s, i] time at(tb, s) mem at(mem_w, s) - at(mem_f, s) where not full[s][i]
op W[s, i] time at(tw, s) mem -at(mem_w, s) where not full[s][i]
op BW[s, i] time at(tb, s) + at(tw, s) mem -at(mem_f, s) where full[s][i]

dep F[s, i] -> F[s + 1, i]
dep F[s, i] -> B[s, i] where s == num_stages - 1
dep F[s, i] -> BW[s, i] where s == num_stages - 1
dep B[s, i] -> B[s - 1, i]
dep B[s, i] -> BW[s - 1, i]
dep BW[s, i] -> B[s - 1, i]
dep BW[s, i] -> BW[s - 1, i]
dep B[s, i] -> W[s, i]
"""


def _fmt_slot(slot: tuple[Action, ...]) -> str:
    return " & ".join(f"{KIND_OF_TYPE[a.kind]}[{a.stage}, {a.mb}]" for a in slot)


def torch_to_sched(ts: TorchSchedule, origin: str = "") -> tuple[str, dict[tuple[int, int], Span]]:
    """The schedlang source for a parsed CSV, and a map from (line, col) of each emitted slot in
    that source to the CSV cell it came from (to relocate errors)."""
    placement = _placement(ts)
    full = _check_actions(ts)
    lines = [f"# Imported from PyTorch schedule {origin or ts.source.name}", ""]
    if all(full.values()):
        lines.append('import "std:fused"')
    elif not any(full.values()):
        lines.append('import "std:fbw"')
    else:
        rows = ", ".join("[" + ", ".join("true" if full[(s, i)] else "false"
                                         for i in range(ts.num_microbatches)) + "]"
                         for s in range(ts.num_stages))
        mixed = _MIXED_OPS.splitlines()
        lines += mixed[:2]
        lines.append("# full[s][i]: PyTorch ran a full backward (B) for stage s, microbatch i, else I and W")
        lines.append(f"let full = [{rows}]")
        lines += mixed[1:]
    lines += ["", f"ranks {len(ts.rows)}", f"stages {ts.num_stages}", f"microbatches {ts.num_microbatches}",
              f"place [{', '.join(map(str, placement))}]", "", "schedule {"]
    where: dict[tuple[int, int], Span] = {}
    for r, (row, row_spans) in enumerate(zip(ts.rows, ts.spans, strict=True)):
        lines.append(f"  rank {r} {{")
        for start in range(0, len(row), 8):
            text, col = "   ", 4
            for slot, span in zip(row[start:start + 8], row_spans[start:start + 8], strict=True):
                piece = _fmt_slot(slot)
                where[(len(lines) + 1, col + 1)] = span
                text += " " + piece
                col += len(piece) + 1
            lines.append(text)
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n", where


def import_torch(text: str, name: str = "<csv>", fmt: str = "auto", out_name: str = "<imported>") -> tuple[str, Program]:
    """Parse a PyTorch CSV, build the schedlang source and compile it; returns (source, program).

    A schedule that is not executable (a deadlock, an order against the dependencies) is reported
    at the offending CSV cell."""
    from schedlang.lower import lower_source
    from schedlang.verify import verify

    ts = parse_torch_csv(text, name, fmt)
    source, where = torch_to_sched(ts, name)
    program = lower_source(Source(out_name, source))
    try:
        verify(program)
    except SchedlangError as exc:
        span = exc.span
        cell = where.get((span.line, span.col)) if span is not None else None
        raise SchedlangError(f"the imported schedule is invalid: {exc.message}", cell or span,
                             exc.notes) from None
    return source, program


def import_csv(path: str, fmt: str = "auto") -> Program:
    """Read and import a PyTorch CSV file (see :func:`import_torch`)."""
    from schedlang.load import read_text_file

    return import_torch(read_text_file(path).text, path, fmt)[1]
