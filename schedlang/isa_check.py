"""The one checker of instruction streams (:mod:`schedlang.isa`), run before a single tensor moves.

Codegen, the ``schedlang streams`` command and the runtime (``schedlang.runtime``) all call
:func:`check_streams`; it raises :class:`StreamError` naming the rank and the instruction. The
checks, in order:

- header: the placement covers every stage with ranks of the pipeline, one stream per rank
  ``0..num_ranks-1`` in order, at least one microbatch, and a well-formed stage graph (``prev``:
  chains of equal length from a stage reading the batch to one computing the loss);
- shape, per rank: its ``stages`` are the stages placed on it, every instruction names a stage of
  its own rank and a microbatch in range, a ``BATCH`` holds only point-to-point instructions (no
  nested ``BATCH``), an ``FB`` has ``kind=B`` or ``kind=BW``, and every point-to-point
  instruction names another rank of the pipeline that really holds ``peer_stage``, the neighbour
  the opcode implies (producer for ``RECV_ACT``/``SEND_GRAD``, consumer for
  ``SEND_ACT``/``RECV_GRAD``);
- data flow, per rank in stream order (``flow=True``): a forward has its input (the batch, a
  receive, or the producer stage on the same rank), a backward its output gradient, a send its
  tensor; every microbatch of every stage of its chain is forwarded exactly once; for training
  streams (see ``training``) also backwarded exactly once (``B`` + ``W``, ``BW`` or the backward
  of an ``FB``, ``W`` after its ``B``), each stage has one ``REDUCE_GRAD`` after its last
  backward, and each rank ends with its one ``OPT_STEP``, after all its ``REDUCE_GRAD``\\ s
  (``opt_step=False``: no ``OPT_STEP`` is needed, as in PyTorch's schedules);
- weight versions (format version 2, ``weights=`` an asynchronous policy): every ``F``, ``B``,
  ``W`` and ``BW`` carries ``ver``, there is no ``FB``, ``REDUCE_GRAD`` or ``OPT_STEP``; a
  forward uses a version its stage's ``UPDATE``\\ s have made by then, a backward the version of
  its forward, every ``UPDATE`` has weight gradients to apply and every weight gradient is
  applied by an ``UPDATE`` before the stream ends. Under ``flush`` no instruction carries ``ver``
  and there is no ``UPDATE``;
- matching: on every ordered pair of ranks the k-th send is the k-th receive (same payload kind,
  stages and microbatch): messages match in issue order, as in ``torch.distributed``;
- progress: executing all streams symbolically finishes, so no rank waits forever. The blocking
  semantics are options (``sends``, ``recvs``):

  - ``sends="buffered"`` (ISA v1): a send completes when issued; ``"rendezvous"``: a send
    completes only once the peer has posted the matching receive (its current instruction or
    ``BATCH`` holds it, or it is past it);
  - ``recvs="blocking"`` (ISA v1): a receive waits where it stands; ``"posted"`` (``irecv``, as
    PyTorch's runtime and ``schedlang.runtime`` execute them): a receive only posts, and the
    compute instruction that consumes its tensor waits for it. Weaker: streams that pass with
    blocking receives pass with posted ones;
  - a ``BATCH`` issues all its sends, posts all its receives, then waits for all its receives;
    compute, ``REDUCE_GRAD`` and ``OPT_STEP`` never block.

  A deadlock is reported as the cycle of ranks waiting on each other, with the instruction each
  one waits on (or as a chain ending at a rank that has finished).

Instruction indices count the entries of :attr:`RankStream.instrs` (a ``BATCH`` is one
instruction; a part of it is named ``BATCH part j``), as the runtime does when it reports a fault.

This module imports only :mod:`schedlang.isa` and the standard library, so a runtime can use it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

from schedlang.isa import WEIGHT_POLICIES, Instr, Opcode, RankStream, Streams, flatten

SENDS = ("buffered", "rendezvous")
RECVS = ("blocking", "posted")

_BACKWARD_OPS = frozenset({Opcode.B, Opcode.W, Opcode.BW, Opcode.FB, Opcode.REDUCE_GRAD, Opcode.OPT_STEP, Opcode.UPDATE})
_VERSIONED = frozenset({Opcode.F, Opcode.B, Opcode.W, Opcode.BW})


class StreamError(ValueError):
    """Streams that cannot run: they would hang, exchange the wrong tensors, or skip work.

    ``rank`` and ``index`` (the instruction index in that rank's stream; ``len(instrs)`` for a
    problem found at its end) are set when the problem belongs to one instruction or one rank,
    ``part`` when it is a part of a ``BATCH``."""

    def __init__(self, message: str, rank: int | None = None, index: int | None = None,
                 part: int | None = None) -> None:
        self.message = message
        self.rank = rank
        self.index = index
        self.part = part
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Message:
    """One tensor on the wire: ``kind`` act/grad, the producer stage, the microbatch."""

    kind: str
    stage: int
    mb: int


def message_of(ins: Instr) -> Message:
    """The message a point-to-point instruction sends or receives.

    An activation is named by its producer stage, a gradient by the stage whose input it is the
    gradient of, so a send and its matching receive name the same message.
    """
    if ins.op is Opcode.SEND_ACT:
        return Message("act", ins.stage, ins.mb)
    if ins.op is Opcode.RECV_ACT:
        return Message("act", ins.peer_stage, ins.mb)
    if ins.op is Opcode.SEND_GRAD:
        return Message("grad", ins.stage, ins.mb)
    assert ins.op is Opcode.RECV_GRAD, ins
    return Message("grad", ins.peer_stage, ins.mb)


@dataclass(frozen=True, slots=True)
class _At:
    """Where an instruction stands: rank, index in the rank's stream, part of a BATCH (or None)."""

    rank: int
    index: int
    part: int | None
    ins: Instr

    def __str__(self) -> str:
        part = "" if self.part is None else f", BATCH part {self.part}"
        return f"rank {self.rank}, instruction {self.index}{part} ({self.ins})"

    def error(self, why: str) -> StreamError:
        return StreamError(f"{self}: {why}", self.rank, self.index, self.part)


