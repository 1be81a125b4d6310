"""``schedlang run`` with a user's model, end to end: the documented examples run as written,
and a rank that fails mid-run is reported once, with its rank and instruction.

The examples are the ```shell blocks of docs/models.md and README.md that pass ``--model``:
each ``$ cd`` and ``$ schedlang ...`` line runs as written (``schedlang`` as
``python -m schedlang``) in a copy of examples/, without ``PYTHONPATH``: a model module is
found in the folder the command runs from.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

from schedlang import api  # noqa: E402
from schedlang.source import SchedlangError  # noqa: E402

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "models.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(path: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(path.read_text(encoding="utf-8")) if kind == lang]


# README's quick example is also docs/models.md's first block: it runs once
SHELL = list({body: (path.name, body) for path in (ROOT / "README.md", DOC) for body in _blocks(path, "shell")
              if "--model" in body}.values())


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _schedlang(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "schedlang", *argv], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=300)


def test_the_examples_are_the_files_shown() -> None:
    shown = [b for b in _blocks(DOC, "python") if b.startswith("# examples/models/")]
    assert len(shown) == 4
    for body in shown:
        first, rest = body.split("\n", 1)
        assert rest == (ROOT / first[2:]).read_text(encoding="utf-8"), f"docs/models.md shows {first[2:]} differently"
    readme = [b for b in _blocks(ROOT / "README.md", "shell") if "--model" in b]
    assert readme and all(b in [body for _, body in SHELL] for b in readme)


@pytest.mark.parametrize(("doc", "body"), SHELL, ids=[f"{n}:{i}" for i, (n, _) in enumerate(SHELL)])
def test_documented_commands_run_as_written(doc: str, body: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    cwd = tmp_path
    for line in body.splitlines():
        assert line.startswith("$ "), f"{doc}: a shell block holds only '$ ' commands"
        argv = shlex.split(line[2:])
        if argv[0] == "cd":
            cwd = (cwd / argv[1]).resolve()
            continue
        assert argv[0] == "schedlang", f"{doc}: {line}"
        out = _schedlang(argv[1:], cwd)
        assert out.returncode == 0, f"{doc}: {line}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr
        if argv[1] == "run":
            steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 10
            losses = re.findall(r"^step +(\d+): loss [0-9.]+$", out.stdout, re.M)
            assert [int(s) for s in losses] == list(range(1, steps + 1)), out.stdout
        if "-o" in argv:
            assert (cwd / argv[argv.index("-o") + 1]).read_text(encoding="utf-8").count("tf=") == 1


FLAKY = """\
import torch.distributed as dist
from torch import nn


class Flaky(nn.Module):
    \"\"\"A linear layer that raises in rank 1's fourth forward (the check before launch has no ranks).\"\"\"

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if dist.is_initialized() and dist.get_rank() == 1 and self.calls == 4:
            raise ValueError("boom: injected failure")
        return self.lin(x)


def make(num_stages, num_microbatches):
    return [nn.Linear(4, 4), Flaky(), nn.Linear(4, 3)]
"""

# the rank's first call is the executor's shape probe, then step 1's two forwards: the fourth is
# step 2's first forward, instruction 1 of rank 1's 1F1B stream (after its receive)
REPORT = re.compile(r"schedlang: error: run failed: rank 1, instruction 1: ValueError: boom: injected failure "
                    r"\(F stage=1 mb=0, step 2\); the workers' output is in (\S+\.log)\n")


def test_a_rank_failing_under_torchrun_is_reported_once(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY, encoding="utf-8")
    out = _schedlang(["run", "std:1f1b", "--set", "p=2", "--set", "m=2", "--model", "flaky:make",
                      "--steps", "3", "--timeout", "30"], tmp_path)
    assert out.returncode == 1
    match = REPORT.fullmatch(out.stderr)
    assert match, out.stderr
    log = Path(match.group(1))
    try:
        text = log.read_text(encoding="utf-8")
        # torchrun's own report and every rank's line are there, out of the way
        assert "ChildFailedError" in text and "rank 0 stopping: rank 1 failed at instruction 1" in text
    finally:
        log.unlink()
    assert re.findall(r"^step +\d+: loss", out.stdout, re.M) == ["step   1: loss"]


def test_a_rank_failing_under_spawn_is_reported_once_through_the_api(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "flaky_api.py").write_text(FLAKY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SchedlangError) as info:
        api.run(api.compile("std:1f1b", p=2, m=2), model="flaky_api:make", steps=3, launcher="spawn", timeout=30)
    match = REPORT.fullmatch(str(info.value) + "\n")
    assert match, str(info.value)
    assert "Traceback" in Path(match.group(1)).read_text(encoding="utf-8")  # the rank's own traceback
    Path(match.group(1)).unlink()


def test_the_api_runs_a_model_split_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "named.py").write_text(textwrap.dedent("""\
        import torch
        from torch import nn
        from schedlang.runtime.models import ModelSpec

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(4))
                self.out = nn.Linear(6, 5)

            def forward(self, x):
                for layer in self.layers:
                    x = torch.relu(layer(x))
                return self.out(x)

        def make(num_stages, num_microbatches):
            return ModelSpec(model=Net(), example=torch.zeros(2 * num_microbatches, 6))
        """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = api.run(api.compile("std:zb-h1", p=2, m=2), model="named:make", split="layers.2", steps=2,
                     launcher="spawn", timeout=30, threads=2)
    assert len(result.losses) == 2 and all(loss > 0 for loss in result.losses)
    assert result.measured["steps"] == 1 and 0 <= result.measured["bubble_rate"] < 1
    assert result.measured["threads"] == [2, 2]  # each worker ran with the threads asked for
    with pytest.raises(SchedlangError, match="--threads must be between 1 and 1024, not 0"):
        api.run(api.compile("std:zb-h1", p=2, m=2), model="named:make", split="layers.2", threads=0)


def test_a_factory_that_builds_other_weights_in_each_process_is_refused(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nondeterministic.py").write_text(textwrap.dedent("""\
        import os
        import torch
        from torch import nn

        def make(num_stages, num_microbatches):
            torch.manual_seed(os.getpid())  # a different model in every process
            return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3))
        """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SchedlangError) as info:
        api.run(api.compile("std:1f1b", p=2, m=2), model="nondeterministic:make", steps=1, launcher="spawn")
    match = re.fullmatch(r"schedlang: error: run failed: rank 0: ModelError: model nondeterministic:make: rank 0 "
                         r"built other initial weights than the launching process checked; the factory must "
                         r"build the same model every time it is called \(intake seeds torch's generator; seed "
                         r"any other randomness yourself\); the workers' output is in (\S+\.log)", str(info.value))
    assert match, str(info.value)
    Path(match.group(1)).unlink()
