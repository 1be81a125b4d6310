"""How the heuristic schedulers' running time grows with the number of microbatches.

Cases: the ``list`` scheduler on the split F/B/W pipeline (``std:zb-h1``'s program) at p = 64,
and ``zb-v`` (its search) at p = 8; ``zb-auto`` at p = 64 beside ``list`` as a peer (another
greedy scheduler over the same ops). Only the scheduling pass is timed (lowering is not), best
of ``--repeat`` runs. ``--quick`` runs the small sizes only.

Prints a table and writes benchmarks/results/scheduler_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import schedlang.api as api
from schedlang.passes import DEFAULT_PIPELINE, run_passes


def _time(source: str, scheduler: str, p: int, m: int, repeat: int) -> tuple[float, int]:
    program = api.with_scheduler(api.load(source, p=p, m=m, limits={"max_ops": 10_000_000}), scheduler)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run_passes(program, DEFAULT_PIPELINE)
        best = min(best, time.perf_counter() - t0)
    return best, len(program.ops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    cases = [("std:zb-h1", "list", 64, m) for m in ((64, 256) if args.quick else (64, 256, 1024))]
    cases += [("std:zb-h1", "zb-auto", 64, m) for m in ((64, 256) if args.quick else (64, 256, 1024))]
    cases += [("std:zb-v", "zb-v", 8, m) for m in ((50, 100) if args.quick else (50, 100, 200, 400))]
    rows = []
    print(f"{'program':<10} {'scheduler':<9} {'p':>3} {'m':>5} {'ops':>8} {'seconds':>9} {'us/op':>7}")
    for source, scheduler, p, m in cases:
        seconds, ops = _time(source, scheduler, p, m, args.repeat)
        rows.append({"program": source, "scheduler": scheduler, "p": p, "m": m, "ops": ops, "seconds": seconds})
        print(f"{source:<10} {scheduler:<9} {p:>3} {m:>5} {ops:>8} {seconds:>9.3f} {seconds / ops * 1e6:>7.1f}",
              flush=True)
    out = Path(__file__).parent / "results" / "scheduler_scaling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