def _walk(rs: RankStream) -> Iterator[_At]:
    """Every instruction of a rank in order, a BATCH replaced by its parts."""
    for index, ins in enumerate(rs.instrs):
        if ins.op is Opcode.BATCH:
            for j, p in enumerate(ins.parts):
                yield _At(rs.rank, index, j, p)
        else:
            yield _At(rs.rank, index, None, ins)


def _at_end(rs: RankStream, why: str) -> StreamError:
    return StreamError(f"rank {rs.rank}, at the end of its stream (after instruction {len(rs.instrs) - 1}): {why}",
                       rs.rank, len(rs.instrs))


# ----------------------------------------------------------------------- header and stage graph


def _check_header(streams: Streams) -> None:
    if streams.num_ranks < 1 or streams.num_stages < 1:
        raise StreamError(f"a pipeline needs at least one rank and one stage (got {streams.num_ranks} ranks, "
                          f"{streams.num_stages} stages)")
    if len(streams.placement) != streams.num_stages:
        raise StreamError(f"placement has {len(streams.placement)} entries for {streams.num_stages} stages")
    if any(not 0 <= r < streams.num_ranks for r in streams.placement):
        raise StreamError(f"placement {list(streams.placement)} names a rank outside 0..{streams.num_ranks - 1}")
    if len(streams.ranks) != streams.num_ranks or any(rs.rank != r for r, rs in enumerate(streams.ranks)):
        raise StreamError(f"expected one stream per rank 0..{streams.num_ranks - 1} in order, got ranks "
                          f"{[rs.rank for rs in streams.ranks]}")
    if streams.num_microbatches < 1:
        raise StreamError("a step needs at least one microbatch")
    if streams.prev:
        _check_stage_graph(streams)
    if streams.weights not in WEIGHT_POLICIES:
        raise StreamError(f"unknown weight-update policy {streams.weights!r} (known: {', '.join(WEIGHT_POLICIES)})")
    if streams.weights != "flush" and len(streams.chains()) > 1:
        raise StreamError(f"weights={streams.weights} with several chains (weight replicas, as in Chimera) is "
                          "not supported: replicas would need to agree on every version")


