"""Codegen: a scheduled IR program to per-rank instruction streams (:mod:`schedlang.isa`).

:func:`codegen` requires a scheduled, verified :class:`~schedlang.ir.Program` (explicit orders,
every op once, dependencies consistent with the orders) and guarantees streams that pass
:func:`schedlang.isa_check.check_streams` (the one stream checker: shape, data flow, messages
matched in order, and progress under buffered sends) when its stages form chains (see the stage
graph in :mod:`schedlang.isa`); a program where a stage reads several stages gets streams whose
messages match and that do not deadlock, but that the checker (its shape check expects chains)
and the runtime refuse.

What it emits, per rank, walking the rank's slots in order:

1. Receives for every message the slot's ops consume (see *Receive placement*).
2. The compute instruction(s) of the slot. Roles map to opcodes: F -> ``F``, B -> ``B``,
   W -> ``W``, BW -> ``BW``, USER -> ``USER kind=NAME``. A two-op slot holding one forward and one
   backward (B or BW role) becomes one ``FB`` (the forward in ``stage``/``mb``, the backward in
   ``stage2``/``mb2``, ``kind`` the backward's role). Any other multi-op slot is emitted as its ops
   one after another, in slot order (a runtime cannot overlap them anyway).
3. A send, right after the slot, for every message the slot's ops produce.

*Messages.* A dependency edge carries data only between two ranks and only when it is shaped like
the pipeline's data flow, on the same microbatch:

- forward to forward (roles F -> F): an activation, ``SEND_ACT``/``RECV_ACT``;
- backward to backward (roles B/BW -> B/BW): a gradient, ``SEND_GRAD``/``RECV_GRAD``.

Every other edge (same rank; different microbatches; anything involving W or a USER kind, or
F -> B across ranks) is a pure ordering constraint of the schedule: it shapes the orders the
scheduler produced, but carries no tensor, so it emits no instruction. Such constraints are
scheduling intent, not a correctness need of the computation.

*Receive placement.* Point-to-point messages between two ranks match in order of issue (one FIFO
per ordered rank pair, as in ``torch.distributed``). Sends come in the producer rank's compute
order. A receive goes before some slot of the receiver, never after its consumer's slot:

- ``recvs="lazy"``: just before the consumer's slot;
- ``recvs="eager"`` (default): before the receiver's first slot that starts no earlier than the
  send in the simulated timeline (:func:`schedlang.simulate.simulate`; strictly later when the
  producing slot takes no time), or before the consumer's slot if that comes first. A runtime that
  posts receives where the stream says and waits at first use (``irecv``) overlaps the transfer
  with the compute in between, and the sends and receives that happen at the same moment end up
  adjacent, so they batch.

Either way, a receive is then pulled earlier to the position of a later receive of its channel
when that one comes first, so each channel's receives follow its send order. Neither can block
forever. Lazy: every message received before slot k is produced, on its rank, no later than a
message that slot k consumes, which a valid schedule finishes before slot k starts. Eager: give
every instruction a time stamp (a slot its start, a send its slot's end, a receive the start of
the slot it precedes); every "must happen before" relation (stream order, send before matching
receive) is non-decreasing in these stamps, and strictly increasing across any slot that takes
time, so a waiting cycle could only pass through zero-time slots, whose messages are received
strictly later. (Codegen still runs the deadlock check on eager streams and falls back to lazy
placement if it ever failed.)

*Batching.* A maximal run of adjacent point-to-point instructions (no compute in between) that
holds both a send and a receive becomes one ``BATCH`` (in 1F1B's steady state: the activation sent
to the next rank and the gradient received from it). With ``batching="peer"`` the run is split
into one batch per peer: sends to peers it receives nothing from, then one group per peer it
receives from, in order of first receive; that layout is used only if no send ends up waiting
for a receive it did not wait for in the original order (sends may only move earlier), else the
run stays one batch. Within a batch, each channel keeps its order. Under buffered sends batching
cannot create a deadlock. Under rendezvous sends (a send waits for the peer's receive to be
posted) it is what avoids the classic pairwise deadlock, and one batch per run also avoids the
ring (rank r sends to r+1 while receiving from r-1): with eager receives and run batching, every
built-in schedule passes the rendezvous check at p = 2, 4 and 8 (tested); lazy receives or
per-peer batches do not (interleaved 1F1B, ZB-H2, ZB-V, DualPipe-V deadlock under rendezvous).

*Gradient reduction.* ``REDUCE_GRAD stage=s`` follows the last backward (B, W, BW or the
backward part of an FB) of stage ``s`` on its rank, placed before the next compute instruction
(after that op's sends and any receives that follow); ``OPT_STEP`` ends every stream. Programs
with no backward ops get neither.

*Weight-update policies.* Under an asynchronous ``weights`` policy (:mod:`schedlang.weights`)
the streams are format version 2 with ``weights=POLICY`` in the header: every ``F``, ``B``,
``W`` and ``BW`` carries the weight version it uses (``ver``, from the weight plan), an
``UPDATE stage=s`` follows every op after which the plan updates stage ``s`` (after the slot's
sends and the next slot's receives, so they still batch), a two-op slot is emitted as its ops one after another (no ``FB``: its two halves may use
different versions), and there is no ``REDUCE_GRAD`` or ``OPT_STEP``.

*Deadlock check.* Codegen runs the progress check of :mod:`schedlang.isa_check` (its module
docstring states the blocking semantics, ``sends`` buffered or rendezvous and ``recvs`` blocking
or posted, precisely) on the eager streams and falls back to lazy receives if it ever failed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from schedlang import isa
from schedlang.ir import Op as IrOp
from schedlang.ir import Program, Role
from schedlang.isa import Instr, RankStream, Streams
from schedlang.isa_check import find_deadlock
from schedlang.weights import WeightPlan, weight_plan

_COMPUTE = {Role.F: isa.Opcode.F, Role.B: isa.Opcode.B, Role.W: isa.Opcode.W, Role.BW: isa.Opcode.BW}


@dataclass(frozen=True, slots=True)
class Message:
    """One tensor moved between ranks: produced by op ``src``, consumed by op ``dst``."""

    src: int
    dst: int
    grad: bool  # False: an activation (F -> F); True: a gradient (backward -> backward)


# ------------------------------------------------------------------ messages


def message_kind(program: Program, src: IrOp, dst: IrOp) -> str | None:
    """``"act"``, ``"grad"`` or None (a pure ordering constraint) for an edge ``src -> dst``."""
    if src.rank == dst.rank or src.mb != dst.mb:
        return None
    rs, rd = program.role(src), program.role(dst)
    if rs is Role.F and rd is Role.F:
        return "act"
    if rs.is_backward and rd.is_backward:
        return "grad"
    return None


def messages(program: Program) -> list[Message]:
    """Every cross-rank, data-carrying dependency of the program, in edge order."""
    out: list[Message] = []
    seen: set[tuple[int, int]] = set()
    for e in program.edges:
        kind = message_kind(program, program.ops[e.src], program.ops[e.dst])
        if kind is not None and (e.src, e.dst) not in seen:
            seen.add((e.src, e.dst))
            out.append(Message(e.src, e.dst, kind == "grad"))
    return out


def _send(program: Program, m: Message) -> Instr:
    s, d = program.ops[m.src], program.ops[m.dst]
    op = isa.Opcode.SEND_GRAD if m.grad else isa.Opcode.SEND_ACT
    return Instr(op, stage=s.stage, mb=s.mb, peer=d.rank, peer_stage=d.stage)


def _recv(program: Program, m: Message) -> Instr:
    s, d = program.ops[m.src], program.ops[m.dst]
    op = isa.Opcode.RECV_GRAD if m.grad else isa.Opcode.RECV_ACT
    return Instr(op, stage=d.stage, mb=d.mb, peer=s.rank, peer_stage=s.stage)


# ------------------------------------------------------------------ compute


def compute_instrs(program: Program, slot: tuple[int, ...], plan: WeightPlan | None = None) -> list[Instr]:
    """The compute instruction(s) of one slot (see the module docstring)."""
    ops = [program.ops[k] for k in slot]
    roles = [program.role(o) for o in ops]
    if plan is not None:
        return [Instr(isa.Opcode.USER, stage=o.stage, mb=o.mb, kind=o.kind) if r is Role.USER else
                Instr(_COMPUTE[r], stage=o.stage, mb=o.mb, ver=plan.version[o.stage][o.mb])
                for o, r in zip(ops, roles, strict=True)]
    if len(ops) == 2 and sorted(r is Role.F for r in roles) == [False, True]:
        f, b = (ops[0], ops[1]) if roles[0] is Role.F else (ops[1], ops[0])
        rb = program.role(b)
        if rb.is_backward:
            return [Instr(isa.Opcode.FB, stage=f.stage, mb=f.mb, stage2=b.stage, mb2=b.mb, kind=rb.value)]
    out = []
    for o, r in zip(ops, roles, strict=True):
        if r is Role.USER:
            out.append(Instr(isa.Opcode.USER, stage=o.stage, mb=o.mb, kind=o.kind))
        else:
            out.append(Instr(_COMPUTE[r], stage=o.stage, mb=o.mb))
    return out


def _backward_stages(ins: Instr) -> tuple[int, ...]:
    if ins.op in (isa.Opcode.B, isa.Opcode.W, isa.Opcode.BW):
        return (ins.stage,)
    if ins.op is isa.Opcode.FB:
        return (ins.stage2,)
    return ()


# ------------------------------------------------------------------ codegen


def _lazy_recvs(program: Program, channels: dict[tuple[int, int], list[Message]],
                slot_of: dict[int, tuple[int, int]]) -> dict[tuple[int, int], list[Message]]:
    """(rank, slot index) -> the messages received just before that slot: each message before
    its consumer's slot, pulled earlier when a later message of its channel is needed first."""
    at: dict[tuple[int, int], list[Message]] = defaultdict(list)
    for (_, b), seq in channels.items():
        pos = [slot_of[m.dst][1] for m in seq]
        _fifo(pos)
        for m, j in zip(seq, pos, strict=True):
            at[(b, j)].append(m)
    return at


