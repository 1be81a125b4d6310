"""The CP-SAT optimizer (``ilp``) against the best built-in heuristic, instance by instance.

Suite (issue [ilp]): p in {4, 8, 16}, m in {8, 24, 64}; profiles ``uniform`` (T_F = T_B = T_W),
``1.5B`` (the Zero Bubble paper's profiled times, Qi et al., ICLR 2024) and ``heavy`` (1.5B with the last
stage 1.5x slower); memory limits 0.75, 1, 1.5 and 2 times p*M_B; comm time on. For each
instance: the best heuristic (name and bubble rate: the peer, scheduled in the same run), the
ILP's bubble rate, the lower bound (as a bubble rate: no schedule can do better), the gap
``(cost - bound) / cost``, the status and the solve time. ``--headline`` runs the issue's two
headline instances (1.5B, limit 2p*M_B: p=4 m=12 and p=8 m=24). ``--shapes`` runs ranks with two
stages each instead: the V placement (ZB-V's) and the interleaved one, split F/B/W with half-stage
times and memory (T = 0.5, comm 0.1), p = 4, m in {8, 16}, limits 0.5, 0.75 and 1 times p*M_B
(M_B: a whole stage's activation, so p*M_B is 1F1B's peak and the ZB-V paper's limit), and
``V-1.5B``: the V placement with the 1.5B profile per chunk, p = 8, m = 24, under the memory of
the authors' V-Half (5 M_B) and V-Min (4 M_B) schedules, against their costs.

``--scale`` runs the
real sizes instead: 1.5B profile, limit 1.5 x p*M_B, p = 32 with m = 128 and p = 16 with m = 256
(12288 ops each).

    python benchmarks/optimizer.py --quick --time-limit 10
    python benchmarks/optimizer.py --headline --time-limit 60
    python benchmarks/optimizer.py --max-p 8 --time-limit 20
    python benchmarks/optimizer.py --shapes --time-limit 60
    python benchmarks/optimizer.py --scale --time-limit 60

``--time-limit`` is the optimizer's: wall-clock seconds per instance for the whole run, or CP-SAT's
deterministic time with ``--deterministic`` (reproducible). Every instance runs in a fresh
process, so its peak resident memory (``resource.getrusage``) is its own. Each row of the JSON
also has the wall time measured around the optimizer call against the limit (``wall``,
``wall_ratio``) and where the time went (``phases``: heuristics, bounds, periodic, model, search,
finish, in wall seconds). Prints a table and writes benchmarks/results/optimizer[-NAME].json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from schedlang.schedulers.ilp import optimize
from schedlang.schedulers.ilp.cases import pipeline

PROFILES = {"uniform": ("uniform", 1.0), "1.5B": ("1.5B", 1.0), "heavy": ("1.5B", 1.5)}
LIMITS = (0.75, 1.0, 1.5, 2.0)
SHAPES = {"V": "s < p ? s : 2 * p - 1 - s", "interleaved": "s % p"}  # two stages per rank
SHAPE_LIMITS = (0.5, 0.75, 1.0)
# The V placement with the zero-bubble paper's 1.5B profile per chunk (each stage's times and
# memory halved, comm unchanged), p = 8, m = 24, under the memory of the authors' V-Half (5 M_B)
# and V-Min (4 M_B) schedules, with the authors' costs for those schedules (ms): the figures to
# reach (Qi et al., "Pipeline Parallelism with Controllable Memory", 2024).
V_PAPER = {5.0: 1328.77, 4.0: 1658.82}
V_PAPER_COSTS = dict(tf=18.522 / 2, tb=18.086 / 2, tw=9.337 / 2, tc=0.601, mem_f=0.5, mem_w=0.366 / 2)
SHAPE_SOURCE = """import "std:fbw"
param p = 4
param m = 8
ranks p
stages 2 * p
microbatches m
place s => {place}
"""


def shape_program(shape: str, p: int, m: int, lim: float) -> Any:
    """Two stages per rank placed as ``shape``; half-stage times and memory, ``lim`` x p*M_B
    (``V-1.5B``: the V placement with the 1.5B profile per chunk)."""
    from schedlang.api import loads

    if shape == "V-1.5B":
        return loads(SHAPE_SOURCE.format(place=SHAPES["V"]), name=f"{shape}-p{p}-m{m}",
                     params=dict(p=p, m=m, **V_PAPER_COSTS, costs_per="stage", mem_limit=lim * p))

    return loads(SHAPE_SOURCE.format(place=SHAPES[shape]), name=f"{shape}-p{p}-m{m}",
                 params=dict(p=p, m=m, tf=0.5, tb=0.5, tw=0.5, tc=0.1, mem_f=0.5, mem_w=0.25, costs_per="stage",
                             mem_limit=lim * p * (0.5 + 0.5)))  # M_B: both half-stages' activations


SCALE = [("1.5B", 32, 128, 1.5), ("1.5B", 16, 256, 1.5)]


def instances(args: argparse.Namespace) -> list[tuple[str, int, int, float]]:
    if args.scale:
        return list(SCALE)
    if args.headline:
        return [("1.5B", 4, 12, 2.0), ("1.5B", 8, 24, 2.0)]
    if args.shapes:
        return ([(shape, 4, m, lim) for shape in SHAPES for m in (8, 16) for lim in SHAPE_LIMITS]
                + [("V-1.5B", 8, 24, level / 8) for level in V_PAPER])
    ps = [p for p in (4, 8, 16) if args.min_p <= p <= args.max_p]
    ms: tuple[int, ...] = (8, 24, 64)
    if args.quick:
        ps, ms = [4, 8], (8, 24)
    out = []
    for prof in PROFILES:
        for p in ps:
            for m in ms:
                if args.quick and (p, m) == (8, 8):
                    continue
                for lim in LIMITS:
                    out.append((prof, p, m, lim))
    return out


def run_one(prof: str, p: int, m: int, lim: float, time_limit: float, workers: int,
            deterministic: bool = False) -> dict[str, Any]:
    if prof in SHAPES or prof == "V-1.5B":
        prog = shape_program(prof, p, m, lim)
    else:
        base, heavy = PROFILES[prof]
        prog = pipeline(p, m, base, lim, heavy_last=heavy)
    row: dict[str, Any] = {"profile": prof, "p": p, "m": m, "limit": lim, "ops": len(prog.ops),
                           "time_limit": time_limit, "clock": "deterministic" if deterministic else "wall"}
    t0 = time.perf_counter()
    try:
        orders, rep = optimize(prog, time_limit=time_limit, workers=workers, deterministic=deterministic)
    except Exception as exc:  # noqa: BLE001 - a benchmark records failures (e.g. infeasible limits)
        row.update(status="ERROR", error=str(exc).splitlines()[0], time=time.perf_counter() - t0)
        return row
    wall = time.perf_counter() - t0
    from schedlang.simulate import simulate
    from schedlang.verify import verify

    sched = prog.with_orders(orders)
    verify(sched)
    sim = simulate(sched)
    busy = max(r.busy for r in sim.ranks)
    # the peer is the best built-in heuristic (the optimizer's own periodic start is not one)
    heur, heur_cost = min(((v, k) for k, v in rep.candidates.items() if not k.startswith("periodic")))[::-1]
    heur_rate = max(0.0, (heur_cost - busy) / heur_cost) if heur_cost > 0 else 0.0
    row.update(status=rep.status, heuristic=heur, heuristic_cost=heur_cost, start=rep.warm_start,
               heuristic_bubble_rate=heur_rate, ilp_cost=rep.objective, ilp_bubble_rate=max(0.0, sim.bubble_rate),
               bound=rep.bound, bound_bubble_rate=max(0.0, (rep.bound - busy) / rep.bound) if rep.bound > 0 else 0.0,
               gap=rep.gap, ratio=rep.objective / heur_cost, time=rep.time, wall=wall, wall_ratio=wall / time_limit,
               phases=rep.phases, deterministic_time=rep.deterministic_time, rounds=rep.rounds,
               paper_cost=V_PAPER.get(lim * p) if prof == "V-1.5B" else None, makespan=sim.makespan,
               candidates=rep.candidates, wall_capped=rep.wall_capped)
    return row


def run_fresh(todo: tuple[str, int, int, float], time_limit: float, workers: int, deterministic: bool) -> dict[str, Any]:
    """:func:`run_one` in this (fresh) process, with the process's peak resident memory."""
    row = run_one(*todo, time_limit, workers, deterministic)
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return row


