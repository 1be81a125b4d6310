"""Replay ``schedlang tune``'s predictions on recorded runs: before and after calibration.

A record is what ``benchmarks/tune.py`` writes: the profiled stages of both partitions, the
message time measured alone, and every candidate's predicted and measured step. The replay
schedules every candidate again on those costs (as :func:`schedlang.api.tune` does: the same
candidates, the record's process count p, m = 2p, no memory limit), checks that its predictions are the recorded ones,
then calibrates on 1F1B's first round as the tune of today does (a scale and a fixed cost per op
fitted to 1F1B's op times where the record kept them, else the busiest rank's compute for the
scale; then a message time by bisection) and re-predicts every candidate in its own orders (a
record of a calibrated run must be reproduced there too).
For each record it prints the candidates (prediction before, calibrated, measured) and, for the
candidates that ran, how many pairs predicted more than 10% apart the measurements order the same
way, before and after (and without the pairs that hold 1F1B, whose calibrated prediction is
fitted to its own run). Writes ``benchmarks/results/tune_replay.json`` (or ``--out``).

Records made before the runs kept each step's compute (``measured_busy_steps_ms``) give only
the median over all rounds, which the replay then uses for the scale. The records from one
H100 machine's host (16 cores, gloo, 4 processes: the bundled GPT) are in ``benchmarks/data``:

    python benchmarks/tune_replay.py benchmarks/data/tune-*.json [--no-optimizer] [--out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "tune_replay.json"


def _pairs(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ran = [r for r in rows if r["measured_ms"] is not None]
    out = []
    for a, b in itertools.combinations(ran, 2):
        pa, pb = a[key], b[key]
        if abs(pa - pb) > 0.1 * min(pa, pb):
            out.append({"a": a["name"], "b": b["name"], "agree": (pa < pb) == (a["measured_ms"] < b["measured_ms"])})
    free = [p for p in out if "1f1b" not in (p["a"], p["b"])]
    return {"agree": sum(p["agree"] for p in out), "total": len(out),
            "agree_without_1f1b": sum(p["agree"] for p in free), "total_without_1f1b": len(free),
            "disagree": [f"{p['a']} / {p['b']}" for p in out if not p["agree"]]}


def replay(path: str, optimizer: bool = True) -> dict[str, Any]:
    """Re-predict one record's candidates before and after calibration (see the module docstring)."""
    from schedlang import api
    from schedlang import tune as T

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    tuned = doc["tune"]
    profiles = {int(v): SimpleNamespace(stages=p["stages"], cuts=p["cuts"], layers_from=p["layers_from"])
                for v, p in tuned["partitions"].items()}
    unit = float(profiles[1].stages[0]["mem_f"])
    recorded = {c["name"]: c for c in tuned["candidates"]}
    calib = tuned.get("calibration") or {}
    tc = calib.get("message_alone_ms")
    rel = 1e-9
    if tc is None:  # records before calibration noted the message time only in words (4 decimals)
        tc = float(next(n for n in tuned["notes"] if n.startswith("communication:")).split()[1])
        rel = 1e-3  # a message time rounded by at most 5e-5 ms moves a 15 ms step by about 1e-3 ms
    nproc = int(doc.get("args", {}).get("nproc", 4))
    m = 2 * nproc  # tune's default microbatches
    cands = [T.Candidate(n, p, s, v) for n, p, s, v in T.candidate_specs(nproc, math.inf, 10.0, optimizer)
             if v in profiles]
    for c in cands:
        api._tune_schedule(c, profiles[c.v], unit, tc, nproc, m, math.inf, None)
    ok = [c for c in cands if not c.error]
    before = {c.name: c.predicted_ms for c in ok}
    base = next(c for c in ok if c.name == "1f1b")
    rec = recorded["1f1b"]
    # the timed steps of one run: all but the first of --steps (6 unless the record says)
    steps = int(doc.get("args", {}).get("steps", 6)) - 1
    base.measured_ms = statistics.median(rec["measured_steps_ms"][:steps])
    busy_steps = rec.get("measured_busy_steps_ms") or []
    base.measured_busy_ms = statistics.median(busy_steps[:steps]) if busy_steps else rec["measured_busy_ms"]
    notes: list[str] = []
    # calibration needs a core per rank: replayed so, whatever the machine the record came from
    base.op_samples = [tuple(x) for x in calib.get("op_samples") or []]  # a record that kept them
    fit = api._tune_calibrate(ok, base, tc, nproc, None, notes, lambda _line: None)
    rows = []
    for c in sorted(ok, key=lambda c: c.predicted_ms):
        r = recorded.get(c.name, {})
        live = r.get("predicted_before_calibration_ms")  # a record of a calibrated run
        rows.append({"name": c.name, "recorded_ms": live if live is not None else r.get("predicted_ms"),
                     "recorded_calibrated_ms": r.get("predicted_ms") if live is not None else None,
                     "before_ms": before[c.name], "calibrated_ms": c.predicted_ms,
                     "measured_ms": r.get("measured_ms")})
    # the optimizer's orders depend on its clock: left out of the comparison
    same = all(r["recorded_ms"] is not None and math.isclose(r["before_ms"], r["recorded_ms"], rel_tol=rel)
               and (r["recorded_calibrated_ms"] is None
                    or math.isclose(r["calibrated_ms"], r["recorded_calibrated_ms"], rel_tol=1e-6))
               for r in rows if r["name"] != "optimizer")
    return {"record": path, "message_alone_ms": tc, "message_ms": fit.message_ms, "compute_scale": fit.scale,
            "op_overhead_ms": fit.overhead_ms,
            "first_round_1f1b_ms": base.measured_ms, "reproduces_recorded": same, "rows": rows,
            "before": _pairs(rows, "before_ms"), "calibrated": _pairs(rows, "calibrated_ms"),
            "abs_errors_pct": {k: [abs(100 * (r[k] - r["measured_ms"]) / r["measured_ms"]) for r in rows
                                   if r["measured_ms"] is not None and r["name"] != "1f1b"]
                               for k in ("before_ms", "calibrated_ms")}}