def _eager_recvs(program: Program, channels: dict[tuple[int, int], list[Message]],
                 slot_of: dict[int, tuple[int, int]]) -> dict[tuple[int, int], list[Message]]:
    """Like :func:`_lazy_recvs`, but each message is received before the first slot of its
    receiver that starts no earlier than the send in the simulated timeline (strictly later when
    the producing slot takes no time), or before its consumer's slot if that comes first."""
    from bisect import bisect_left, bisect_right

    from schedlang.simulate import simulate

    sim = simulate(program)
    orders = program.orders.ranks
    starts = [[min(sim.start[k] for k in slot) for slot in slots] for slots in orders]
    at: dict[tuple[int, int], list[Message]] = defaultdict(list)
    for (_, b), seq in channels.items():
        pos = []
        for m in seq:
            ra, ja = slot_of[m.src]
            sent = max(sim.end[k] for k in orders[ra][ja])
            zero = sent <= starts[ra][ja]
            first = (bisect_right if zero else bisect_left)(starts[b], sent)
            pos.append(min(slot_of[m.dst][1], first))
        _fifo(pos)
        for m, j in zip(seq, pos, strict=True):
            at[(b, j)].append(m)
    return at


def _fifo(pos: list[int]) -> None:
    """Make receive positions non-decreasing along a channel by pulling earlier ones forward."""
    for i in range(len(pos) - 2, -1, -1):
        pos[i] = min(pos[i], pos[i + 1])


