"""Every built-in schedule side by side on the same costs, p = 8, m = 24.

Two cost sets: uniform (T_F = T_B = T_W = 1, no comm, M_B = 1, M_W = 0.5) and the Zero Bubble
paper's profiled 1.5B model (Qi et al., ICLR 2024: T_F 18.522, T_B 18.086, T_W 9.337 ms,
T_comm 0.601 ms; M_W / M_B = 32h / (34h + 5as) = 0.366 for h 2304, a 24, s 1024). The figures are
a model slice's (what one rank holds under 1F1B); the standard library gives each of v chunks per
rank 1/v of them (std:costs), so every row computes the same model. Columns: bubble rate (the paper's definition), makespan, makespan and peak memory as
a ratio to 1F1B's in the same run (the peer), peak activation memory (max over ranks and rank 0,
in units of M_B), and the time to generate the schedule (load + schedule + verify; best of 3).

Peers: PyTorch 2.13's own orders for its Interleaved1F1B, InterleavedZeroBubble, ZBVZeroBubble
and DualPipeV schedules (scheduler ``torch``), timed by the same simulator on the same costs.

Notes: dualpipe and dualpipe-v overlap F and B of two chunks in one slot (``overlap max``), so
their busy time is smaller than the others'; chimera and dualpipe keep two weight replicas (not
counted); pipedream counts the weight versions each stage keeps at mem_weights = M_B each
(``std:pipedream``) and
has no flush, so its figures are those of one window of a continuous stream.

Prints a table and writes benchmarks/results/schedules.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from schedlang.api import compile as compile_program
from schedlang.simulate import simulate

P, M = 8, 24

COSTS: dict[str, dict[str, float]] = {
    "uniform": {"tf": 1.0, "tb": 1.0, "tw": 1.0, "tc": 0.0, "mem_f": 1.0, "mem_w": 0.5},
    "paper-1.5B": {"tf": 18.522, "tb": 18.086, "tw": 9.337, "tc": 0.601, "mem_f": 1.0, "mem_w": 0.366},
}

# (row label, program (std:NAME or source text), scheduler or None, chunks per rank, extra parameters)
ROWS: list[tuple[str, str, str | None, int, dict[str, Any]]] = [
    ("gpipe", "std:gpipe", None, 1, {}),
    ("1f1b", "std:1f1b", None, 1, {}),
    ("interleaved-1f1b (v=2)", "std:interleaved-1f1b", None, 2, {"v": 2}),
    ("interleaved-zb (v=2)", "std:interleaved-zb", None, 2, {"v": 2}),
    ("looped-bfs (v=2)", "std:looped-bfs", None, 2, {"v": 2}),
    ("zb-h1", "std:zb-h1", None, 1, {}),
    ("zb-h2", "std:zb-h2", None, 1, {}),
    ("zb-1p (zb-auto, p*M_B)", "std:zb-1p", None, 1, {}),
    ("zb-2p (zb-auto, 2p*M_B)", "std:zb-2p", None, 1, {}),
    ("list greedy (BFW)", "std:zb-h1", "list", 1, {}),
    ("zb-v", "std:zb-v", None, 2, {}),
    ("v-half", "std:v-half", None, 2, {}),
    ("v-min", "std:v-min", None, 2, {}),
    ("dualpipe", "std:dualpipe", None, 1, {}),
    ("dualpipe-v", "std:dualpipe-v", None, 2, {}),
    ("chimera", "std:chimera", None, 1, {}),
    ("pipedream (async)", "std:pipedream", None, 1, {}),
    # peers: PyTorch 2.13's own orders (scheduler "torch"), timed by the same simulator
    ("torch Interleaved1F1B (v=2)", "std:interleaved-1f1b", "torch:schedule=Interleaved1F1B", 2, {"v": 2}),
    ("torch InterleavedZeroBubble (v=2)", "std:interleaved-zb", "torch:schedule=InterleavedZeroBubble", 2, {"v": 2}),
    ("torch ZBVZeroBubble", "std:zb-v", "torch:schedule=ZBVZeroBubble", 2, {}),
    ("torch DualPipeV", "std:dualpipe-v", "torch:schedule=DualPipeV", 2, {}),
]


def _params(costs: dict[str, float], v: int, extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"p": P, "m": M, "tc": costs["tc"]}
    for k in ("tf", "tb", "tw", "mem_f", "mem_w"):
        out[k] = costs[k]  # a model slice's: std:costs divides them among a rank's v chunks
    if "mem_f" in out and extra.get("program") == "std:pipedream":
        out["mem_weights"] = costs["mem_f"]
    return out | {k: x for k, x in extra.items() if k != "program"}


def run_row(program: str, scheduler: str | None, v: int, extra: dict[str, Any], costs: dict[str, float]) -> dict[str, Any]:
    params = _params(costs, v, extra | {"program": program})
    if program == "std:pipedream":
        params.pop("mem_w")
    if program in ("std:gpipe", "std:1f1b", "std:interleaved-1f1b", "std:looped-bfs"):
        params.pop("mem_w")  # fused backward: no M_W
    best = float("inf")
    prog = None
    for _ in range(3):
        t0 = time.perf_counter()
        prog = compile_program(program, params=params, scheduler=scheduler)
        best = min(best, time.perf_counter() - t0)
    assert prog is not None
    sim = simulate(prog)
    peaks = [r.peak_memory for r in sim.ranks]
    return {"bubble_rate": sim.bubble_rate, "makespan": sim.makespan, "cost": sim.cost,
            "peak_max": max(peaks), "peak_rank0": peaks[0], "peaks": peaks, "gen_s": best,
            "ops": len(prog.ops)}


def main() -> int:
    results: dict[str, list[dict[str, Any]]] = {}
    for cname, costs in COSTS.items():
        rows = []
        for label, program, scheduler, v, extra in ROWS:
            r = run_row(program, scheduler, v, extra, costs)
            rows.append({"schedule": label, "program": program, "scheduler": scheduler} | r)
        base = next(r for r in rows if r["schedule"] == "1f1b")
        for r in rows:
            r["makespan_vs_1f1b"] = r["makespan"] / base["makespan"]
            r["peak_vs_1f1b"] = r["peak_max"] / base["peak_max"]
        results[cname] = rows
        print(f"\n## {cname} costs, p = {P}, m = {M} (memory in M_B; ratios to 1F1B in this run)\n")
        print("| schedule | bubble rate | makespan | x 1F1B | peak max | peak rank 0 | peak x 1F1B | gen ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['schedule']} | {r['bubble_rate']:.4f} | {r['makespan']:.2f} | {r['makespan_vs_1f1b']:.3f} | "
                  f"{r['peak_max']:.2f} | {r['peak_rank0']:.2f} | {r['peak_vs_1f1b']:.2f} | {r['gen_s'] * 1e3:.1f} |")
    out = Path(__file__).parent / "results" / "schedules.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"p": P, "m": M, "costs": COSTS, "results": results}, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
