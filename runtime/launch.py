"""Start pipeline worker processes on one machine (tests, benchmarks, ``schedlang run --launcher spawn``).

:func:`spawn` starts ``nproc`` independent processes (the ``spawn`` start method), hosts the
rendezvous store in the parent (so it outlives any worker), initialises a process group in each
worker and calls ``fn(rank, world_size, *args)``. Unlike ``torch.multiprocessing.spawn`` it does
not kill the other workers when one fails: each worker must stop by itself, which is what the
runtime's fault handling guarantees. It returns one :class:`RankResult` per rank: exit code,
returned value, and the worker's stderr (captured to a file).

:func:`p2p_seconds` measures what one point-to-point message of a given size costs between two
such workers (half a ping-pong's round trip, median over repeats): the communication time a
schedule's simulation adds to every edge between ranks.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import queue
import socket
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RankResult", "SpawnError", "free_port", "init_worker", "p2p_seconds", "spawn"]


@dataclass
class RankResult:
    """How one worker ended."""

    rank: int
    exitcode: int | None
    value: Any = None
    error: str | None = None
    stderr: str = ""
    seconds: float = 0.0


class SpawnError(RuntimeError):
    """Some worker failed or timed out; ``results`` has every rank's outcome."""

    def __init__(self, message: str, results: list[RankResult]) -> None:
        super().__init__(message)
        self.results = results


