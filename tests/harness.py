"""Run ``schedlang`` commands one after another in one child process, under a memory cap.

The reliability tests feed hostile inputs to the command line. Each would be slow to run in a
process of its own (importing schedlang costs most of a second), and dangerous to run in the
test process (a regression could hang it or eat the machine's memory). So one child process,
started with ``RLIMIT_AS`` capped, reads one JSON request per line on stdin
(``{"argv": [...]}``), runs :func:`schedlang.cli.main` on it with stdout and stderr captured,
and answers one JSON line (``{"rc": ..., "out": ..., "err": ...}``). The parent,
:class:`Harness`, waits for each answer at most ``timeout`` seconds: a case that takes longer
is reported as a timeout, the child is killed, and the next case gets a fresh one.

Run as a script, this file is the child.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEEP = 20_000  # characters of each output sent back (the start and the end)


@dataclass(frozen=True)
class Result:
    """What one command did: its exit status and output, or a timeout."""

    rc: int | None  # None: it ran past the timeout and was killed
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


class Harness:
    """The parent side: start the child lazily, send cases, enforce the per-case timeout."""

    def __init__(self, memory_bytes: int = 3 << 30, cwd: str | None = None) -> None:
        self.memory_bytes = memory_bytes
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: tempfile._TemporaryFileWrapper[bytes] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONHASHSEED="0")
        self._stderr = tempfile.NamedTemporaryFile(prefix="harness-", suffix=".err")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.memory_bytes)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True, cwd=self.cwd,
                                     env=env, bufsize=1)
        return self.proc

    def run(self, argv: list[str], timeout: float = 30.0) -> Result:
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._start()
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps({"argv": argv}) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else ""
        if not line:
            died = proc.poll()
            self.close()
            if died is None:
                return Result(None, "", f"timed out after {timeout} s")
            return Result(-died if died < 0 else 1000 + died, "", f"the harness process died ({died})")
        answer = json.loads(line)
        return Result(answer["rc"], answer["out"], answer["err"])

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for f in (self.proc.stdin, self.proc.stdout):
                if f is not None:
                    f.close()
            self.proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _clip(text: str) -> str:
    return text if len(text) <= 2 * KEEP else text[:KEEP] + "\n[...]\n" + text[-KEEP:]


def _child(memory_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    from schedlang.cli import main

    answer_to = sys.stdout
    for line in sys.stdin:
        argv = json.loads(line)["argv"]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse's usage errors
                rc = exc.code if isinstance(exc.code, int) else 2
            except BaseException as exc:  # noqa: BLE001 - report anything that escaped main()
                rc = -1000
                err.write(f"harness: escaped main(): {type(exc).__name__}: {exc}\n")
        answer_to.write(json.dumps({"rc": rc, "out": _clip(out.getvalue()), "err": _clip(err.getvalue())}) + "\n")
        answer_to.flush()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