def _err(pred: float, meas: float | None) -> str:
    return "     -" if meas is None else f"{100 * (pred - meas) / meas:+5.0f}%"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", nargs="+")
    ap.add_argument("--no-optimizer", dest="optimizer", action="store_false",
                    help="leave the CP-SAT candidate out (its orders depend on its time limit)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    results = []
    totals = {k: [0, 0, 0, 0] for k in ("before", "calibrated")}
    for path in args.records:
        res = replay(path, args.optimizer)
        results.append(res)
        print(f"{path}: a message {res['message_alone_ms']:.4f} ms alone -> {res['message_ms']:.4f} ms in a run, "
              f"ops x {res['compute_scale']:.3f} + {res['op_overhead_ms']:.4f} ms; replay reproduces the recorded "
              "predictions: "
              f"{res['reproduces_recorded']}")
        print(f"  {'schedule':18s} {'before':>8s} {'err':>6s} {'calibr.':>8s} {'err':>6s} {'measured':>9s}")
        for r in res["rows"]:
            meas = "-" if r["measured_ms"] is None else f"{r['measured_ms']:.2f}"
            print(f"  {r['name']:18s} {r['before_ms']:8.2f} {_err(r['before_ms'], r['measured_ms'])} "
                  f"{r['calibrated_ms']:8.2f} {_err(r['calibrated_ms'], r['measured_ms'])} {meas:>9s}")
        for k in ("before", "calibrated"):
            p = res[k]
            t = totals[k]
            t[0] += p["agree"]
            t[1] += p["total"]
            t[2] += p["agree_without_1f1b"]
            t[3] += p["total_without_1f1b"]
            print(f"  {k}: {p['agree']} of {p['total']} pairs agree ({p['agree_without_1f1b']} of "
                  f"{p['total_without_1f1b']} without 1F1B)" + (f"; disagree: {', '.join(p['disagree'])}"
                                                               if p["disagree"] else ""))
    for k, (a, n, af, nf) in totals.items():
        errs = [e for res in results for e in res["abs_errors_pct"][f"{k}_ms"]]
        mean = f"{statistics.mean(errs):.1f}%" if errs else "-"
        print(f"all records, {k}: {a} of {n} pairs agree ({af} of {nf} without 1F1B); mean |prediction error| "
              f"of the candidates run other than 1F1B: {mean} over {len(errs)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"records": results, "totals": totals}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if all(r["reproduces_recorded"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
