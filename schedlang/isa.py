"""The instruction-stream format: the one contract between the compiler and any runtime.

A compiled schedule is a :class:`Streams`: one :class:`RankStream` per rank, each an ordered
tuple of :class:`Instr`. The runtime (``schedlang.runtime``) imports this module and nothing else
of the compiler, so it must stay free of lark, ortools and torch.

Semantics (versions 1 and 2)
----------------------------
Compute instructions name a stage and a microbatch:

- ``F``   forward of ``stage`` on microbatch ``mb`` (a loss stage also computes the loss).
- ``B``   backward for the input (activation gradient) of ``stage``/``mb``.
- ``W``   backward for the weights of ``stage``/``mb``; runs after its ``B`` on the same rank.
- ``BW``  fused full backward (``B`` then ``W`` at once).
- ``FB``  an overlapped pair: the forward of ``stage``/``mb`` together with the full or input
  backward of ``stage2``/``mb2`` (DualPipe-style); ``kind`` names the backward part (``B``/``BW``).
- ``USER`` a user-declared op kind (``kind`` names it, e.g. a recompute op).

Point-to-point instructions move one tensor between two ranks:

- ``SEND_ACT`` sends the output activation of ``stage``/``mb`` to ``peer`` (which holds
  ``peer_stage``, the consumer stage); ``RECV_ACT`` receives the input activation of
  ``stage``/``mb`` from ``peer`` (which holds ``peer_stage``, the producer stage).
- ``SEND_GRAD`` sends the input gradient of ``stage``/``mb`` to ``peer`` (holding the producer
  stage ``peer_stage``); ``RECV_GRAD`` receives the output gradient of ``stage``/``mb`` from
  ``peer`` (holding the consumer stage ``peer_stage``).

Sends are non-blocking for the issuing rank (the runtime waits for them before it frees the
buffer or ends the step); a receive blocks until its data has arrived. ``BATCH`` groups several
point-to-point instructions that are issued together (one ``batch_isend_irecv``); its members are
in ``parts``. ``REDUCE_GRAD`` finishes the gradients of ``stage`` (scale by 1/num_microbatches,
all-reduce over data-parallel replicas when there are any). ``OPT_STEP`` steps the optimizer of
every stage on the rank.

Guarantees a runtime can rely on (codegen output; :func:`schedlang.isa_check.check_streams`
checks them, and its module docstring states the blocking semantics precisely):

- Messages between an ordered pair of ranks match in issue order: the k-th send from rank a to
  rank b (counting ``BATCH`` parts in order) is the k-th receive on b from a, with the same
  payload kind (ACT/GRAD), microbatch and stages (``stage``/``peer_stage`` swapped). A runtime
  may therefore use one tag per pair, or tag by (stage, mb) as it likes.
- A ``BATCH`` issues all its sends and posts all its receives, then waits for all its receives.
  Its parts may name several peers (codegen batches each run of adjacent sends and receives).
- Deadlock freedom assumes only that sends do not block (``isend``, completion waited for at the
  end of the step). A runtime may post a receive where the stream has it (``irecv``) and wait at
  the tensor's first use, as long as each pair's receives are posted in stream order. Codegen
  places receives early (where the simulated timeline has the data sent), so posting them there
  overlaps the transfer with the compute in between.
- Every receive is placed before the compute instruction that consumes it, often earlier: the
  runtime keeps the tensor until used.
- ``REDUCE_GRAD stage=s`` appears once per stage with backward ops, after that stage's last
  backward on the rank; ``OPT_STEP`` is the last instruction when the program has backwards.
- In ``FB``, ``kind`` is the backward's role, ``B`` or ``BW``; in ``USER``, ``kind`` is the
  schedlang op kind's name and ``stage``/``mb`` its indices (no tensor semantics: a runtime may
  treat it as a no-op or a hook).
- ``meta program=NAME`` names the source program (informational).

Weight-update policies (version 2). A header field ``weights=POLICY`` (``stash``,
``stash+vsync`` or ``2bw``; absent: ``flush``, the synchronous semantics above) declares an
asynchronous policy (see :mod:`schedlang.weights` and docs/async.md). Such streams have no
``REDUCE_GRAD`` and no ``OPT_STEP``; instead:

- every ``F``, ``B``, ``W`` and ``BW`` carries ``ver=V``: the weight version of its stage it uses,
  counted from the start of the step (version ``v`` = the stage's weights after ``v`` of its
  ``UPDATE``\\ s this step; version 0 = the weights the step starts with). A microbatch's backward
  uses the version of its forward. (Codegen never emits ``FB`` for such streams.)
- ``UPDATE stage=s`` applies the mean of the weight gradients of stage ``s``'s microbatches whose
  weight backward (``W``/``BW``) ran since the stage's previous ``UPDATE`` (an optimizer step of
  that stage alone, all-reduced over data-parallel replicas when there are any) and makes the
  next version. Every weight gradient is applied by a later ``UPDATE`` of its stage in the step.

A stream file is written as version 1 when it uses none of this (a reader of version 1 reads
it), else as version 2. Readers accept both; a version 1 file that uses a version 2 field is
refused.

Stage graph. By default stage ``s`` reads stage ``s-1``'s output (stage 0 reads the batch) and
the last stage computes the loss: one pipeline. A header field ``prev=q0,q1,...`` (present only
when the schedule differs from that) names each stage's producer (``-1``: reads the batch). The
stages then form several chains, each from a stage reading the batch to a stage computing the
loss, and each microbatch runs through one chain. Stages at the same position of different chains
(:meth:`Streams.part`) run the same part of the model on separate weight replicas (Chimera's two
pipelines); a runtime sums their gradients before the optimizer step. Point-to-point
``peer_stage`` fields follow the graph: the producer for ``RECV_ACT``/``SEND_GRAD``, the consumer
for ``SEND_ACT``/``RECV_GRAD``.

Text form (one instruction per line, ``key=value`` fields, ``#`` comments)::

    schedlang-isa 1
    pipeline ranks=2 stages=2 microbatches=2 placement=0,1
    rank 0 stages=0
      F stage=0 mb=0
      SEND_ACT stage=0 mb=0 peer=1 peer_stage=1
      BATCH
        SEND_ACT stage=0 mb=1 peer=1 peer_stage=1
        RECV_GRAD stage=0 mb=0 peer=1 peer_stage=1
      END
      ...

The JSON form is ``{"format": "schedlang-isa", "version": 1, ...}`` with one object per
instruction holding only its non-default fields. :func:`parse_text` and :func:`from_json` invert
:func:`to_text` and :func:`to_json` exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHT_POLICIES = ("flush", "stash", "stash+vsync", "2bw")


class Opcode(Enum):
    """Instruction opcodes; see the module docstring for their meaning."""

    F = "F"
    B = "B"
    W = "W"
    BW = "BW"
    FB = "FB"
    USER = "USER"
    SEND_ACT = "SEND_ACT"
    RECV_ACT = "RECV_ACT"
    SEND_GRAD = "SEND_GRAD"
    RECV_GRAD = "RECV_GRAD"
    BATCH = "BATCH"
    REDUCE_GRAD = "REDUCE_GRAD"
    OPT_STEP = "OPT_STEP"
    UPDATE = "UPDATE"

    @property
    def is_compute(self) -> bool:
        return self in COMPUTE_OPS

    @property
    def is_p2p(self) -> bool:
        return self in P2P_OPS

    @property
    def is_send(self) -> bool:
        return self in (Opcode.SEND_ACT, Opcode.SEND_GRAD)

    @property
    def is_recv(self) -> bool:
        return self in (Opcode.RECV_ACT, Opcode.RECV_GRAD)


COMPUTE_OPS = frozenset({Opcode.F, Opcode.B, Opcode.W, Opcode.BW, Opcode.FB, Opcode.USER})
P2P_OPS = frozenset({Opcode.SEND_ACT, Opcode.RECV_ACT, Opcode.SEND_GRAD, Opcode.RECV_GRAD})
SYNC_OPS = frozenset({Opcode.REDUCE_GRAD, Opcode.OPT_STEP, Opcode.UPDATE})


class IsaError(ValueError):
    """A malformed stream file: carries the 1-based line number when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass(frozen=True, slots=True)
