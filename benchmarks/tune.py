"""``schedlang tune`` on the bundled GPT with 4 processes, and how far its profiles can be trusted.

Two parts, both on this machine's CPU (gloo):

1. Profile stability: ``--profiles`` back-to-back profiles (default 10) of the bundled GPT for
   4 stages (``schedlang.api.profile``, 1 thread, the default warm-up, repeats and minimum time).
   For each figure (stage x tf/tb/tw/tbw) the spread of the medians over the profiles, ``max/min - 1``, and
   how many of the figures the tool itself warned about (robust coefficient of variation above
   10% within one profile).
2. Tune: :func:`schedlang.api.tune` with ``nproc=4`` (model built for 8 stages, automatic
   partition, ``--mem-limit`` in activation units, optimizer ``--time-limit``): the table the
   command prints, and two checks: the measured step time of the choice against 1F1B's measured
   in the same run, and, for every pair of candidates that ran whose predicted step times differ
   by more than 10%, whether the measured times rank them the same way (also counted without the
   pairs that hold 1F1B: calibrated, its prediction is fitted to its own first run).

Prints both tables and writes benchmarks/results/tune.json.

    python benchmarks/tune.py [--nproc 4] [--profiles 10] [--steps 6] [--top 5] [--rounds 3] [--time-limit 10]
                              [--no-calibrate]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any


def profile_stability(count: int, repeats: int, warmup: int, min_time: float) -> dict[str, Any]:
    """Spread of ``count`` back-to-back profiles' medians, per stage and figure."""
    from schedlang.kernels.profile import TIME_NAMES, noisy_figures

    from schedlang import api

    prog = api.load("std:1f1b", p=4, m=8)
    runs = []
    warned = 0
    for k in range(count):
        prof = api.profile(prog, repeats=repeats, warmup=warmup, min_time=min_time)
        runs.append([{n: r[n] for n in TIME_NAMES} for r in prof.stages])
        warned += len(noisy_figures(list(prof.stages), 0.1))
        print(f"  profile {k + 1}/{count}: tf {[round(r['tf'], 3) for r in runs[-1]]}", file=sys.stderr)
    figures = []
    for s in range(len(runs[0])):
        for name in TIME_NAMES:
            values = [run[s][name] for run in runs]
            lo, hi = min(values), max(values)
            spread = (hi / lo - 1) if lo > 0 else (0.0 if hi == 0 else math.inf)
            figures.append({"stage": s, "name": name, "min": lo, "max": hi, "spread": spread})
    return {"profiles": count, "figures": figures, "warned_figures": warned,
            "within_10pct": sum(1 for f in figures if f["spread"] <= 0.1), "total": len(figures)}


def ranking(cands: list[dict[str, Any]], margin: float = 0.1) -> dict[str, Any]:
    """Pairs of run candidates whose predictions differ by more than ``margin``: how many the
    measurements order the same way."""
    ran = [c for c in cands if c["measured_ms"] is not None]
    pairs = []
    for a, b in itertools.combinations(ran, 2):
        pa, pb = a["predicted_ms"], b["predicted_ms"]
        if abs(pa - pb) <= margin * min(pa, pb):
            continue
        agree = (pa < pb) == (a["measured_ms"] < b["measured_ms"])
        pairs.append({"a": a["name"], "b": b["name"], "agree": agree})
    free = [p for p in pairs if "1f1b" not in (p["a"], p["b"])]
    return {"pairs": pairs, "agree": sum(p["agree"] for p in pairs), "total": len(pairs),
            "agree_without_1f1b": sum(p["agree"] for p in free), "total_without_1f1b": len(free)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, default=4)
    ap.add_argument("--profiles", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.1)
    ap.add_argument("--cores", type=float, default=None, help="as schedlang tune --cores (default: detected)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-calibrate", dest="calibrate", action="store_false")
    ap.add_argument("--mem-limit", type=float, default=math.inf)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tune.json"))
    args = ap.parse_args(argv)

    from schedlang import api
    from schedlang.cli.tune import render_table

    t0 = time.monotonic()
    print(f"profile stability: {args.profiles} back-to-back profiles, bundled GPT, 4 stages", file=sys.stderr)
    stab = profile_stability(args.profiles, args.repeats, args.warmup, args.min_time)
    print(f"\nProfile stability ({stab['profiles']} profiles): spread of the medians, max/min - 1")
    for f in stab["figures"]:
        print(f"  stage {f['stage']} {f['name']}: {f['min']:.3f} .. {f['max']:.3f} ms  "
              f"spread {100 * f['spread']:.0f}%")
    print(f"  within 10%: {stab['within_10pct']} of {stab['total']} figures; "
          f"figures warned about (cv > 10% within a profile): {stab['warned_figures']}")

    def progress(line: str) -> None:
        print(f"[tune {time.monotonic() - t0:6.1f}s] {line}", file=sys.stderr, flush=True)

    res = api.tune(nproc=args.nproc, steps=args.steps, top=args.top, rounds=args.rounds, mem_limit=args.mem_limit,
                   time_limit=args.time_limit, repeats=args.repeats, warmup=args.warmup, min_time=args.min_time,
                   cores=args.cores, calibrate=args.calibrate, progress=progress)
    doc = res.as_dict()
    print(f"\nschedlang tune --nproc {args.nproc} (bundled GPT built for {2 * args.nproc} stages, automatic partition)")
    sys.stdout.write(render_table(res))
    for note in res.notes:
        print(f"note: {note}")
    base = next(c for c in res.candidates if c.name == "1f1b")
    chosen = res.chosen
    rank = ranking(doc["candidates"])
    checks = {
        "chosen": chosen.name if chosen else None,
        "chosen_ms": chosen.measured_ms if chosen else None,
        "one_f_one_b_ms": None if math.isnan(base.measured_ms) else base.measured_ms,
        "chosen_at_or_below_1f1b": bool(chosen and not math.isnan(base.measured_ms)
                                        and chosen.measured_ms <= base.measured_ms),
        "ranking": rank,
    }
    print(f"choice {checks['chosen']}: {checks['chosen_ms']:.2f} ms measured; 1F1B "
          f"{checks['one_f_one_b_ms']:.2f} ms; at or below: {checks['chosen_at_or_below_1f1b']}")
    print(f"predicted ranking vs measured, pairs predicted more than 10% apart: {rank['agree']} of "
          f"{rank['total']} agree ({rank['agree_without_1f1b']} of {rank['total_without_1f1b']} without 1F1B, "
          "whose prediction is fitted when calibrated)")
    for p in rank["pairs"]:
        print(f"  {p['a']} vs {p['b']}: {'agree' if p['agree'] else 'DISAGREE'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "profile_stability": stab, "tune": doc, "checks": checks,
                               "elapsed_s": time.monotonic() - t0}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