def _check_stage_graph(streams: Streams) -> None:
    prev = streams.prev
    if len(prev) != streams.num_stages:
        raise StreamError(f"prev has {len(prev)} entries for {streams.num_stages} stages")
    for s, q in enumerate(prev):
        if not -1 <= q < streams.num_stages or q == s:
            raise StreamError(f"prev: stage {s} cannot read stage {q}")
    fed = Counter(q for q in prev if q != -1)
    for q, n in fed.items():
        if n > 1:
            raise StreamError(f"prev: stage {q} feeds {n} stages; each stage feeds at most one")
    chains = streams.chains()
    covered = sorted(s for c in chains for s in c)
    if covered != list(range(streams.num_stages)):
        raise StreamError("prev: some stages are on a cycle, not on a chain from a stage that reads the batch")
    if len({len(c) for c in chains}) > 1:
        raise StreamError(f"prev: the chains {[list(c) for c in chains]} differ in length; replicas of "
                          "one model need the same number of stages")


def microbatches_of(streams: Streams) -> dict[int, frozenset[int]]:
    """The microbatches each stage runs: every microbatch runs through every stage of one chain.

    One chain (the default): all of them everywhere. Several chains: each takes the microbatches
    its first stage forwards; every stage of the chain must forward exactly those, and the chains
    must split 0..m-1 between them.
    """
    m = streams.num_microbatches
    chains = streams.chains()
    if len(chains) == 1:
        return {s: frozenset(range(m)) for s in range(streams.num_stages)}
    forwards: dict[int, dict[int, _At]] = {s: {} for s in range(streams.num_stages)}
    for rs in streams.ranks:
        for at in _walk(rs):
            if at.ins.op in (Opcode.F, Opcode.FB) and 0 <= at.ins.stage < streams.num_stages:
                forwards[at.ins.stage].setdefault(at.ins.mb, at)
    out: dict[int, frozenset[int]] = {}
    owner: dict[int, int] = {}
    for chain in chains:
        mine = frozenset(forwards[chain[0]])
        for s in chain:
            if set(forwards[s]) != mine:
                i = min(set(forwards[s]) ^ mine)
                if i in forwards[s]:
                    raise forwards[s][i].error(f"stage {s} forwards microbatch {i}, which stage {chain[0]} (the head "
                                               "of its chain) does not: a microbatch runs through a whole chain")
                raise _at_end(streams.ranks[streams.placement[s]],
                              f"no forward of stage {s} microbatch {i}, which stage {chain[0]} (the head of its "
                              "chain) forwards: a microbatch runs through a whole chain")
            out[s] = mine
        for i in sorted(mine):
            if i in owner:
                raise forwards[chain[0]][i].error(f"microbatch {i} runs through two chains (heads {owner[i]} and "
                                                  f"{chain[0]})")
            owner[i] = chain[0]
    missing = sorted(set(range(m)) - set(owner))
    if missing:
        raise StreamError(f"microbatch(es) {missing} run through no chain")
    return out


# ----------------------------------------------------------------------- shape


def _check_p2p(streams: Streams, at: _At) -> None:
    ins = at.ins
    if not 0 <= ins.peer < streams.num_ranks or ins.peer == at.rank:
        raise at.error(f"peer {ins.peer} is not another rank of the pipeline")
    upstream = ins.op in (Opcode.RECV_ACT, Opcode.SEND_GRAD)
    want = streams.producer(ins.stage) if upstream else streams.consumer(ins.stage)
    if want == -1:
        what = "reads the batch: it has no producer" if upstream else "computes the loss: it has no consumer"
        raise at.error(f"stage {ins.stage} {what}")
    if ins.peer_stage != want:
        raise at.error(f"peer_stage should be {want} for {ins.op.value}")
    if streams.placement[want] != ins.peer:
        raise at.error(f"rank {ins.peer} does not hold stage {ins.peer_stage}")