class Instr:
    """One instruction. Fields that do not apply to an opcode keep their defaults (-1 / "")."""

    op: Opcode
    stage: int = -1
    mb: int = -1
    peer: int = -1
    peer_stage: int = -1
    stage2: int = -1
    mb2: int = -1
    kind: str = ""
    parts: tuple[Instr, ...] = ()
    ver: int = -1  # the weight version an F/B/W/BW uses (version 2, asynchronous policies)

    def __str__(self) -> str:
        return _format_instr(self)


@dataclass(frozen=True, slots=True)
class RankStream:
    """The instructions one rank executes, and the stages it holds (ascending)."""

    rank: int
    stages: tuple[int, ...]
    instrs: tuple[Instr, ...]


@dataclass(frozen=True, slots=True)
class Streams:
    """A whole compiled schedule: the pipeline's shape and one stream per rank."""

    num_ranks: int
    num_stages: int
    num_microbatches: int
    placement: tuple[int, ...]
    ranks: tuple[RankStream, ...]
    version: int = 1  # the format version written: 2 only where needed (see the module docstring)
    meta: tuple[tuple[str, str], ...] = field(default=())
    prev: tuple[int, ...] = ()
    weights: str = "flush"  # the weight-update policy (version 2; see the module docstring)

    def stream(self, rank: int) -> RankStream:
        return self.ranks[rank]

    def producer(self, stage: int) -> int:
        """The stage whose output feeds ``stage``'s forward; -1 when it reads the batch."""
        return self.prev[stage] if self.prev else stage - 1

    def consumer(self, stage: int) -> int:
        """The stage ``stage``'s output feeds; -1 when ``stage`` computes the loss."""
        if not self.prev:
            return stage + 1 if stage + 1 < self.num_stages else -1
        return next((t for t, q in enumerate(self.prev) if q == stage), -1)

    def chains(self) -> tuple[tuple[int, ...], ...]:
        """The pipelines: each a tuple of stages from the one reading the batch to the loss."""
        return chains_of(self.num_stages, self.prev)

    @property
    def num_parts(self) -> int:
        """Stages per chain: the number of parts the model is cut into."""
        return len(self.chains()[0])

    @property
    def loss_stages(self) -> tuple[int, ...]:
        """The stages that compute the loss (the last of each chain)."""
        return tuple(s for s in range(self.num_stages) if self.consumer(s) == -1)

    def part(self, stage: int) -> int:
        """Which part of the model ``stage`` runs: its position in its chain. Stages of different
        chains with the same part hold replicas of the same weights."""
        pos = 0
        while (stage := self.producer(stage)) != -1 and pos <= self.num_stages:
            pos += 1
        return pos