def show(row: dict[str, Any]) -> str:
    head = f"{row['profile']:>7} {row['p']:>3} {row['m']:>3} {row['limit']:>5.2f}"
    if row["status"] == "ERROR":
        return f"{head}  ERROR {row['error'][:80]}"
    return (f"{head} {row['heuristic']:>11} {row['heuristic_bubble_rate']:>8.4f} {row['ilp_bubble_rate']:>8.4f} "
            f"{row['bound_bubble_rate']:>8.4f} {100 * row['gap']:>6.2f}% {row['ratio']:>6.4f} {row['status']:>10} "
            f"{row['wall']:>7.1f} {row['wall_ratio']:>6.3f} {row['peak_rss_mib']:>7.0f}")


HEADER = (f"{'profile':>7} {'p':>3} {'m':>3} {'limit':>5} {'heuristic':>11} {'h.bubble':>8} {'ilp':>8} "
          f"{'bound':>8} {'gap':>7} {'ratio':>6} {'status':>10} {'wall s':>7} {'/limit':>6} {'MiB':>7}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=60.0,
                    help="seconds per instance (wall clock; with --deterministic CP-SAT's deterministic time)")
    ap.add_argument("--deterministic", action="store_true", help="reproducible runs: deterministic time")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="p in {4, 8}, m in {8, 24} (not p=8 m=8)")
    ap.add_argument("--headline", action="store_true", help="only the issue's two headline instances")
    ap.add_argument("--shapes", action="store_true", help="two stages per rank (V, interleaved) instead")
    ap.add_argument("--scale", action="store_true", help="the real sizes: p=32 m=128 and p=16 m=256 (1.5B, 1.5 p*M_B)")
    ap.add_argument("--max-p", type=int, default=16)
    ap.add_argument("--min-p", type=int, default=4)
    ap.add_argument("--only", help="profile (uniform, 1.5B, heavy) or shape (V, interleaved, V-1.5B) to run")
    ap.add_argument("--limit", type=float, action="append", help="memory limit factor to run (repeatable)")
    ap.add_argument("--name", default="", help="suffix of the JSON file name")
    args = ap.parse_args(argv)
    todo = [x for x in instances(args) if (args.only is None or x[0] == args.only)
            and (not args.limit or x[3] in args.limit)]
    print(HEADER)
    rows: list[dict[str, Any]] = []
    out = Path(__file__).parent / "results" / f"optimizer{'-' + args.name if args.name else ''}.json"
    out.parent.mkdir(exist_ok=True)
    spawn = multiprocessing.get_context("spawn")
    for item in todo:
        # one fresh process per instance: its peak memory is its own
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            row = pool.submit(run_fresh, item, args.time_limit, args.workers, args.deterministic).result()
        rows.append(row)
        print(show(row), flush=True)
        if row.get("paper_cost"):
            print(f"    cost {row['ilp_cost']:.2f} (makespan {row['makespan']:.2f}) against the authors' "
                  f"{row['paper_cost']:.2f} at {row['limit'] * row['p']:g} M_B", flush=True)
        if args.scale and row["status"] != "ERROR":
            print("    wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in row["phases"].items()), flush=True)
        # written after every instance, so a long suite that is stopped keeps what it measured
        out.write_text(json.dumps({"time_limit": args.time_limit, "workers": args.workers,
                                   "clock": "deterministic" if args.deterministic else "wall", "rows": rows},
                                  indent=1))
    done = [r for r in rows if r["status"] != "ERROR"]
    if done:
        worse = sum(1 for r in done if r["ilp_cost"] > r["heuristic_cost"] + 1e-9)
        better = sum(1 for r in done if r["ilp_cost"] < r["heuristic_cost"] - 1e-9)
        proved = sum(1 for r in done if r["status"] == "OPTIMAL")
        under1 = sum(1 for r in done if r["gap"] < 0.01)
        print(f"{len(done)} instances: {better} improved on the best heuristic, {worse} worse, "
              f"{proved} proved optimal, {under1} with gap < 1%; {len(rows) - len(done)} errors; "
              f"wall time at most {max(r['wall_ratio'] for r in done):.3f} x the limit")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
