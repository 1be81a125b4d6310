"""Static checks of instruction streams, run before a single tensor moves.

:func:`check_streams` rejects streams a runtime cannot execute safely, with a message naming the
rank and the instruction:

- shape: the placement covers every stage, each rank's ``stages`` are the stages placed on it,
  every instruction names a stage of its own rank and a peer that really holds ``peer_stage``,
  and ``peer_stage`` is the neighbour the opcode implies;
- matching: on every ordered rank pair, the k-th send matches the k-th receive (same kind, stage
  and microbatch): point-to-point messages match in order of issue, as in ``torch.distributed``;
- data flow, per rank in stream order: a forward has its input (data, a receive, or the previous
  stage on the same rank), a backward its output gradient, a send its tensor; every microbatch of
  every stage of its chain (see :mod:`schedlang.isa`, stage graph) is forwarded once and backwarded once (``B`` + ``W``, ``BW`` or the backward of an
  ``FB``); ``REDUCE_GRAD`` follows the stage's last backward, ``OPT_STEP`` every ``REDUCE_GRAD``;
- progress: executing all streams symbolically (sends never block, a receive waits for its send,
  a ``BATCH`` posts its sends then waits for its receives) finishes, so no rank can wait forever.

This module imports only :mod:`schedlang.isa`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from schedlang.isa import Instr, Op, RankStream, Streams, flatten

__all__ = ["Message", "StreamError", "check_rank", "check_streams", "message_of", "microbatches_of"]


class StreamError(ValueError):
    """Streams the runtime refuses to execute; the message names the rank and instruction."""


@dataclass(frozen=True, slots=True)
class Message:
    """One tensor on the wire: ``kind`` act/grad, the producer stage, the microbatch."""

    kind: str
    stage: int
    mb: int


def message_of(ins: Instr) -> Message:
    """The message a p2p instruction sends or receives.

    An activation is named by its producer stage, a gradient by the stage whose input it is the
    gradient of, so a send and its matching receive name the same message.
    """
    if ins.op is Op.SEND_ACT:
        return Message("act", ins.stage, ins.mb)
    if ins.op is Op.RECV_ACT:
        return Message("act", ins.peer_stage, ins.mb)
    if ins.op is Op.SEND_GRAD:
        return Message("grad", ins.stage, ins.mb)
    assert ins.op is Op.RECV_GRAD, ins
    return Message("grad", ins.peer_stage, ins.mb)


def _where(rank: int, index: int, ins: Instr) -> str:
    return f"rank {rank}, instruction {index} ({ins})"


# ----------------------------------------------------------------------- shape checks


def _check_p2p(streams: Streams, rank: int, index: int, ins: Instr) -> None:
    where = _where(rank, index, ins)
    if not 0 <= ins.peer < streams.num_ranks or ins.peer == rank:
        raise StreamError(f"{where}: peer {ins.peer} is not another rank of the pipeline")
    upstream = ins.op in (Op.RECV_ACT, Op.SEND_GRAD)
    want = streams.producer(ins.stage) if upstream else streams.consumer(ins.stage)
    if want == -1:
        what = "reads the batch: it has no producer" if upstream else "computes the loss: it has no consumer"
        raise StreamError(f"{where}: stage {ins.stage} {what}")
    if ins.peer_stage != want:
        raise StreamError(f"{where}: peer_stage should be {want} for {ins.op.value}")
    if streams.placement[want] != ins.peer:
        raise StreamError(f"{where}: rank {ins.peer} does not hold stage {ins.peer_stage}")


def _stages_of(ins: Instr) -> tuple[int, ...]:
    if ins.op is Op.OPT_STEP:
        return ()
    if ins.op is Op.FB:
        return (ins.stage, ins.stage2)
    return (ins.stage,)


def _check_shape(streams: Streams, rs: RankStream) -> None:
    rank = rs.rank
    placed = tuple(s for s, r in enumerate(streams.placement) if r == rank)
    if rs.stages != placed:
        raise StreamError(f"rank {rank}: stream lists stages {list(rs.stages)} but the placement "
                          f"puts stages {list(placed)} on it")
    for index, ins in enumerate(flatten(rs.instrs)):
        if ins.op is Op.BATCH:
            raise StreamError(f"{_where(rank, index, ins)}: nested BATCH")
        if ins.op is Op.FB and ins.kind not in ("B", "BW"):
            raise StreamError(f"{_where(rank, index, ins)}: FB needs kind=B or kind=BW")
        for s in _stages_of(ins):
            if s not in rs.stages:
                raise StreamError(f"{_where(rank, index, ins)}: stage {s} is not on rank {rank}")
        if ins.op is not Op.OPT_STEP and ins.op is not Op.REDUCE_GRAD and not 0 <= ins.mb < streams.num_microbatches:
            raise StreamError(f"{_where(rank, index, ins)}: microbatch {ins.mb} out of range")
        if ins.op.is_p2p:
            _check_p2p(streams, rank, index, ins)
    for ins in rs.instrs:
        if ins.op is Op.BATCH and any(not p.op.is_p2p for p in ins.parts):
            raise StreamError(f"rank {rank}: BATCH holds a non point-to-point instruction")


def _check_header(streams: Streams) -> None:
    if len(streams.placement) != streams.num_stages:
        raise StreamError(f"placement has {len(streams.placement)} entries for {streams.num_stages} stages")
    if any(not 0 <= r < streams.num_ranks for r in streams.placement):
        raise StreamError(f"placement {list(streams.placement)} names a rank outside 0..{streams.num_ranks}")
    if [rs.rank for rs in streams.ranks] != list(range(streams.num_ranks)):
        raise StreamError(f"expected one stream per rank 0..{streams.num_ranks - 1}")
    if streams.num_microbatches < 1:
        raise StreamError("a step needs at least one microbatch")
    if streams.prev:
        _check_stage_graph(streams)


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
    forwards: dict[int, set[int]] = {s: set() for s in range(streams.num_stages)}
    for rs in streams.ranks:
        for ins in flatten(rs.instrs):
            if ins.op in (Op.F, Op.FB) and 0 <= ins.stage < streams.num_stages:
                forwards[ins.stage].add(ins.mb)
    out: dict[int, frozenset[int]] = {}
    owner: dict[int, int] = {}
    for chain in chains:
        mine = frozenset(forwards[chain[0]])
        for s in chain:
            if forwards[s] != mine:
                odd = sorted(forwards[s] ^ mine)
                raise StreamError(f"stage {s} and stage {chain[0]} (the head of its chain) forward different "
                                  f"microbatches (differing: {odd}); a microbatch runs through a whole chain")
            out[s] = mine
        for i in mine:
            if i in owner:
                raise StreamError(f"microbatch {i} runs through two chains (heads {owner[i]} and {chain[0]})")
            owner[i] = chain[0]
    missing = sorted(set(range(m)) - set(owner))
    if missing:
        raise StreamError(f"microbatch(es) {missing} run through no chain")
    return out


# ----------------------------------------------------------------------- data flow


class _Flow:
    """What has happened so far on one rank, for the data-flow check."""

    def __init__(self, streams: Streams, rank: int) -> None:
        self.streams = streams
        self.rank = rank
        self.have: set[tuple[str, int, int]] = set()
        self.counts: Counter[tuple[str, int, int]] = Counter()
        self.reduced: set[int] = set()

    def local(self, stage: int) -> bool:
        return 0 <= stage < self.streams.num_stages and self.streams.placement[stage] == self.rank

    def need(self, what: tuple[str, int, int], why: str) -> None:
        if what not in self.have:
            raise StreamError(why)

    def forward(self, s: int, i: int, where: str) -> None:
        q = self.streams.producer(s)
        if q != -1:
            src = ("fwd", q, i) if self.local(q) else ("recv_act", s, i)
            self.need(src, f"{where}: the input of stage {s} microbatch {i} is not available yet")
        self.once(("fwd", s, i), where, "forward")

    def backward(self, s: int, i: int, part: str, where: str) -> None:
        if s in self.reduced:
            raise StreamError(f"{where}: backward after REDUCE_GRAD of stage {s}")
        if part in ("B", "BW"):
            self.need(("fwd", s, i), f"{where}: backward before the forward of stage {s} microbatch {i}")
            c = self.streams.consumer(s)
            if c != -1:
                src = ("bwd_in", c, i) if self.local(c) else ("recv_grad", s, i)
                self.need(src, f"{where}: the output gradient of stage {s} microbatch {i} is not available yet")
            self.once(("bwd_in", s, i), where, "input backward (B/BW)")
        if part in ("W", "BW"):
            if part == "W":
                self.need(("bwd_in", s, i), f"{where}: W before its B")
            self.once(("bwd_w", s, i), where, "weight backward (W/BW)")

    def once(self, what: tuple[str, int, int], where: str, name: str) -> None:
        if what in self.have:
            raise StreamError(f"{where}: second {name} of stage {what[1]} microbatch {what[2]}")
        self.have.add(what)


def _flow_instr(flow: _Flow, ins: Instr, where: str, mbs: dict[int, frozenset[int]]) -> None:  # noqa: C901
    op = ins.op
    if op is Op.F:
        flow.forward(ins.stage, ins.mb, where)
    elif op in (Op.B, Op.W, Op.BW):
        flow.backward(ins.stage, ins.mb, op.value, where)
    elif op is Op.FB:
        flow.forward(ins.stage, ins.mb, where)
        flow.backward(ins.stage2, ins.mb2, ins.kind, where)
    elif op is Op.SEND_ACT:
        flow.need(("fwd", ins.stage, ins.mb), f"{where}: sends an activation not computed yet")
    elif op is Op.SEND_GRAD:
        flow.need(("bwd_in", ins.stage, ins.mb), f"{where}: sends a gradient not computed yet")
    elif op is Op.RECV_ACT:
        flow.once(("recv_act", ins.stage, ins.mb), where, "activation receive")
    elif op is Op.RECV_GRAD:
        flow.once(("recv_grad", ins.stage, ins.mb), where, "gradient receive")
    elif op is Op.REDUCE_GRAD:
        for i in sorted(mbs.get(ins.stage, ())):
            flow.need(("bwd_w", ins.stage, i), f"{where}: stage {ins.stage} microbatch {i} has "
                      "backward work after its REDUCE_GRAD")
        if ins.stage in flow.reduced:
            raise StreamError(f"{where}: second REDUCE_GRAD of stage {ins.stage}")
        flow.reduced.add(ins.stage)
    elif op is Op.OPT_STEP:
        stages = flow.streams.stream(flow.rank).stages
        missing = [s for s in stages if s not in flow.reduced]
        if missing:
            raise StreamError(f"{where}: OPT_STEP before REDUCE_GRAD of stage(s) {missing}")


def _check_flow(streams: Streams, rs: RankStream, mbs: dict[int, frozenset[int]]) -> None:
    flow = _Flow(streams, rs.rank)
    instrs = list(flatten(rs.instrs))
    forwards = {(i.stage, i.mb) for i in instrs if i.op in (Op.F, Op.FB)}
    for s in rs.stages:
        missing = [i for i in sorted(mbs[s]) if (s, i) not in forwards]
        if missing:
            raise StreamError(
                f"rank {rs.rank}: stage {s} never runs the forward of microbatch(es) {missing}; every "
                "microbatch passes through every stage of its pipeline")
    steps = sum(1 for ins in instrs if ins.op is Op.OPT_STEP)
    if steps > 1:
        raise StreamError(f"rank {rs.rank}: {steps} OPT_STEP instructions in one step")
    for index, ins in enumerate(instrs):
        _flow_instr(flow, ins, _where(rs.rank, index, ins), mbs)
    for s in rs.stages:
        for i in sorted(mbs[s]):
            for what, name in (("fwd", "forward"), ("bwd_in", "input backward"), ("bwd_w", "weight backward")):
                if (what, s, i) not in flow.have:
                    raise StreamError(f"rank {rs.rank}: no {name} of stage {s} microbatch {i}")


# ----------------------------------------------------------------------- matching and progress


def _channels(streams: Streams) -> dict[tuple[int, int], tuple[list[Message], list[Message]]]:
    """(src, dst) -> (messages src sends, messages dst receives), each in issue order."""
    chans: dict[tuple[int, int], tuple[list[Message], list[Message]]] = {}
    for rs in streams.ranks:
        for ins in flatten(rs.instrs):
            if not ins.op.is_p2p:
                continue
            msg = message_of(ins)
            key = (rs.rank, ins.peer) if ins.op.is_send else (ins.peer, rs.rank)
            pair = chans.setdefault(key, ([], []))
            (pair[0] if ins.op.is_send else pair[1]).append(msg)
    return chans


def _check_matching(streams: Streams) -> None:
    for (src, dst), (sent, received) in sorted(_channels(streams).items()):
        for k in range(max(len(sent), len(received))):
            a = sent[k] if k < len(sent) else None
            b = received[k] if k < len(received) else None
            if a != b:
                raise StreamError(
                    f"rank {src} -> rank {dst}: message {k} does not match: rank {src} sends "
                    f"{_msg(a)} but rank {dst} receives {_msg(b)} (messages match in issue order)")


def _msg(m: Message | None) -> str:
    return "nothing" if m is None else f"{m.kind} of stage {m.stage} microbatch {m.mb}"


def _check_progress(streams: Streams) -> None:
    """Run all streams symbolically; raise naming every stuck rank when they cannot finish."""
    posted: Counter[tuple[int, int, int]] = Counter()  # (src, dst, k-th message) issued
    sent_n: Counter[tuple[int, int]] = Counter()
    recv_n: Counter[tuple[int, int]] = Counter()
    pcs = [0] * streams.num_ranks
    batch_posted = [False] * streams.num_ranks

    def post(rank: int, ins: Instr) -> None:
        chan = (rank, ins.peer)
        posted[(*chan, sent_n[chan])] += 1
        sent_n[chan] += 1

    def ready(rank: int, recvs: list[Instr]) -> bool:
        need: Counter[tuple[int, int]] = Counter((r.peer, rank) for r in recvs)
        return all(posted[(*c, recv_n[c] + n - 1)] for c, n in need.items())

    progress = True
    while progress:
        progress = False
        for rs in streams.ranks:
            r = rs.rank
            while pcs[r] < len(rs.instrs):
                ins = rs.instrs[pcs[r]]
                parts = list(ins.parts) if ins.op is Op.BATCH else [ins]
                if not batch_posted[r]:
                    for p in parts:
                        if p.op.is_send:
                            post(r, p)
                    batch_posted[r] = True
                recvs = [p for p in parts if p.op.is_recv]
                if not ready(r, recvs):
                    break
                for p in recvs:
                    recv_n[(p.peer, r)] += 1
                pcs[r] += 1
                batch_posted[r] = False
                progress = True
    stuck = [f"rank {rs.rank} at instruction {pcs[rs.rank]} ({rs.instrs[pcs[rs.rank]]})"
             for rs in streams.ranks if pcs[rs.rank] < len(rs.instrs)]
    if stuck:
        raise StreamError("the streams deadlock: " + "; ".join(stuck))


def check_rank(streams: Streams, rank: int) -> None:
    """Check the parts of ``streams`` that concern ``rank`` alone (shape and data flow)."""
    _check_header(streams)
    if not 0 <= rank < streams.num_ranks:
        raise StreamError(f"rank {rank} is not in a pipeline of {streams.num_ranks} ranks")
    rs = streams.stream(rank)
    _check_shape(streams, rs)
    _check_flow(streams, rs, microbatches_of(streams))


def check_streams(streams: Streams) -> None:
    """Run every check on every rank; raise :class:`StreamError` on the first problem."""
    _check_header(streams)
    mbs = microbatches_of(streams)
    for rs in streams.ranks:
        _check_shape(streams, rs)
        _check_flow(streams, rs, mbs)
    _check_matching(streams)
    _check_progress(streams)