def chains_of(num_stages: int, prev: tuple[int, ...] = ()) -> tuple[tuple[int, ...], ...]:
    """The chains of a stage graph (``prev``: each stage's producer, ``-1`` for none; empty for
    the linear default), each from a stage that reads the batch to one that computes the loss."""
    if not prev:
        return (tuple(range(num_stages)),)
    nxt = {q: s for s, q in enumerate(prev) if q != -1}
    out = []
    for head in (s for s, q in enumerate(prev) if q == -1):
        chain = [head]
        while chain[-1] in nxt and nxt[chain[-1]] not in chain:
            chain.append(nxt[chain[-1]])
        out.append(tuple(chain))
    return tuple(out)


def flatten(instrs: tuple[Instr, ...]) -> Iterator[Instr]:
    """Yield the instructions with every ``BATCH`` replaced by its parts, in order."""
    for ins in instrs:
        if ins.op is Opcode.BATCH:
            yield from ins.parts
        else:
            yield ins


# --------------------------------------------------------------------------- text form

_INT_FIELDS = ("stage", "mb", "peer", "peer_stage", "stage2", "mb2", "ver")


def needs_version_2(streams: Streams) -> bool:
    """Whether the streams use anything of format version 2 (a policy, ``ver``, ``UPDATE``)."""
    return streams.weights != "flush" or any(
        ins.ver != -1 or ins.op is Opcode.UPDATE for rs in streams.ranks for ins in flatten(rs.instrs))