def _indices(ins: Instr) -> tuple[tuple[int, int], ...]:
    """The (stage, microbatch) pairs an instruction names; REDUCE_GRAD and UPDATE have a stage
    only (mb -1)."""
    if ins.op is Opcode.OPT_STEP or ins.op is Opcode.BATCH:
        return ()
    if ins.op is Opcode.FB:
        return ((ins.stage, ins.mb), (ins.stage2, ins.mb2))
    return ((ins.stage, ins.mb),)


def _check_instr_shape(streams: Streams, rs: RankStream, at: _At) -> None:
    ins = at.ins
    if ins.op is Opcode.BATCH:
        raise at.error("nested BATCH")
    if at.part is not None and not ins.op.is_p2p:
        raise at.error("a BATCH holds only point-to-point instructions")
    if ins.op is Opcode.FB and ins.kind not in ("B", "BW"):
        raise at.error("FB needs kind=B or kind=BW")
    for s, i in _indices(ins):
        if not 0 <= s < streams.num_stages:
            raise at.error(f"stage {s} is out of range (stages run 0..{streams.num_stages - 1})")
        if s not in rs.stages:
            raise at.error(f"stage {s} is not on rank {rs.rank} (it is on rank {streams.placement[s]})")
        if ins.op not in (Opcode.REDUCE_GRAD, Opcode.UPDATE) and not 0 <= i < streams.num_microbatches:
            raise at.error(f"microbatch {i} is out of range (microbatches run 0..{streams.num_microbatches - 1})")
    if ins.op.is_p2p:
        _check_p2p(streams, at)
    _check_versioning(streams, at)


def _check_versioning(streams: Streams, at: _At) -> None:
    ins = at.ins
    if streams.weights == "flush":
        if ins.op is Opcode.UPDATE:
            raise at.error("UPDATE in streams without an asynchronous weight-update policy (header weights=)")
        if ins.ver != -1:
            raise at.error("a weight version (ver=) in streams without an asynchronous weight-update policy")
        return
    if ins.op in (Opcode.FB, Opcode.REDUCE_GRAD, Opcode.OPT_STEP):
        why = {Opcode.FB: "an overlapped FB (its two halves may use different weight versions)",
               Opcode.REDUCE_GRAD: "REDUCE_GRAD (stages apply their gradients with UPDATE)",
               Opcode.OPT_STEP: "OPT_STEP (stages apply their gradients with UPDATE)"}[ins.op]
        raise at.error(f"weights={streams.weights} streams have no {why}")
    if ins.op in _VERSIONED and ins.ver < 0:
        raise at.error(f"weights={streams.weights}: {ins.op.value} needs the weight version it uses (ver=)")
    if ins.op not in _VERSIONED and ins.ver != -1:
        raise at.error(f"only F, B, W and BW carry a weight version (ver=), not {ins.op.value}")


def _check_shape(streams: Streams, rs: RankStream) -> None:
    placed = tuple(s for s, r in enumerate(streams.placement) if r == rs.rank)
    if rs.stages != placed:
        raise StreamError(f"rank {rs.rank}: stream lists stages {list(rs.stages)} but the placement "
                          f"puts stages {list(placed)} on it", rs.rank)
    for index, ins in enumerate(rs.instrs):
        if ins.op is Opcode.BATCH and not ins.parts:
            raise _At(rs.rank, index, None, ins).error("empty BATCH")
    for at in _walk(rs):
        _check_instr_shape(streams, rs, at)


# ----------------------------------------------------------------------- data flow