def _rank_items(program: Program, rank: int, outgoing: dict[int, list[Message]],
                recv_at: dict[tuple[int, int], list[Message]], plan: WeightPlan | None = None) -> list[Instr]:
    items: list[Instr] = []
    updates = plan.update_ops() if plan is not None else {}
    pending: list[Instr] = []  # updates wait for the next compute, so the sends and receives batch
    for j, slot in enumerate(program.orders.ranks[rank]):
        items.extend(_recv(program, m) for m in recv_at.get((rank, j), ()))
        items.extend(pending)
        pending = [Instr(isa.Opcode.UPDATE, stage=updates[k]) for k in slot if k in updates]
        items.extend(compute_instrs(program, slot, plan))
        for k in slot:
            items.extend(_send(program, m) for m in outgoing.get(k, ()))
    return items + pending


def _insert_reductions(items: list[Instr]) -> list[Instr]:
    last: dict[int, int] = {}
    for i, ins in enumerate(items):
        for s in _backward_stages(ins):
            last[s] = i
    # each reduction goes before the next compute instruction after the stage's last backward
    at: dict[int, list[int]] = defaultdict(list)
    for s, i in sorted(last.items()):
        j = i + 1
        while j < len(items) and not items[j].op.is_compute:
            j += 1
        at[j].append(s)
    out: list[Instr] = []
    for i in range(len(items) + 1):
        out.extend(Instr(isa.Opcode.REDUCE_GRAD, stage=s) for s in at.get(i, ()))
        if i < len(items):
            out.append(items[i])
    return out


