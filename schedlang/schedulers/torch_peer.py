"""``torch``: the per-rank orders PyTorch's own schedules build, as a peer to compare against.

``--scheduler torch:schedule=ZBVZeroBubble`` orders the program the way
``torch.distributed.pipelining.schedules.Schedule<NAME>`` (torch 2.13) orders its actions, so
schedlang's simulator can time PyTorch's schedules on the same costs as its own. Supported:
``LoopedBFS``, ``Interleaved1F1B`` and ``InterleavedZeroBubble`` (placement s % p), ``ZBVZeroBubble`` and
``DualPipeV`` (V placement). The orders come from the classes' private
``_calculate_single_rank_operations``, called on a stand-in object with the fields it reads, so no
process group or model is needed; that API is private, hence the pinned version.

Action mapping: ``F`` -> the F kind, ``I`` -> B, ``W`` -> W, full backward ``B`` -> BW (fused
programs) or B then W in two slots (split programs), ``OVERLAP_F_B`` -> one slot with the F and the
B (W of a full backward in the next slot). Actions for microbatches the program does not have
(torch pads ZB-V to 2p-1 microbatches) are dropped, like ``?`` in the DSL.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

from schedlang.ir import Orders, Program, Value
from schedlang.schedulers.base import Arg, Scheduler
from schedlang.schedulers.heuristics import Kinds, kinds_of, looped_placement
from schedlang.schedulers.zb_v import v_placement
from schedlang.source import SchedlangError

TORCH_VERSION = "2.13"
SUPPORTED = ("LoopedBFS", "Interleaved1F1B", "InterleavedZeroBubble", "ZBVZeroBubble", "DualPipeV")


def torch_actions(name: str, p: int, m: int, v: int) -> dict[int, list[Any]]:
    """``{rank: [action or None]}`` as ``Schedule<name>`` computes it (torch imported here)."""
    import torch
    from torch.distributed.pipelining import schedules

    if not torch.__version__.startswith(TORCH_VERSION):
        raise SchedlangError(f"scheduler 'torch' reads private torch {TORCH_VERSION} APIs; found {torch.__version__}")
    cls = getattr(schedules, f"Schedule{name}")
    rounds = max(1, m // p)
    fake = SimpleNamespace(pp_group_size=p, _n_microbatches=m, num_stages=p * v, n_local_stages=v,
                           number_of_rounds=rounds, microbatches_per_round=m // rounds, _stages=[None] * v)
    return {r: list(cls._calculate_single_rank_operations(fake, r)) for r in range(p)}


def _slots(program: Program, kinds: Kinds, action: Any) -> list[tuple[int, ...]]:
    """The slots one torch action becomes (see the module docstring)."""
    index = program.op_index()
    kind = str(action.computation_type.value)
    if kind == "OVERLAP_F_B":
        parts = [_slots(program, kinds, a) for a in action.sub_actions]
        first = tuple(k for ps in parts for k in (ps[0] if ps else ()))
        rest = [s for ps in parts for s in ps[1:]]
        return ([first] if first else []) + rest
    s, i = action.stage_index, action.microbatch_index
    table: dict[str, list[str | None]] = {"F": [kinds.f], "I": [kinds.b], "W": [kinds.w], "B": list(kinds.backward)}
    names = table.get(kind)
    if names is None:
        return []  # communication and other bookkeeping actions
    return [(index[(n, s, i)],) for n in names if n is not None and (n, s, i) in index]


def torch_orders(program: Program, args: Mapping[str, Value]) -> Orders:
    """Order ``program`` like the torch schedule ``args['schedule']`` (see the module docstring)."""
    name = str(args.get("schedule", ""))
    kinds = kinds_of(program)
    if name not in SUPPORTED:
        raise SchedlangError(f"scheduler 'torch': schedule must be one of {', '.join(SUPPORTED)}, got {name!r}",
                             program.schedule_span)
    v_shape = name in ("ZBVZeroBubble", "DualPipeV")
    ok = v_placement(program) if v_shape else looped_placement(program)
    fused_ok = name in ("LoopedBFS", "Interleaved1F1B")
    if kinds is None or not ok or (not fused_ok and kinds.b is None):
        raise SchedlangError(f"scheduler 'torch': Schedule{name} needs "
                             f"{'the V placement' if v_shape else 'placement s % p'} and "
                             f"{'F / BW or ' if fused_ok else ''}F / B / W kinds",
                             program.schedule_span)
    p, m = program.num_ranks, program.num_microbatches
    actions = torch_actions(name, p, m, program.num_stages // p)
    ranks = []
    for r in range(p):
        slots: list[tuple[int, ...]] = []
        for a in actions[r]:
            if a is not None:
                slots += _slots(program, kinds, a)
        ranks.append(tuple(slots))
    return Orders(tuple(ranks), origin=f"torch:{name}")


SCHEDULER = Scheduler(
    name="torch",
    summary=f"PyTorch {TORCH_VERSION}'s own order for Schedule<schedule> (a peer to compare against)",
    fn=torch_orders,
    warm_start=False,
    applies=lambda _p: False,  # a peer for comparisons: only when asked for by name
    args={"schedule": Arg(str, "ZBVZeroBubble", f"one of {', '.join(SUPPORTED)}")},
)