class _Flow:
    """What has happened so far on one rank, for the data-flow check."""

    def __init__(self, streams: Streams, rank: int) -> None:
        self.streams = streams
        self.rank = rank
        self.have: set[tuple[str, int, int]] = set()
        self.reduced: set[int] = set()
        self.stepped = False
        self.updates: Counter[int] = Counter()  # UPDATEs of each stage so far
        self.unapplied: Counter[int] = Counter()  # weight gradients since the stage's last UPDATE
        self.fwd_ver: dict[tuple[int, int], int] = {}

    def local(self, stage: int) -> bool:
        return self.streams.placement[stage] == self.rank

    def need(self, what: tuple[str, int, int], at: _At, why: str) -> None:
        if what not in self.have:
            raise at.error(why)

    def once(self, what: tuple[str, int, int], at: _At, name: str) -> None:
        if what in self.have:
            raise at.error(f"second {name} of stage {what[1]} microbatch {what[2]}")
        self.have.add(what)

    def forward(self, s: int, i: int, at: _At) -> None:
        q = self.streams.producer(s)
        if q != -1:
            src = ("fwd", q, i) if self.local(q) else ("recv_act", s, i)
            self.need(src, at, f"the input of stage {s} microbatch {i} is not available yet")
        self.once(("fwd", s, i), at, "forward")

    def backward(self, s: int, i: int, part: str, at: _At) -> None:
        if s in self.reduced:
            raise at.error(f"backward after REDUCE_GRAD of stage {s}")
        if part in ("B", "BW"):
            self.need(("fwd", s, i), at, f"backward before the forward of stage {s} microbatch {i}")
            c = self.streams.consumer(s)
            if c != -1:
                src = ("bwd_in", c, i) if self.local(c) else ("recv_grad", s, i)
                self.need(src, at, f"the output gradient of stage {s} microbatch {i} is not available yet")
            self.once(("bwd_in", s, i), at, "input backward (B/BW)")
        if part in ("W", "BW"):
            if part == "W":
                self.need(("bwd_in", s, i), at, f"W of stage {s} microbatch {i} before its B")
            self.once(("bwd_w", s, i), at, "weight backward (W/BW)")


    def versions(self, at: _At) -> None:
        """Weight versions (asynchronous policies): exist when used, a backward uses its forward's."""
        ins = at.ins
        s, i = ins.stage, ins.mb
        if ins.op is Opcode.UPDATE:
            if not self.unapplied[s]:
                raise at.error(f"UPDATE of stage {s} with no weight gradient to apply since its previous UPDATE")
            self.unapplied[s] = 0
            self.updates[s] += 1
        elif ins.op is Opcode.F:
            if ins.ver > self.updates[s]:
                raise at.error(f"uses weight version {ins.ver} of stage {s}, but only {self.updates[s]} UPDATE(s) "
                               "of the stage have run")
            self.fwd_ver[(s, i)] = ins.ver
        elif ins.op in (Opcode.B, Opcode.W, Opcode.BW):
            want = self.fwd_ver.get((s, i))
            if want is not None and ins.ver != want:
                raise at.error(f"the backward of stage {s} microbatch {i} uses weight version {ins.ver}, its "
                               f"forward used {want}")
            if ins.op is not Opcode.B:
                self.unapplied[s] += 1


def _flow_instr(flow: _Flow, at: _At, mbs: dict[int, frozenset[int]], training: bool) -> None:  # noqa: C901
    ins = at.ins
    op = ins.op
    if flow.stepped:
        raise at.error("instruction after OPT_STEP (OPT_STEP ends the step)")
    if flow.streams.weights != "flush" and (op in _VERSIONED or op is Opcode.UPDATE):
        flow.versions(at)
    if op is Opcode.F:
        flow.forward(ins.stage, ins.mb, at)
    elif op in (Opcode.B, Opcode.W, Opcode.BW):
        flow.backward(ins.stage, ins.mb, op.value, at)
    elif op is Opcode.FB:
        flow.forward(ins.stage, ins.mb, at)
        flow.backward(ins.stage2, ins.mb2, ins.kind, at)
    elif op is Opcode.SEND_ACT:
        flow.need(("fwd", ins.stage, ins.mb), at, "sends an activation not computed yet")
    elif op is Opcode.SEND_GRAD:
        flow.need(("bwd_in", ins.stage, ins.mb), at, "sends a gradient not computed yet")
    elif op is Opcode.RECV_ACT:
        flow.once(("recv_act", ins.stage, ins.mb), at, "activation receive")
    elif op is Opcode.RECV_GRAD:
        flow.once(("recv_grad", ins.stage, ins.mb), at, "gradient receive")
    elif op is Opcode.REDUCE_GRAD:
        if ins.stage in flow.reduced:
            raise at.error(f"second REDUCE_GRAD of stage {ins.stage}")
        for i in sorted(mbs.get(ins.stage, ())):
            flow.need(("bwd_w", ins.stage, i), at, f"the weight backward (W/BW) of stage {ins.stage} "
                      f"microbatch {i} has not run before this REDUCE_GRAD (it is missing or comes later)")
        flow.reduced.add(ins.stage)
    elif op is Opcode.OPT_STEP:
        if not training:
            raise at.error("OPT_STEP in streams without backward work")
        stages = flow.streams.stream(flow.rank).stages
        missing = [s for s in stages if s not in flow.reduced]
        if missing:
            raise at.error(f"OPT_STEP before REDUCE_GRAD of stage(s) {missing}")
        flow.stepped = True


