"""ZB-V generation time at p = 8, m = 24 (the scheduler alone: load once, then schedule; best of
``--repeat``), on the uniform costs and on the Zero Bubble paper's profiled 1.5B model (T_F
18.522, T_B 18.086, T_W 9.337, T_comm 0.601 ms; per-chunk costs: times and memory halved).

Also prints the schedule's span cost, so a speed change that changed the orders shows.

Prints a table and writes benchmarks/results/zb_v.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from schedlang.api import load, schedule
from schedlang.simulate import simulate

COSTS: dict[str, dict[str, float]] = {
    "uniform": {"tf": 0.5, "tb": 0.5, "tw": 0.5, "tc": 0.0, "mem_f": 0.5, "mem_w": 0.25},
    "paper-1.5B": {"tf": 18.522 / 2, "tb": 18.086 / 2, "tw": 9.337 / 2, "tc": 0.601,
                   "mem_f": 0.5, "mem_w": 0.183},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--m", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "zb_v.json"))
    a = ap.parse_args()
    rows = []
    print(f"{'costs':<12} {'p':>2} {'m':>3} {'cost':>10} {'best s':>8}")
    for name, kw in COSTS.items():
        prog = load("std:zb-v", dict(kw, p=a.p, m=a.m))
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            sched = schedule(prog)
            times.append(time.perf_counter() - t0)
        cost = simulate(sched).cost
        rows.append({"costs": name, "p": a.p, "m": a.m, "cost": cost, "seconds": min(times)})
        print(f"{name:<12} {a.p:>2} {a.m:>3} {cost:>10.4f} {min(times):>8.3f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
