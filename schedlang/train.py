"""Train a model with a compiled schedule on real processes: what ``schedlang run`` and
:func:`schedlang.api.run` do.

:func:`check_run` validates everything once, in this process, before any worker starts: the
process count, the step count, and the model (the factory is imported and called, its stages
match the schedule's, the batch divides into the microbatches and one microbatch runs through
the stages on the CPU; :mod:`schedlang.runtime.intake`). Each mistake is one
:class:`~schedlang.source.SchedlangError` naming the factory.

:func:`run_program` then generates the streams, starts one worker per rank (torchrun:
``python -m torch.distributed.run --standalone``, or ``launcher="spawn"``), and gathers the
losses and timelines. The workers' standard error (torchrun's own messages included) goes to a
log file; a rank that fails is reported once, as ``rank R, instruction I: ExceptionType:
message``, with the log file's path. The log is removed after a successful run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schedlang.ir import Program
from schedlang.source import SchedlangError

__all__ = ["DEFAULT_MODEL", "CheckedModel", "RunResult", "check_model_for", "check_run", "run_program", "summarize_timelines"]

DEFAULT_MODEL = "schedlang.runtime.models:tiny_gpt"


@dataclass
class RunResult:
    """What a run gives back: the loss of every step and the measured bubble (steps after the first)."""

    losses: list[float]
    measured: dict[str, Any]
    simulated_bubble_rate: float
    events: list[Any] = field(default_factory=list)
    model: str = DEFAULT_MODEL


def _parts(program: Program) -> int:
    """Model parts: one per stage of a chain (Chimera's two chains run replicas of the same parts)."""
    from schedlang import isa
    from schedlang.codegen import stage_graph

    return len(isa.chains_of(program.num_stages, stage_graph(program))[0])


def _split_list(split: str | Sequence[str] | None) -> list[str] | None:
    if split is None:
        return None
    names = [s.strip() for s in split.split(",")] if isinstance(split, str) else [str(s).strip() for s in split]
    if not names or any(not n for n in names):
        raise SchedlangError(f"--split expects comma-separated module names, got {split!r}")
    return names


@dataclass
class CheckedModel:
    """A model that passed the checks: the prepared stages, a one-line summary, and the digest
    of its initial weights (the workers check that they built the same)."""

    prepared: Any
    summary: str
    fingerprint: str


def check_model_for(num_stages: int, num_microbatches: int, model: str,
                    split: str | Sequence[str] | None = None, *, split_backward: str = "autograd") -> CheckedModel:
    """Build the model for the pipeline's shape and run one microbatch through it.

    With ``split_backward="kernels"`` every stage with parameters must have layers the
    :mod:`schedlang.kernels` split layers replace. A mistake is a :class:`SchedlangError`
    naming the factory.
    """
    try:
        import torch  # noqa: F401
    except ModuleNotFoundError:
        raise SchedlangError("running a model needs torch: pip install 'schedlang[runtime]'") from None
    from schedlang.runtime.intake import ModelError, check_model, fingerprint, prepare_model

    try:
        prepared = prepare_model(model, num_stages, num_microbatches, _split_list(split))
        digest = fingerprint(prepared.stages)
        summary = check_model(prepared, num_microbatches)
    except ModelError as exc:
        raise SchedlangError(str(exc)) from None
    if split_backward == "kernels":
        _check_kernel_layers(model, prepared.stages)
    return CheckedModel(prepared, summary, digest)


def _check_kernel_layers(model: str, stages: Sequence[Any]) -> None:
    from torch import nn

    from schedlang.kernels.layers import split_modules

    plain = [s for s, st in enumerate(stages)
             if any(p.requires_grad for p in st.parameters()) and not any(split_modules(st))
             and not any(isinstance(m, (nn.Linear, nn.LayerNorm)) for m in st.modules())]
    if plain:
        raise SchedlangError(f"model {model}: --split-backward kernels splits nn.Linear and nn.LayerNorm "
                             f"layers, and stage{'s' if len(plain) > 1 else ''} {', '.join(map(str, plain))} "
                             "ha" + ("ve" if len(plain) > 1 else "s") + " none (a traced model's layers are "
                             "traced operations); use --split-backward autograd")


def check_run(program: Program, model: str = DEFAULT_MODEL, split: str | Sequence[str] | None = None, *,
              nproc: int | None = None, steps: int = 10, split_backward: str = "autograd") -> CheckedModel:
    """Everything :func:`run_program` checks before it starts a process."""
    if nproc is not None and nproc != program.num_ranks:
        raise SchedlangError(f"--nproc {nproc}, but the schedule has {program.num_ranks} ranks "
                             f"(set the program's rank parameter, e.g. --set p={nproc})")
    if steps < 1:
        raise SchedlangError("--steps must be at least 1")
    return check_model_for(_parts(program), program.num_microbatches, model, split, split_backward=split_backward)


def run_program(program: Program, model: str = DEFAULT_MODEL, split: str | Sequence[str] | None = None, *,
                steps: int = 10, nproc: int | None = None, launcher: str = "torchrun",
                split_backward: str = "autograd", prepost: int = 4, timeout: float = 60.0,
                trace: str | None = None, echo: bool = False) -> RunResult:
    """Check, then train ``model`` with the scheduled ``program`` on one process per rank.

    ``echo`` prints a header and each step's loss as the workers report it (``schedlang run``);
    without it nothing is printed. ``trace`` writes a Chrome/Perfetto trace of all ranks.
    A failed run raises :class:`SchedlangError` naming the failed rank and instruction and the
    log file that holds the workers' output.
    """
    from schedlang import isa
    from schedlang.codegen import codegen
    from schedlang.simulate import simulate

    if launcher not in ("torchrun", "spawn"):
        raise SchedlangError(f"unknown launcher '{launcher}' (torchrun, spawn)")
    checked = check_run(program, model, split, nproc=nproc, steps=steps, split_backward=split_backward)
    names = _split_list(split)
    streams = codegen(program)
    sim = simulate(program)
    with tempfile.TemporaryDirectory(prefix="schedlang-run-") as tmp:
        path = os.path.join(tmp, "streams.json")
        Path(path).write_text(isa.to_json(streams), encoding="utf-8")
        worker_args = ["--streams", path, "--model", model, "--steps", str(steps), "--out", tmp,
                       "--split-backward", split_backward, "--timeout", str(timeout), "--prepost", str(prepost),
                       "--fingerprint", checked.fingerprint]
        if names:
            worker_args += ["--split", ",".join(names)]
        if not echo:
            worker_args.append("--quiet")
        if echo:
            print(f"{program.name}: {program.num_ranks} ranks, {program.num_stages} stages, "
                  f"{program.num_microbatches} microbatches; {checked.summary}; {steps} steps", flush=True)
        fd, log = tempfile.mkstemp(prefix="schedlang-run-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as log_fh:
            if launcher == "torchrun":
                code = _launch_torchrun(program.num_ranks, worker_args, log_fh, echo)
            else:
                code = _launch_spawn(program.num_ranks, worker_args, timeout, log_fh)
        if code != 0:
            from schedlang.runtime.worker import read_faults

            what = read_faults(tmp) or f"the workers failed (exit status {code})"
            raise SchedlangError(f"run failed: {what}; the workers' output is in {log}")
        os.unlink(log)
        events, measured = summarize_timelines(tmp)
        losses = _losses(tmp)
    if trace:
        from schedlang.runtime.timeline import write_chrome_trace

        meta = {"program": program.name, "simulated_bubble_rate": sim.bubble_rate, **measured}
        try:
            write_chrome_trace(trace, events, meta)
        except OSError as exc:
            raise SchedlangError(f"cannot write '{trace}': {exc.strerror}") from None
    return RunResult(losses, measured, sim.bubble_rate, events, model)


def _launch_torchrun(nproc: int, worker_args: list[str], log: Any, echo: bool) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "schedlang.runtime.worker", *worker_args]
    # each worker runs as `python -m`, so this folder comes first on its path, as it does here
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = None if echo else log
    return subprocess.run(cmd, env=env, stdout=out, stderr=log).returncode


def _launch_spawn(nproc: int, worker_args: list[str], timeout: float, log: Any) -> int:
    from schedlang.runtime.launch import spawn
    from schedlang.runtime.worker import worker_main

    results = spawn(worker_main, nproc, (worker_args,), timeout=timeout, join_timeout=10 * timeout,
                    check=False)
    code = 0
    for r in results:
        log.write(f"----- rank {r.rank}: exit {r.exitcode} {r.error or ''}\n{r.stderr}\n")
        if r.exitcode != 0:
            code = 1
    return code


def _losses(out_dir: str) -> list[float]:
    for path in sorted(Path(out_dir).glob("rank*.json"), key=lambda p: int(p.stem[4:])):
        losses = json.loads(path.read_text(encoding="utf-8")).get("losses") or []
        if losses:
            return [float(x) for x in losses]
    return []


def summarize_timelines(out_dir: str) -> tuple[list[Any], dict[str, Any]]:
    """Read the workers' timelines; return all events and the measured bubble (steps after the first)."""
    from schedlang.runtime.timeline import Event, measured_bubble

    events: list[Event] = []
    for path in sorted(Path(out_dir).glob("rank*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        events.extend(Event.from_dict(e) for e in doc["events"])
    steps = sorted({e.step for e in events})
    measured = [measured_bubble([e for e in events if e.step == s]) for s in steps[1:] or steps]
    if not measured:
        return events, {}
    n = len(measured)
    return events, {
        "steps": n,
        "bubble_rate": sum(b.bubble_rate for b in measured) / n,
        "cost_s": sum(b.cost for b in measured) / n,
        "makespan_s": sum(b.makespan for b in measured) / n,
    }