def _check_version(streams: Streams, where: str) -> Streams:
    if streams.version == 1 and needs_version_2(streams):
        raise IsaError(f"{where}: a version 1 stream file cannot hold a weight-update policy, 'ver' fields "
                       "or UPDATE instructions (they are version 2)")
    if streams.weights not in WEIGHT_POLICIES:
        raise IsaError(f"{where}: unknown weight-update policy {streams.weights!r} (known: "
                       + ", ".join(WEIGHT_POLICIES) + ")")
    return streams


def _format_instr(ins: Instr) -> str:
    out = [ins.op.value]
    for name in _INT_FIELDS:
        value = getattr(ins, name)
        if value != -1:
            out.append(f"{name}={value}")
    if ins.kind:
        out.append(f"kind={ins.kind}")
    return " ".join(out)


def to_text(streams: Streams) -> str:
    """Render streams in the versioned text form (see the module docstring)."""
    lines = [f"schedlang-isa {streams.version}"]
    placement = ",".join(str(r) for r in streams.placement)
    lines.append(
        f"pipeline ranks={streams.num_ranks} stages={streams.num_stages} "
        f"microbatches={streams.num_microbatches} placement={placement}"
        + (f" prev={','.join(str(q) for q in streams.prev)}" if streams.prev else "")
        + (f" weights={streams.weights}" if streams.weights != "flush" else "")
    )
    for key, value in streams.meta:
        lines.append(f"meta {key}={value}")
    for rs in streams.ranks:
        lines.append(f"rank {rs.rank} stages={','.join(str(s) for s in rs.stages)}")
        for ins in rs.instrs:
            if ins.op is Opcode.BATCH:
                lines.append("  BATCH")
                lines.extend(f"    {_format_instr(p)}" for p in ins.parts)
                lines.append("  END")
            else:
                lines.append(f"  {_format_instr(ins)}")
    return "\n".join(lines) + "\n"