def _waited_before_sends(layout: list[list[int]], run: list[Instr]) -> dict[int, frozenset[int]]:
    """For each send (by index in the run), the receives the rank has waited for when it issues it;
    ``layout`` is a sequence of groups posted together (a group issues its sends, then waits)."""
    out: dict[int, frozenset[int]] = {}
    waited: set[int] = set()
    for group in layout:
        for k in group:
            if run[k].op.is_send:
                out[k] = frozenset(waited)
        waited.update(k for k in group if run[k].op.is_recv)
    return out


def _layout_run(run: list[Instr], per_peer: bool) -> list[Instr]:
    """Batch one run of adjacent p2p instructions (see *Batching* in the module docstring)."""
    if not (any(i.op.is_send for i in run) and any(i.op.is_recv for i in run)):
        return list(run)
    if not per_peer or len({i.peer for i in run}) == 1:
        return [Instr(isa.Opcode.BATCH, parts=tuple(run))]
    recv_peers = list(dict.fromkeys(i.peer for i in run if i.op.is_recv))
    groups = [[k] for k, i in enumerate(run) if i.op.is_send and i.peer not in recv_peers]
    groups += [[k for k, i in enumerate(run) if i.peer == peer] for peer in recv_peers]
    before = _waited_before_sends([[k] for k in range(len(run))], run)
    after = _waited_before_sends(groups, run)
    if not all(after[k] <= before[k] for k in before):
        # splitting per peer would make some send wait for a receive it did not wait for: one batch
        return [Instr(isa.Opcode.BATCH, parts=tuple(run))]
    out: list[Instr] = []
    for g in groups:
        parts = [run[k] for k in g]
        if any(p.op.is_send for p in parts) and any(p.op.is_recv for p in parts):
            out.append(Instr(isa.Opcode.BATCH, parts=tuple(parts)))
        else:
            out.extend(parts)
    return out


def batch(items: list[Instr], per_peer: bool = False) -> list[Instr]:
    """Batch the sends and receives of each run of adjacent p2p instructions: the whole run, or
    (``per_peer``) one batch per peer where that is safe."""
    out: list[Instr] = []
    run: list[Instr] = []
    for ins in items:
        if ins.op.is_p2p:
            run.append(ins)
            continue
        out.extend(_layout_run(run, per_peer))
        run.clear()
        out.append(ins)
    out.extend(_layout_run(run, per_peer))
    return out