def _check_flow(streams: Streams, rs: RankStream, mbs: dict[int, frozenset[int]], training: bool,
                opt_step: bool) -> None:
    flow = _Flow(streams, rs.rank)
    for at in _walk(rs):
        _flow_instr(flow, at, mbs, training)
    for s in rs.stages:
        for i in sorted(mbs[s]):
            if ("fwd", s, i) not in flow.have:
                raise _at_end(rs, f"no forward of stage {s} microbatch {i}; every microbatch passes "
                                  "through every stage of its pipeline")
    if not training:
        return
    for s in rs.stages:
        for i in sorted(mbs[s]):
            for what, name in (("bwd_in", "input backward (B/BW)"), ("bwd_w", "weight backward (W/BW)")):
                if (what, s, i) not in flow.have:
                    raise _at_end(rs, f"no {name} of stage {s} microbatch {i}")
        if streams.weights != "flush":
            if flow.unapplied[s]:
                raise _at_end(rs, f"{flow.unapplied[s]} weight gradient(s) of stage {s} are never applied "
                                  "(no UPDATE of the stage after them)")
            continue
        if s not in flow.reduced:
            raise _at_end(rs, f"no REDUCE_GRAD of stage {s}")
    if opt_step and not flow.stepped and streams.weights == "flush":
        raise _at_end(rs, "no OPT_STEP (training streams end every rank with one)")


def is_training(streams: Streams) -> bool:
    """Whether the streams hold backward work (a backward op, ``REDUCE_GRAD`` or ``OPT_STEP``)."""
    return any(ins.op in _BACKWARD_OPS for rs in streams.ranks for ins in flatten(rs.instrs))


# ----------------------------------------------------------------------- matching


def _channels(streams: Streams) -> dict[tuple[int, int], tuple[list[_At], list[_At]]]:
    """(src, dst) -> (sends of src to dst, receives of dst from src), each in issue order."""
    chans: dict[tuple[int, int], tuple[list[_At], list[_At]]] = {}
    for rs in streams.ranks:
        for at in _walk(rs):
            if at.ins.op.is_p2p:
                key = _channel_of(rs.rank, at.ins)
                pair = chans.setdefault(key, ([], []))
                (pair[0] if at.ins.op.is_send else pair[1]).append(at)
    return chans


def _channel_of(rank: int, ins: Instr) -> tuple[int, int]:
    return (rank, ins.peer) if ins.op.is_send else (ins.peer, rank)


def _msg(at: _At | None) -> str:
    if at is None:
        return "nothing"
    m = message_of(at.ins)
    part = "" if at.part is None else f", BATCH part {at.part}"
    return f"{m.kind} of stage {m.stage} microbatch {m.mb} at instruction {at.index}{part}"