def _int(text: str, lineno: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise IsaError(f"{what}: expected an integer, got {shown!r}", lineno) from None


def _int_list(text: str, lineno: int, what: str) -> tuple[int, ...]:
    if text == "":
        return ()
    return tuple(_int(t, lineno, what) for t in text.split(","))


def _kv(tokens: list[str], lineno: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep:
            raise IsaError(f"expected key=value, got {tok!r}", lineno)
        if key in out:
            raise IsaError(f"field {key!r} given twice", lineno)
        out[key] = value
    return out


def _parse_instr(tokens: list[str], lineno: int) -> Instr:
    try:
        op = Opcode(tokens[0])
    except ValueError:
        raise IsaError(f"unknown instruction {tokens[0]!r}", lineno) from None
    kv = _kv(tokens[1:], lineno)
    args: dict[str, Any] = {}
    for key, value in kv.items():
        if key in _INT_FIELDS:
            args[key] = _int(value, lineno, key)
        elif key == "kind":
            args[key] = value
        else:
            raise IsaError(f"unknown field {key!r} for {op.value}", lineno)
    return Instr(op, **args)


def parse_text(text: str) -> Streams:  # noqa: C901 - a flat line dispatcher
    """Parse the text form; raises :class:`IsaError` with a line number on malformed input."""
    header: dict[str, str] | None = None
    version = None
    meta: list[tuple[str, str]] = []
    ranks: list[RankStream] = []
    cur: tuple[int, tuple[int, ...]] | None = None
    cur_instrs: list[Instr] = []
    batch: list[Instr] | None = None

    def close_rank() -> None:
        if cur is not None:
            ranks.append(RankStream(cur[0], cur[1], tuple(cur_instrs)))

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tokens = line.split()
        head = tokens[0]
        if version is None:
            if head != "schedlang-isa" or len(tokens) != 2:
                raise IsaError("expected 'schedlang-isa VERSION' first", lineno)
            version = _int(tokens[1], lineno, "version")
            if version not in READABLE_VERSIONS:
                raise IsaError(f"unsupported version {version} (this reader knows versions "
                               f"{', '.join(map(str, READABLE_VERSIONS))})", lineno)
        elif head == "pipeline":
            if header is not None:
                raise IsaError("second 'pipeline' header (a stream file has one)", lineno)
            header = _kv(tokens[1:], lineno)
        elif head == "meta":
            key, _, value = line[len("meta"):].strip().partition("=")
            meta.append((key, value))
        elif head == "rank":
            if batch is not None:
                raise IsaError("BATCH not closed by END", lineno)
            close_rank()
            if len(tokens) < 2:
                raise IsaError("expected 'rank N stages=...'", lineno)
            kv = _kv(tokens[2:], lineno)
            cur = (_int(tokens[1], lineno, "rank"), _int_list(kv.get("stages", ""), lineno, "stages"))
            cur_instrs = []
        elif cur is None:
            raise IsaError(f"instruction {head!r} outside a rank section", lineno)
        elif head == "BATCH":
            if batch is not None:
                raise IsaError("nested BATCH", lineno)
            batch = []
        elif head == "END":
            if batch is None:
                raise IsaError("END without BATCH", lineno)
            cur_instrs.append(Instr(Opcode.BATCH, parts=tuple(batch)))
            batch = None
        else:
            ins = _parse_instr(tokens, lineno)
            (batch if batch is not None else cur_instrs).append(ins)
    if batch is not None:
        raise IsaError("BATCH not closed by END")
    close_rank()
    if version is None or header is None:
        raise IsaError("missing 'schedlang-isa' or 'pipeline' header")
    try:
        streams = Streams(
            num_ranks=int(header["ranks"]),
            num_stages=int(header["stages"]),
            num_microbatches=int(header["microbatches"]),
            placement=_int_list(header.get("placement", ""), 0, "placement"),
            ranks=tuple(ranks),
            version=version,
            meta=tuple(meta),
            prev=_int_list(header.get("prev", ""), 0, "prev"),
            weights=header.get("weights", "flush"),
        )
    except (KeyError, ValueError) as exc:
        raise IsaError(f"bad pipeline header: {exc}") from None
    return _check_version(streams, "the pipeline header")


# --------------------------------------------------------------------------- JSON form


def _instr_to_obj(ins: Instr) -> dict[str, Any]:
    obj: dict[str, Any] = {"op": ins.op.value}
    for f in fields(Instr):
        if f.name in ("op", "parts"):
            continue
        value = getattr(ins, f.name)
        if value != f.default:
            obj[f.name] = value
    if ins.parts:
        obj["parts"] = [_instr_to_obj(p) for p in ins.parts]
    return obj


def _json_bad(path: str, what: str, value: object) -> IsaError:
    try:
        shown = json.dumps(value)
    except (ValueError, RecursionError):
        shown = type(value).__name__
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return IsaError(f"{path}: expected {what}, got {shown}")


def _json_int(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _json_bad(path, "an integer", value)
    return value


def _json_ints(value: object, path: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise _json_bad(path, "a list of integers", value)
    return tuple(_json_int(v, f"{path}[{k}]") for k, v in enumerate(value))


def _json_obj(value: object, path: str, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _json_bad(path, "an object", value)
    missing = [k for k in required if k not in value]
    if missing:
        raise IsaError(f"{path}: missing field {missing[0]!r}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise IsaError(f"{path}: unknown field {unknown[0]!r}")
    return value


_INSTR_FIELDS = tuple(f.name for f in fields(Instr) if f.name != "op")


def _instr_from_obj(value: object, path: str, nested: bool = False) -> Instr:
    obj = _json_obj(value, path, ("op",), _INSTR_FIELDS)
    try:
        op = Opcode(obj["op"])
    except (TypeError, ValueError):
        raise _json_bad(f"{path}.op", "an opcode (" + ", ".join(o.value for o in Opcode) + ")", obj["op"]) from None
    args: dict[str, Any] = {name: _json_int(obj[name], f"{path}.{name}") for name in _INT_FIELDS if name in obj}
    if "kind" in obj:
        if not isinstance(obj["kind"], str):
            raise _json_bad(f"{path}.kind", "a string", obj["kind"])
        args["kind"] = obj["kind"]
    if "parts" in obj:
        if op is not Opcode.BATCH or nested:
            raise IsaError(f"{path}.parts: only a BATCH holds parts, and a BATCH is not nested")
        if not isinstance(obj["parts"], list):
            raise _json_bad(f"{path}.parts", "a list of instructions", obj["parts"])
        args["parts"] = tuple(_instr_from_obj(p, f"{path}.parts[{k}]", True) for k, p in enumerate(obj["parts"]))
    return Instr(op, **args)


def _rank_from_obj(value: object, path: str) -> RankStream:
    obj = _json_obj(value, path, ("rank", "stages", "instrs"), ())
    if not isinstance(obj["instrs"], list):
        raise _json_bad(f"{path}.instrs", "a list of instructions", obj["instrs"])
    return RankStream(_json_int(obj["rank"], f"{path}.rank"), _json_ints(obj["stages"], f"{path}.stages"),
                      tuple(_instr_from_obj(i, f"{path}.instrs[{k}]") for k, i in enumerate(obj["instrs"])))


def to_json(streams: Streams) -> str:
    """Render streams as JSON (stable key order, one line per instruction is not promised)."""
    doc = {
        "format": "schedlang-isa",
        "version": streams.version,
        **({"weights": streams.weights} if streams.weights != "flush" else {}),
        "num_ranks": streams.num_ranks,
        "num_stages": streams.num_stages,
        "num_microbatches": streams.num_microbatches,
        "placement": list(streams.placement),
        "meta": dict(streams.meta),
        **({"prev": list(streams.prev)} if streams.prev else {}),
        "ranks": [
            {
                "rank": rs.rank,
                "stages": list(rs.stages),
                "instrs": [_instr_to_obj(i) for i in rs.instrs],
            }
            for rs in streams.ranks
        ],
    }
    return json.dumps(doc, indent=1) + "\n"


def from_json(text: str) -> Streams:
    """Parse the JSON form produced by :func:`to_json`; an error names the JSON path of the bad
    value (e.g. ``ranks[1].instrs[4].mb``), or the line of a JSON syntax error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IsaError(f"malformed JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise IsaError("malformed JSON streams: values nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise IsaError(f"malformed JSON: {exc}") from None
    top = ("format", "version", "num_ranks", "num_stages", "num_microbatches", "placement", "ranks")
    if not isinstance(doc, dict) or doc.get("format") != "schedlang-isa":
        raise IsaError('not a schedlang-isa JSON document (expected an object with "format": "schedlang-isa")')
    doc = _json_obj(doc, "the document", top, ("meta", "prev", "weights"))
    version = _json_int(doc["version"], "version")
    if version not in READABLE_VERSIONS:
        raise IsaError(f"version: unsupported version {version} (this reader knows versions "
                       f"{', '.join(map(str, READABLE_VERSIONS))})")
    weights = doc.get("weights", "flush")
    if not isinstance(weights, str):
        raise _json_bad("weights", "a string", weights)
    meta = doc.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _json_bad("meta", "an object of strings", meta)
    if not isinstance(doc["ranks"], list):
        raise _json_bad("ranks", "a list of rank objects", doc["ranks"])
    return _check_version(Streams(
        num_ranks=_json_int(doc["num_ranks"], "num_ranks"),
        num_stages=_json_int(doc["num_stages"], "num_stages"),
        num_microbatches=_json_int(doc["num_microbatches"], "num_microbatches"),
        placement=_json_ints(doc["placement"], "placement"),
        ranks=tuple(_rank_from_obj(r, f"ranks[{k}]") for k, r in enumerate(doc["ranks"])),
        version=version,
        meta=tuple(meta.items()),
        prev=_json_ints(doc.get("prev", []), "prev"),
        weights=weights,
    ), "weights")


def load(path: str) -> Streams:
    """Read streams from a ``.json`` file or a text file."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IsaError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} cannot be decoded",
                       data[:exc.start].count(b"\n") + 1) from None
    return from_json(text) if text.lstrip().startswith("{") else parse_text(text)


__all__ = [
    "COMPUTE_OPS",
    "P2P_OPS",
    "READABLE_VERSIONS",
    "SYNC_OPS",
    "VERSION",
    "WEIGHT_POLICIES",
    "Instr",
    "IsaError",
    "Opcode",
    "RankStream",
    "Streams",
    "chains_of",
    "flatten",
    "from_json",
    "load",
    "needs_version_2",
    "parse_text",
    "to_json",
    "to_text",
]
