"""Front-end and simulator speed: parse + lower + simulate at scale, beside a peer.

Cases (issue [core]): the zero-bubble F/B/W pipeline at p = 32, m = 256 (24,576 ops), scheduled
with the built-in 1F1B-style explicit order and simulated; and a 5,000-line source file (explicit
orders written out op by op). Peers, timed in the same run so the ratio means something on a
shared, noisy machine:

- parsing: Lark's own LALR parse of the same text into its generic parse tree (what any Lark-based
  front end pays at minimum); the ratio shows what schedlang's AST building and spans add;
- simulation: PyTorch's ``_simulate_comms_compute`` (torch.distributed.pipelining: an untimed,
  step-based simulation of a schedule with its send/recv actions) on the same ZB-H1 schedule,
  when torch is installed. It does less (no times, no memory) and it is the closest peer there is.

Prints a table and writes benchmarks/results/core.json. Target: each case under one second here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import schedlang.api as api
from schedlang.parse import _parser, parse_module
from schedlang.simulate import simulate
from schedlang.source import Source

ZB_SOURCE = """
import "std:fbw"
param p = 32
param m = 256
ranks p
microbatches m
schedule {
  rank r in 0..p {
    let lb = p - 1 - r
    let lw = p - 1
    for x in 0..m + lw {
      F[r, x]?
      B[r, x - lb]?
      W[r, x - lw]?
    }
  }
}
"""


def big_source(lines_wanted: int = 5000) -> str:
    """An explicit GPipe-style order written out op by op, about ``lines_wanted`` lines long."""
    p = 8
    m = (lines_wanted - 12) // (p * 2)
    out = ['import "std:fused"', f"param p = {p}", f"param m = {m}", "ranks p", "microbatches m", "schedule {"]
    for r in range(p):
        out.append(f"  rank {r} {{")
        out += [f"    F[{r}, {i}]" for i in range(m)]
        out += [f"    BW[{r}, {i}]" for i in range(m)]
        out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


def best_of(fn: Callable[[], Any], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def torch_peer_simulation(program: Any) -> Callable[[], Any] | None:
    try:
        from torch.distributed.pipelining.schedules import (
            _Action,
            _add_send_recv,
            _ComputationType,
            _simulate_comms_compute,
        )
    except Exception:  # torch missing or the private API moved
        return None
    kind = {"F": _ComputationType.FORWARD, "B": _ComputationType.BACKWARD_INPUT,
            "W": _ComputationType.BACKWARD_WEIGHT, "BW": _ComputationType.FULL_BACKWARD}
    order = {r: [_Action(program.ops[k].stage, kind[program.ops[k].kind], program.ops[k].mb)
                 for slot in slots for k in slot] for r, slots in enumerate(program.orders.ranks)}
    stage_to_rank = program.placement.__getitem__
    comms = _add_send_recv(order, stage_to_rank, program.num_stages)  # its simulator needs the comms
    return lambda: _simulate_comms_compute(comms, stage_to_rank, program.num_stages)


def main() -> int:
    rows = []
    api.compile("std:1f1b")  # build the parser once, as any long-lived user would
    src = Source("zb.sched", ZB_SOURCE)
    t_total = best_of(lambda: simulate(api.schedule(api.lower_source(src))), 3)
    prog = api.schedule(api.lower_source(src))
    t_sim = best_of(lambda: simulate(prog), 3)
    peer = torch_peer_simulation(prog)
    t_peer = best_of(peer, 1) if peer else None
    rows.append({"case": "zb-h1 p=32 m=256: parse+lower+schedule+simulate", "ops": len(prog.ops),
                 "edges": len(prog.edges), "seconds": t_total})
    rows.append({"case": "  simulate only", "ops": len(prog.ops), "seconds": t_sim,
                 "peer": "torch _simulate_comms_compute", "peer_seconds": t_peer,
                 "ratio": (t_sim / t_peer) if t_peer else None})
    text = big_source()
    nlines = text.count("\n")
    bsrc = Source("big.sched", text)
    t_parse = best_of(lambda: parse_module(bsrc))
    t_lark = best_of(lambda: _parser().lark.parse(text, start="start"))
    t_all = best_of(lambda: simulate(api.schedule(api.lower_source(bsrc))), 3)
    rows.append({"case": f"{nlines}-line file: parse+lower+schedule+simulate", "seconds": t_all})
    rows.append({"case": f"  parse only ({nlines} lines)", "seconds": t_parse, "peer": "lark parse tree only",
                 "peer_seconds": t_lark, "ratio": t_parse / t_lark})
    print(f"{'case':55} {'ops':>7} {'seconds':>9} {'peer':>32} {'peer s':>8} {'ratio':>6}")
    for r in rows:
        peer_s = f"{r['peer_seconds']:.3f}" if r.get("peer_seconds") else "-"
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
        print(f"{r['case']:55} {r.get('ops', ''):>7} {r['seconds']:>9.3f} {r.get('peer', '-'):>32} {peer_s:>8} {ratio:>6}")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "core.json").write_text(json.dumps({"python": sys.version.split()[0], "rows": rows,
                                               "timing": "best of 3-5 runs, seconds"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