def _check_matching(streams: Streams) -> None:
    for (src, dst), (sent, received) in sorted(_channels(streams).items()):
        for k in range(max(len(sent), len(received))):
            a = sent[k] if k < len(sent) else None
            b = received[k] if k < len(received) else None
            if a is None or b is None or message_of(a.ins) != message_of(b.ins):
                count = "" if len(sent) == len(received) else \
                    f"; rank {src} sends {len(sent)} messages to rank {dst}, which receives {len(received)}"
                first = a or b
                assert first is not None
                raise StreamError(
                    f"rank {src} -> rank {dst}: message {k} does not match: rank {src} sends {_msg(a)} but "
                    f"rank {dst} receives {_msg(b)} (messages match in issue order{count})",
                    first.rank, first.index, first.part)


# ----------------------------------------------------------------------- progress


@dataclass(frozen=True, slots=True)
class Wait:
    """Rank ``rank`` is stuck at instruction ``index`` (``instr``), waiting on rank ``on``."""

    rank: int
    index: int
    instr: Instr
    on: int

    def __str__(self) -> str:
        return f"rank {self.rank} at instruction {self.index} ({_fmt(self.instr)}) waits on rank {self.on}"


def _fmt(ins: Instr) -> str:
    if ins.op is Opcode.BATCH:
        return "BATCH[" + "; ".join(str(p) for p in ins.parts) + "]"
    return str(ins)


def _inputs(ins: Instr) -> list[tuple[int, int, bool]]:
    """The (stage, mb, is_gradient) tensors a compute instruction consumes from receives."""
    out = []
    if ins.op in (Opcode.F, Opcode.FB):
        out.append((ins.stage, ins.mb, False))
    if ins.op in (Opcode.B, Opcode.BW):
        out.append((ins.stage, ins.mb, True))
    if ins.op is Opcode.FB:
        out.append((ins.stage2, ins.mb2, True))
    return out


class _Exec:
    """Symbolic execution state of all ranks."""

    def __init__(self, streams: Streams, rendezvous: bool, posted_recvs: bool) -> None:
        self.streams = streams
        self.rendezvous = rendezvous
        self.posted_recvs = posted_recvs
        self.pc = [0] * streams.num_ranks
        self.posted: list[list[tuple[Instr, int]] | None] = [None] * streams.num_ranks
        self.sent: dict[tuple[int, int], int] = defaultdict(int)  # sends posted per channel
        self.recvd: dict[tuple[int, int], int] = defaultdict(int)  # receives posted per channel
        # posted receives by the tensor they bring: rank -> (stage, mb, grad) -> (recv, its index)
        self.pending: list[dict[tuple[int, int, bool], tuple[Instr, int]]] = [{} for _ in streams.ranks]

    def parts(self, r: int) -> list[tuple[Instr, int]]:
        """Post the rank's current instruction (once); the p2p parts it waits on, with their
        channel index (with posted receives: a compute waits on the receives of its inputs)."""
        cur = self.posted[r]
        if cur is None:
            ins = self.streams.ranks[r].instrs[self.pc[r]]
            cur = []
            for p in (ins.parts if ins.op is Opcode.BATCH else (ins,)):
                if p.op.is_p2p:
                    ch = _channel_of(r, p)
                    counter = self.sent if p.op.is_send else self.recvd
                    if p.op.is_recv and self.posted_recvs:
                        self.pending[r][(p.stage, p.mb, p.op is Opcode.RECV_GRAD)] = (p, counter[ch])
                    else:
                        cur.append((p, counter[ch]))
                    counter[ch] += 1
            if self.posted_recvs:
                cur.extend(self.pending[r].pop(key) for key in _inputs(ins) if key in self.pending[r])
            self.posted[r] = cur
        return cur

    def blocked_on(self, r: int) -> tuple[Instr, int] | None:
        """The first part rank r's current instruction waits on that cannot complete yet, if any."""
        for p, k in self.parts(r):
            ch = _channel_of(r, p)
            if p.op.is_recv and self.sent[ch] <= k:
                return p, p.peer
            if p.op.is_send and self.rendezvous and self.recvd[ch] <= k:
                return p, p.peer
        return None

    def run(self) -> list[int]:
        """Advance every rank as far as possible; return the ranks that cannot finish."""
        progress = True
        while progress:
            progress = False
            for r, rs in enumerate(self.streams.ranks):
                while self.pc[r] < len(rs.instrs) and self.blocked_on(r) is None:
                    self.pc[r] += 1
                    self.posted[r] = None
                    progress = True
        return [r for r, rs in enumerate(self.streams.ranks) if self.pc[r] < len(rs.instrs)]