def free_port() -> int:
    """A TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_worker(rank: int, world_size: int, host: str, port: int, *, backend: str = "gloo",
                timeout: float = 60.0) -> None:
    """Join the process group whose store the parent hosts at ``host:port``."""
    import torch.distributed as dist

    store = dist.TCPStore(host, port, world_size, is_master=False,
                          timeout=datetime.timedelta(seconds=timeout))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))


def _child(rank: int, world_size: int, host: str, port: int, backend: str, timeout: float,
           threads: int, fn: Callable[..., Any], args: Sequence[Any], results: Any, logdir: str) -> None:
    err = os.open(os.path.join(logdir, f"rank{rank}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(err, 2)
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    code = 0
    try:
        init_worker(rank, world_size, host, port, backend=backend, timeout=timeout)
        value = fn(rank, world_size, *args)
        # plain pickle bytes: torch's queue reducers share tensors through file descriptors,
        # which die with this process
        results.put((rank, pickle.dumps(value), None))
    except BaseException as exc:  # report every failure to the parent, then exit non-zero
        traceback.print_exc()
        results.put((rank, None, f"{type(exc).__name__}: {exc}"))
        code = 1
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass
    results.close()
    results.join_thread()
    os._exit(code)


def spawn(fn: Callable[..., Any], nproc: int, args: Sequence[Any] = (), *, backend: str = "gloo",
          timeout: float = 60.0, join_timeout: float = 300.0, threads: int = 1,
          check: bool = True) -> list[RankResult]:
    """Run ``fn(rank, nproc, *args)`` in ``nproc`` fresh processes; return per-rank results.

    ``fn`` and ``args`` must be picklable (a module-level function). ``timeout`` is the process
    group's timeout; ``join_timeout`` bounds the whole run (stragglers are killed and reported).
    With ``check`` a failed or killed worker raises :class:`SpawnError`.
    """
    import torch.distributed as dist

    ctx = mp.get_context("spawn")
    store = dist.TCPStore("127.0.0.1", 0, nproc, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout))
    port = store.port
    results_q = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="schedlang-spawn-") as logdir:
        procs = [ctx.Process(target=_child, args=(r, nproc, "127.0.0.1", port, backend, timeout, threads,
                                                  fn, tuple(args), results_q, logdir), daemon=False)
                 for r in range(nproc)]
        start = time.monotonic()
        for p in procs:
            p.start()
        out = {r: RankResult(r, None) for r in range(nproc)}
        ended: dict[int, float] = {}
        deadline = start + join_timeout
        while time.monotonic() < deadline:
            _drain(results_q, out)
            for r, p in enumerate(procs):
                if r not in ended and p.exitcode is not None:
                    ended[r] = time.monotonic() - start
            if len(ended) == nproc:
                break
            time.sleep(0.02)
        _drain(results_q, out)
        for r, p in enumerate(procs):
            if p.is_alive():
                p.kill()
                out[r].error = out[r].error or f"killed after {join_timeout:g} s"
            p.join()
            out[r].exitcode = p.exitcode
            out[r].seconds = ended.get(r, time.monotonic() - start)
            err_file = Path(logdir, f"rank{r}.err")  # absent if the process died before opening it
            out[r].stderr = err_file.read_text(errors="replace") if err_file.exists() else "(no output)"
    del store
    results = [out[r] for r in range(nproc)]
    failed = [r for r in results if r.exitcode != 0]
    if check and failed:
        detail = "\n".join(f"rank {r.rank}: exit {r.exitcode}: {r.error or ''}\n{r.stderr[-3000:]}" for r in failed)
        raise SpawnError(f"{len(failed)} of {nproc} workers failed:\n{detail}", results)
    return results


def _drain(q: Any, out: dict[int, RankResult]) -> None:
    while True:
        try:
            rank, value, error = q.get_nowait()
        except queue.Empty:
            return
        out[rank].value = pickle.loads(value) if value is not None else None
        out[rank].error = error


def _ping_pong(rank: int, world_size: int, nbytes: int, repeats: int, warmup: int, spin: float) -> float:
    """Rank 0 sends ``nbytes`` to rank 1 and gets them back, ``warmup + repeats`` times; the
    median one-way time (half the round trip) over the timed ones, in seconds. Ranks 2 and up
    compute (small matrix products) for ``spin`` seconds meanwhile, as a pipeline's other ranks
    would."""
    import torch
    import torch.distributed as dist

    if rank >= 2:
        a = torch.randn(64, 64)
        a = torch.tanh(a @ a)  # warm: the first product initialises the math library
        dist.barrier()
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            a = torch.tanh(a @ a)
        return 0.0
    buf = torch.zeros(max(1, nbytes // 4), dtype=torch.float32)
    peer = 1 - rank
    times = []
    dist.barrier()
    if world_size > 2:
        time.sleep(0.05)  # the others are computing by now
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        if rank == 0:
            dist.send(buf, peer)
            dist.recv(buf, peer)
        else:
            dist.recv(buf, peer)
            dist.send(buf, peer)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times)) / 2


def p2p_seconds(nbytes: int, *, busy: int = 0, repeats: int = 30, warmup: int = 5, samples: int = 1,
                backend: str = "gloo", timeout: float = 60.0) -> float:
    """One message of ``nbytes`` from one worker process to another on this machine, in seconds
    (median of ``repeats`` ping-pongs after ``warmup``, halved), while ``busy`` more processes
    compute. On a virtual machine a message to a process whose processor went idle can take
    milliseconds to wake it; with the processors kept busy (more pipeline ranks than cores) it
    takes tens of microseconds, so measure under the load the run will have. ``samples`` > 1
    repeats the whole measurement in fresh processes and keeps the median (where the processes
    land decides which of those two figures one measurement sees)."""
    if nbytes < 0 or busy < 0 or repeats < 1 or warmup < 0 or samples < 1:
        raise ValueError("p2p_seconds needs nbytes >= 0, busy >= 0, repeats >= 1, warmup >= 0 and samples >= 1")
    # the others compute for longer than the ping-pongs take (about 2 ms each at worst here)
    spin = 0.5 + 0.01 * (repeats + warmup)
    values = [float(spawn(_ping_pong, 2 + busy, (nbytes, repeats, warmup, spin), backend=backend, timeout=timeout,
                          join_timeout=4 * timeout)[0].value) for _ in range(samples)]
    return float(statistics.median(values))
