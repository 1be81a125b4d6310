"""The optimizer's lower bound with and without item 7 (relaxations keeping two ranks exact on the
first microbatches, schedlang/schedulers/ilp/relax.py), instance by instance.

The instances are ``benchmarks/optimizer.py``'s (same flags: ``--max-p 8 --limit 0.75`` gives the
18 of the tightest memory column). For each: the bound of items 1 to 6 (``old``), the bound with
item 7 found within ``--seconds`` (``new``, wall clock, one CP-SAT worker, every other rank as a
partner, as ``optimize(relax=...)`` runs it), the wall time item 7 took, its solves and how many
it proved, and, with ``--costs FILE`` (a JSON written by benchmarks/optimizer.py), the best cost
found there and both gaps. Prints a table and writes benchmarks/results/bounds[-NAME].json.

    python benchmarks/bounds.py --max-p 8 --limit 0.75 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from optimizer import PROFILES, instances  # type: ignore[import-not-found]

from schedlang.schedulers.ilp.bounds import lower_bound
from schedlang.schedulers.ilp.cases import pipeline
from schedlang.schedulers.ilp.relax import RelaxStats, every_other, windows


def run_one(prof: str, p: int, m: int, lim: float, seconds: float, cost: float | None) -> dict[str, Any]:
    base, heavy = PROFILES[prof]
    prog = pipeline(p, m, base, lim, heavy_last=heavy)
    limits = prog.mem_limit or ()
    t0 = time.perf_counter()
    old = lower_bound(prog, limits, "span")
    t_old = time.perf_counter() - t0
    stats = RelaxStats()
    t1 = time.perf_counter()
    got = windows(prog, limits, seconds=seconds, partners=every_other(prog), stop_at=cost or float("inf"),
                  stats=stats)
    new = lower_bound(prog, limits, "span", got)
    t_new = time.perf_counter() - t1
    row: dict[str, Any] = {"profile": prof, "p": p, "m": m, "limit": lim, "old": old.value, "new": new.value,
                           "old_seconds": t_old, "relax_seconds": t_new, "solves": stats.solves,
                           "proved": stats.proved, "budget": seconds, "detail": new.describe(),
                           "figures": {str(r): {"gaps": dict(w.gaps), "spans": dict(w.spans)} for r, w in got.items()}}
    if cost is not None:
        row.update(cost=cost, old_gap=(cost - old.value) / cost, new_gap=(cost - new.value) / cost)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="wall seconds for item 7 per instance")
    ap.add_argument("--max-p", type=int, default=8)
    ap.add_argument("--min-p", type=int, default=4)
    ap.add_argument("--limit", type=float, action="append", help="memory limit factor to run (repeatable)")
    ap.add_argument("--only", help="profile to run (uniform, 1.5B, heavy)")
    ap.add_argument("--costs", help="a benchmarks/optimizer.py JSON: its costs give the gaps (and stop item 7 "
                                    "once the bound reaches them)")
    ap.add_argument("--name", default="", help="suffix of the JSON file name")
    args = ap.parse_args(argv)
    args.scale = args.headline = args.shapes = args.quick = False
    todo = [x for x in instances(args) if (args.only is None or x[0] == args.only)
            and (not args.limit or x[3] in args.limit)]
    costs: dict[tuple[str, int, int, float], float] = {}
    if args.costs:
        for r in json.loads(Path(args.costs).read_text())["rows"]:
            if r.get("status") != "ERROR":
                costs[(r["profile"], r["p"], r["m"], r["limit"])] = r["ilp_cost"]
    out = Path(__file__).parent / "results" / f"bounds{'-' + args.name if args.name else ''}.json"
    out.parent.mkdir(exist_ok=True)
    print(f"{'profile':>7} {'p':>3} {'m':>3} {'limit':>5} {'old':>10} {'new':>10} {'relax s':>8} {'solves':>7} "
          f"{'cost':>10} {'old gap':>8} {'new gap':>8}")
    rows = []
    for item in todo:
        row = run_one(*item, args.seconds, costs.get(item))
        rows.append(row)
        gaps = (f"{row['cost']:>10.6g} {100 * row['old_gap']:>7.2f}% {100 * row['new_gap']:>7.2f}%"
                if "cost" in row else "")
        print(f"{row['profile']:>7} {row['p']:>3} {row['m']:>3} {row['limit']:>5g} {row['old']:>10.6g} "
              f"{row['new']:>10.6g} {row['relax_seconds']:>8.1f} {row['solves']:>3}/{row['proved']:<3} {gaps}",
              flush=True)
        out.write_text(json.dumps({"seconds": args.seconds, "rows": rows}, indent=1))
    raised = sum(1 for r in rows if r["new"] > r["old"] + 1e-9)
    print(f"{len(rows)} instances: item 7 raised {raised} bounds within {args.seconds:g}s each")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