def find_deadlock(streams: Streams, sends: str = "buffered", recvs: str = "blocking") -> list[Wait] | None:
    """None if every rank finishes; else the waits along a cycle of stuck ranks (or the chain
    ending at a rank that has finished). Assumes the streams passed the header, shape and matching
    checks (every peer is a rank of the pipeline)."""
    assert sends in SENDS, sends
    assert recvs in RECVS, recvs
    ex = _Exec(streams, sends == "rendezvous", recvs == "posted")
    stuck = ex.run()
    if not stuck:
        return None
    waits: dict[int, Wait] = {}
    for r in stuck:
        b = ex.blocked_on(r)
        assert b is not None
        waits[r] = Wait(r, ex.pc[r], streams.ranks[r].instrs[ex.pc[r]], b[1])
    chain: list[Wait] = []
    r = stuck[0]
    seen: dict[int, int] = {}
    while r in waits and r not in seen:
        seen[r] = len(chain)
        chain.append(waits[r])
        r = waits[r].on
    return chain[seen[r]:] if r in seen else chain


def _check_progress(streams: Streams, sends: str, recvs: str) -> None:
    waits = find_deadlock(streams, sends, recvs)
    if waits is None:
        return
    how = f"{sends} sends" + (", posted receives" if recvs == "posted" else "")
    if waits[-1].on in {w.rank for w in waits}:
        cycle = " -> ".join(str(w.rank) for w in waits) + f" -> {waits[0].rank}"
        head = f"deadlock ({how}): ranks {cycle} wait on each other"
    else:
        head = f"deadlock ({how}): rank {waits[-1].on} finished but rank {waits[-1].rank} still waits on it"
    raise StreamError(head + "\n" + "\n".join(f"  {w}" for w in waits), waits[0].rank, waits[0].index)


# ----------------------------------------------------------------------- the checker


def check_streams(streams: Streams, *, sends: str = "buffered", recvs: str = "blocking", flow: bool = True,
                  training: bool | None = None, opt_step: bool = True) -> None:
    """Run every check (see the module docstring); raise :class:`StreamError` on the first problem.

    ``sends``/``recvs`` select the blocking semantics of the progress check. ``flow=False`` skips
    the data-flow check (for hand-made streams that exercise only communication). ``training``:
    whether the streams must also run every backward, ``REDUCE_GRAD`` and ``OPT_STEP``; ``None``
    infers it (:func:`is_training`: any backward work at all means all of it). ``opt_step=False``:
    training streams need not end with ``OPT_STEP`` (PyTorch schedules leave the optimizer step to
    the caller); one that is there must still come last and after every ``REDUCE_GRAD``.
    """
    if sends not in SENDS:
        raise ValueError(f"sends must be one of {SENDS}, not {sends!r}")
    if recvs not in RECVS:
        raise ValueError(f"recvs must be one of {RECVS}, not {recvs!r}")
    _check_header(streams)
    for rs in streams.ranks:
        _check_shape(streams, rs)
    if flow:
        instrs = sum(len(rs.instrs) for rs in streams.ranks)
        if streams.num_microbatches > instrs:  # before microbatches_of builds sets of that size
            raise StreamError(f"{streams.num_microbatches} microbatches but only {instrs} instructions: "
                              "some stage does not run every microbatch")
        mbs = microbatches_of(streams)
        train = is_training(streams) if training is None else training
        for rs in streams.ranks:
            _check_flow(streams, rs, mbs, train, opt_step)
    _check_matching(streams)
    _check_progress(streams, sends, recvs)


__all__ = [
    "RECVS",
    "SENDS",
    "Message",
    "StreamError",
    "Wait",
    "check_streams",
    "find_deadlock",
    "is_training",
    "message_of",
    "microbatches_of",
]
