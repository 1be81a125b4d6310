"""Fault handling: one rank's failure stops every rank, with a message naming rank and instruction.

A blocked ``torch.distributed`` receive cannot be interrupted from Python, so a rank that waits
for a peer that failed would hang until the process group's timeout (or forever on some
backends). :class:`FaultMonitor` prevents that:

- the failing rank publishes ``rank R failed at instruction K (...) in step N: error`` in the
  rendezvous key-value store (first writer wins) before it raises :class:`PipelineError`;
- every rank runs a watchdog thread that polls the store; when another rank's fault appears
  it prints ``rank Q stopping: <the fault>`` on stderr, records it in the store under
  ``exit/Q`` and ends the process with exit status 1 (``action="exit"``, the default), or only
  records it for the next instruction boundary (``action="raise"``);
- the watchdog also stops a rank whose current instruction runs longer than ``timeout`` seconds
  (a dead peer that published nothing, a deadlock), publishing that as the fault.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

__all__ = ["FaultMonitor", "PipelineError"]


class PipelineError(RuntimeError):
    """A pipeline step failed on some rank; the message names the rank and the instruction.

    Raised on the rank where the failure happened, ``origin`` holds what failed:
    ``{"rank", "instruction" (index in the stream, or None), "instr" (its text), "step",
    "error" ("ExceptionType: message")}``; on a rank stopping for another's fault it is None.
    """

    def __init__(self, message: str, origin: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.origin = origin


class FaultMonitor:
    """Publishes this rank's fault and watches for others' (see the module docstring).

    ``store`` is a ``torch.distributed.Store`` shared by all ranks (None: only the local stall
    timeout works). ``prefix`` separates runners that share one store.
    """

    def __init__(self, store: Any, rank: int, *, prefix: str = "schedlang", timeout: float = 60.0,
                 action: str = "exit", poll: float = 0.05) -> None:
        if action not in ("exit", "raise"):
            raise ValueError(f"fault action must be 'exit' or 'raise', not {action!r}")
        self.store = store
        self.rank = rank
        self.prefix = prefix
        self.timeout = timeout
        self.action = action
        self.poll = poll
        self.foreign: str | None = None
        self._current: tuple[float, str] | None = None
        self._own = False
        self.was_first = True  # set by publish()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- keys ---------------------------------------------------------------------------

    @property
    def fault_key(self) -> str:
        return f"{self.prefix}/fault"

    def exit_key(self, rank: int) -> str:
        return f"{self.prefix}/exit/{rank}"

    # -- the main thread's side ---------------------------------------------------------

    def start(self) -> None:
        """Start the watchdog thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"schedlang-watchdog-{self.rank}",
                                            daemon=True)
            self._thread.start()

    def begin(self, what: str) -> None:
        """The main thread starts ``what`` (an instruction description); the stall clock runs."""
        self._current = (time.monotonic(), what)

    def end(self) -> None:
        """The main thread finished its current instruction."""
        self._current = None

    def check(self) -> None:
        """Raise :class:`PipelineError` if another rank failed (``action="raise"``)."""
        if self.foreign is not None:
            raise PipelineError(f"rank {self.rank} stopping: {self.foreign}")

    def publish(self, message: str) -> str:
        """Publish this rank's fault; return the fault to report (an earlier one wins).
        :attr:`was_first` says afterwards whether this rank's fault was the first published: a
        rank that fails because another one already did (a closed connection, say) is not the
        origin of the failure."""
        self._own = True
        self.was_first = True
        if self.store is None:
            return message
        try:
            if int(self.store.add(f"{self.prefix}/fault_count", 1)) == 1:
                self.store.set(self.fault_key, message)
                return message
            self.was_first = False
            first = self._read_fault(wait=2.0)
        except Exception:  # the store may be gone with the failed rank
            return message
        return message if first is None or first == message else f"{first} (then: {message})"

    def close(self) -> None:
        """Stop the watchdog thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.poll + 1)
            self._thread = None

    # -- the watchdog ---------------------------------------------------------------------

    def _read_fault(self, wait: float = 0.0) -> str | None:
        deadline = time.monotonic() + wait
        while True:
            if self.store.check([self.fault_key]):
                return bytes(self.store.get(self.fault_key)).decode()
            if time.monotonic() >= deadline:
                return None
            time.sleep(self.poll)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            if self._own:
                continue  # this rank failed itself: its main thread reports
            current = self._current
            if current is not None and time.monotonic() - current[0] > self.timeout:
                message = (f"rank {self.rank}: {current[1]} did not finish within "
                           f"{self.timeout:g} s (a peer died or the streams stall)")
                self._stop_process(self.publish(message))
                return
            if self.store is None:
                continue
            try:
                fault = self._read_fault()
            except Exception as exc:  # lost the store: its host (a rank or the launcher) died
                self._stop_process(f"lost contact with the rendezvous store ({exc})")
                return
            if fault is not None and not self._own:
                self._stop_process(fault)
                return

    def _stop_process(self, fault: str) -> None:
        self.foreign = fault
        if self.action != "exit":
            return
        line = f"rank {self.rank} stopping: {fault}"
        print(f"schedlang runtime: {line}", file=sys.stderr, flush=True)
        try:
            if self.store is not None:
                self.store.set(self.exit_key(self.rank), line)
        except Exception:
            pass
        sys.stdout.flush()
        os._exit(1)
