"""Asynchronous pipelines on the bundled GPT: loss against step for 1F1B, PipeDream and 2BW.

For each schedule (``std:1f1b``: synchronous, one optimizer step per window; ``std:pipedream``:
weight stashing, one update per microbatch and stage; ``std:pipedream-2bw``: double-buffered
weights, one update per ``every`` microbatches) the compiled streams train the bundled tiny GPT
(``schedlang.runtime.models:tiny_gpt``, Adam, its default learning rate) on ``p`` CPU processes
(gloo) for ``--steps`` steps of ``m`` microbatches each, from the same initial weights on the same
data; each step's loss (the mean over its microbatches) is recorded. Next to it: the simulated
time per microbatch at unit op times (``T_F = T_B = T_W = 1``, no communication), the window's
makespan divided by ``m`` for 1F1B (it drains every window) and the steady state of the
continuous stream for the flush-free schedules, with the weight versions each stage keeps.

Prints a table, writes benchmarks/results/async.json and draws the losses as SVG
(docs/img/async.svg by default). The losses are per step, not per update: PipeDream makes m
updates per step and 2BW m/every, so they are not a like-for-like comparison of optimizers
(staleness against update count); the figure shows what each schedule does to training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from schedlang import api, isa
from schedlang.codegen import codegen

SCHEDULES = (("1F1B", "std:1f1b"), ("PipeDream", "std:pipedream"), ("2BW", "std:pipedream-2bw"))
COLOURS = ("#1f77b4", "#d62728", "#2ca02c")


def simulated(name: str, p: int, m: int) -> dict[str, Any]:
    prog = api.compile(name, p=p, m=m, tf=1.0, tb=1.0, tw=1.0, tc=0.0)
    sim = api.simulate(prog)
    per_mb = sim.steady_time_per_mb if sim.steady_time_per_mb is not None else sim.makespan / m
    return {"weights": prog.weights.policy, "time_per_microbatch": per_mb,
            "throughput": 1.0 / per_mb, "peak_versions": list(sim.peak_versions) or [1] * p,
            "updates_per_step": _updates_per_step(prog)}


def _updates_per_step(prog: api.Program) -> int:
    from schedlang.weights import weight_plan

    plan = weight_plan(prog)
    return 1 if plan is None else len(plan.groups[0])


def train(name: str, p: int, m: int, steps: int) -> list[float]:
    from schedlang.runtime.launch import spawn
    from schedlang.runtime.worker import worker_main

    streams = codegen(api.compile(name, p=p, m=m))
    with tempfile.TemporaryDirectory(prefix="schedlang-async-") as tmp:
        path = str(Path(tmp) / "streams.json")
        Path(path).write_text(isa.to_json(streams), encoding="utf-8")
        argv = ["--streams", path, "--model", "schedlang.runtime.models:tiny_gpt", "--steps", str(steps),
                "--out", tmp, "--timeout", "120"]
        results = spawn(worker_main, p, (argv,), timeout=120, join_timeout=1800)
    bad = [r for r in results if r.exitcode != 0]
    if bad:
        raise SystemExit(f"{name}: rank {bad[0].rank} failed: {bad[0].error or bad[0].stderr[-500:]}")
    return next(r.value["losses"] for r in results if r.value and r.value["losses"])


def svg(rows: list[dict[str, Any]], steps: int) -> str:
    """Loss against step, one line per schedule, with the simulated throughput in the legend."""
    w, h, left, right, top, bottom = 640, 360, 56, 16, 24, 44
    lo = min(min(r["losses"]) for r in rows)
    hi = max(max(r["losses"]) for r in rows)
    span = hi - lo or 1.0

    def xy(step: int, loss: float) -> tuple[float, float]:
        x = left + (w - left - right) * (step - 1) / max(1, steps - 1)
        y = top + (h - top - bottom) * (hi - loss) / span
        return x, y

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
           f'font-size="12"><rect width="{w}" height="{h}" fill="white"/>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
           f'<text x="{(w + left) / 2}" y="{h - 8}" text-anchor="middle">step (window of microbatches)</text>',
           f'<text x="14" y="{(h - bottom + top) / 2}" transform="rotate(-90 14 {(h - bottom + top) / 2})" '
           'text-anchor="middle">loss</text>']
    for k in range(5):
        loss = hi - span * k / 4
        _, y = xy(1, loss)
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{loss:.2f}</text>')
    for k in (1, steps):
        x, _ = xy(k, lo)
        out.append(f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle">{k}</text>')
    for i, (r, colour) in enumerate(zip(rows, COLOURS, strict=False)):
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(s + 1, v) for s, v in enumerate(r["losses"])))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{pts}"/>')
        ly = top + 14 + 16 * i
        out.append(f'<line x1="{w - 300}" y1="{ly - 4}" x2="{w - 280}" y2="{ly - 4}" stroke="{colour}" '
                   'stroke-width="2"/>')
        out.append(f'<text x="{w - 274}" y="{ly}">{r["schedule"]}: {r["throughput"]:.3f} microbatches per '
                   f'unit time (simulated)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=4, help="pipeline ranks (processes)")
    ap.add_argument("--m", type=int, default=8, help="microbatches per step")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "async.json"))
    ap.add_argument("--svg", default=str(Path(__file__).parent.parent / "docs" / "img" / "async.svg"))
    args = ap.parse_args(argv)
    rows = []
    for label, name in SCHEDULES:
        row = {"schedule": label, "program": name, **simulated(name, args.p, args.m)}
        row["losses"] = train(name, args.p, args.m, args.steps)
        rows.append(row)
        print(f"{label}: done", file=sys.stderr, flush=True)
    head = f"{'schedule':<10} {'weights':<8} {'time/mb':>8} {'versions':<10} {'updates/step':>12} " \
           f"{'loss@1':>7} {'loss@' + str(args.steps // 2):>7} {'loss@' + str(args.steps):>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        ls = r["losses"]
        print(f"{r['schedule']:<10} {r['weights']:<8} {r['time_per_microbatch']:>8.3f} "
              f"{' '.join(map(str, r['peak_versions'])):<10} {r['updates_per_step']:>12} "
              f"{ls[0]:>7.4f} {ls[len(ls) // 2 - 1]:>7.4f} {ls[-1]:>7.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"p": args.p, "m": args.m, "steps": args.steps, "rows": rows}, indent=1),
                              encoding="utf-8")
    Path(args.svg).write_text(svg(rows, args.steps), encoding="utf-8")
    print(f"wrote {args.out} and {args.svg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