RECV_PLACEMENTS = ("eager", "lazy")
BATCHINGS = ("run", "peer")


def codegen(program: Program, recvs: str = "eager", batching: str = "run") -> Streams:
    """Per-rank instruction streams for a scheduled program (see the module docstring).

    ``recvs``: receive placement, ``"eager"`` (default) or ``"lazy"``; ``batching``: one batch per
    run of adjacent sends and receives (``"run"``, default) or per peer (``"peer"``)."""
    assert recvs in RECV_PLACEMENTS, recvs
    assert batching in BATCHINGS, batching
    msgs = messages(program)
    outgoing: dict[int, list[Message]] = defaultdict(list)
    incoming: dict[int, list[Message]] = defaultdict(list)
    for m in msgs:
        outgoing[m.src].append(m)
        incoming[m.dst].append(m)
    # channel order = the producer rank's send order
    channels: dict[tuple[int, int], list[Message]] = defaultdict(list)
    for r, slots in enumerate(program.orders.ranks):
        for slot in slots:
            for k in slot:
                for m in outgoing.get(k, ()):
                    channels[(r, program.ops[m.dst].rank)].append(m)
    slot_of = {k: (r, j) for r, slots in enumerate(program.orders.ranks) for j, slot in enumerate(slots)
               for k in slot}
    has_backward = any(program.role(o) is not Role.F and program.role(o) is not Role.USER for o in program.ops)
    plan = weight_plan(program)

    def build(recv_at: dict[tuple[int, int], list[Message]]) -> Streams:
        ranks = []
        for r in range(program.num_ranks):
            items = _rank_items(program, r, outgoing, recv_at, plan)
            if plan is None:
                items = _insert_reductions(items)
            items = batch(items, batching == "peer")
            if has_backward and plan is None:
                items.append(Instr(isa.Opcode.OPT_STEP))
            ranks.append(RankStream(r, program.stages_on(r), tuple(items)))
        streams = _streams(program, tuple(ranks))
        if plan is None:
            return streams
        return replace(streams, version=2, weights=plan.policy)

    if recvs == "eager":
        streams = build(_eager_recvs(program, channels, slot_of))
        if find_deadlock(streams) is None:
            return streams
        # only possible through chains of zero-time slots (see the module docstring): stay lazy
    return build(_lazy_recvs(program, channels, slot_of))


def stage_graph(program: Program) -> tuple[int, ...]:
    """Each stage's producer (``-1``: reads the batch), from the forward dependencies between stages.

    Returns ``()`` for the common case (stage ``s`` reads stage ``s-1``), and also when some
    stage reads several stages (not a set of chains: runtimes then check the messages against the
    default and refuse what does not fit). Chimera's two pipelines give two chains.
    """
    producers: dict[int, set[int]] = defaultdict(set)
    for e in program.edges:
        a, b = program.ops[e.src], program.ops[e.dst]
        if a.stage != b.stage and program.role(a) is Role.F and program.role(b) is Role.F:
            producers[b.stage].add(a.stage)
    if any(len(ps) > 1 for ps in producers.values()):
        return ()
    prev = tuple(next(iter(producers[s])) if producers.get(s) else -1 for s in range(program.num_stages))
    return () if prev == tuple(range(-1, program.num_stages - 1)) else prev


def _streams(program: Program, ranks: tuple[RankStream, ...]) -> Streams:
    return Streams(
        num_ranks=program.num_ranks,
        num_stages=program.num_stages,
        num_microbatches=program.num_microbatches,
        placement=tuple(program.placement),
        ranks=ranks,
        meta=(("program", program.name.replace("#", "_").replace("\n", " ")),),
        prev=stage_graph(program),
    )


# ------------------------------------------------------------------ emitters


def emit_streams(program: Program) -> str:
    """``--emit streams``: the ISA text form."""
    return isa.to_text(codegen(program))


def emit_json(program: Program) -> str:
    """``--emit json``: the ISA JSON form."""
    return isa.to_json(codegen(program))
