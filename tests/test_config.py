"""``--config FILE`` (schedlang.config): the keys of the common 1F1B visualizer
(PP-Schedule-Visualization's ``pipeline.py``) and parameter names, from JSON or YAML.

- the visualizer's two sample configurations (a 6-stage JSON with per-stage times, a 5-stage
  YAML; tests/golden/config/) read as written, and std:1f1b on them gives the makespan of the
  visualizer's own timing rule (restated below: its 1F1B order, each op as soon as its stage is
  free and its inputs have arrived, p2p_time per hop);
- they render and simulate from the command line, the picture going to their output_file;
- a key the program does not have is an error that names the key, located at the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from schedlang.api import compile as compile_program
from schedlang.api import read_config_for
from schedlang.config import parse_config
from schedlang.simulate import simulate
from schedlang.source import SchedlangError

HERE = Path(__file__).parent / "golden" / "config"
JSON = HERE / "sample_config.json"
YAML = HERE / "sample_config.yaml"


def visualizer_makespan(n: int, m: int, fwd: list[float], bwd: list[float], p2p: float = 0.0) -> float:
    """The visualizer's 1F1B: stage s runs n - s forwards, then backward and forward in turn, then
    the remaining backwards; every op starts when its stage is free and its inputs are there."""
    seq = {}
    for s in range(n):
        warm = min(n - s, m)
        ops = [("F", j) for j in range(warm)]
        for j in range(warm, m):
            ops += [("B", j - warm), ("F", j)]
        ops += [("B", j) for j in range(m - warm, m)]
        seq[s] = ops
    end: dict[tuple[str, int, int], float] = {}
    free, pos = [0.0] * n, [0] * n
    while any(pos[s] < len(seq[s]) for s in range(n)):
        for s in range(n):
            while pos[s] < len(seq[s]):
                kind, j = seq[s][pos[s]]
                deps = ([("F", s - 1, j)] if kind == "F" and s > 0 else []) + (
                    [("F", s, j)] + ([("B", s + 1, j)] if s < n - 1 else []) if kind == "B" else [])
                if any(d not in end for d in deps):
                    break
                start = max([free[s]] + [end[d] + (p2p if d[1] != s else 0.0) for d in deps])
                free[s] = end[(kind, s, j)] = start + (fwd[s] if kind == "F" else bwd[s])
                pos[s] += 1
    return max(free)


@pytest.mark.parametrize("path", [JSON, YAML], ids=["json", "yaml"])
def test_sample_configs_as_written(path: Path) -> None:
    cfg = read_config_for(str(path), "std:1f1b")
    n, m = cfg.params["p"], cfg.params["m"]
    assert (n, m) == ((6, 12) if path == JSON else (5, 8))
    assert cfg.output == ("pipeline_1f1b_custom.png" if path == JSON else "pipeline_1f1b_yaml.png")
    fwd, bwd = list(cfg.params["tf"]), list(cfg.params["tbw"])  # type: ignore[arg-type]
    prog = compile_program("std:1f1b", params=cfg.params)
    assert {o.stage: o.time for o in prog.ops if o.kind == "BW"} == dict(enumerate(bwd))
    want = visualizer_makespan(n, m, fwd, bwd)  # type: ignore[arg-type]
    assert simulate(prog).makespan == pytest.approx(want)
    # with a comm time given by name, both agree too
    prog = compile_program("std:1f1b", params={**cfg.params, "tc": 0.25})
    assert simulate(prog).makespan == pytest.approx(visualizer_makespan(n, m, fwd, bwd, 0.25))  # type: ignore[arg-type]


def test_figures() -> None:
    # the numbers a reader of the visualizer's README gets from its two samples
    sims = [simulate(compile_program("std:1f1b", params=read_config_for(str(p), "std:1f1b").params))
            for p in (JSON, YAML)]
    assert [round(s.makespan, 6) for s in sims] == [55.8, 40.2]


def test_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    monkeypatch.chdir(tmp_path)
    for path, out in ((JSON, "pipeline_1f1b_custom.png"), (YAML, "pipeline_1f1b_yaml.png")):
        assert main(["render", "std:1f1b", "--config", str(path)]) == 0
        assert (tmp_path / out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert main(["simulate", "std:1f1b", "--config", str(path), "--json"]) == 0
        captured = capsys.readouterr()
        assert f"warning: output_file '{out}' is not used" in captured.err  # said, not dropped silently
    # --set wins over the config; -o wins over output_file
    assert main(["render", "std:1f1b", "--config", str(YAML), "--set", "m=4", "-o", "mine.svg"]) == 0
    assert "<svg" in (tmp_path / "mine.svg").read_text()
    assert main(["check", "std:1f1b", "--config", str(YAML), "--set", "m=4"]) == 0
    assert "5 ranks, 5 stages, 4 microbatches" in capsys.readouterr().out


def test_unknown_key_is_located(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from schedlang.cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "num_stages": 4,\n  "num_microbatches": 8\n}\n')
    assert main(["simulate", "std:1f1b", "--config", str(bad)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}:3:4: error: config key 'num_microbatches': 'std:1f1b' has no such parameter")
    with pytest.raises(SchedlangError) as info:
        read_config_for(str(YAML), "std:zb-h1")  # split B / W: no fused backward to set
    assert info.value.message.startswith("config key 'backward_times' sets 'tbw', the fused backward's time")
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == (10, 1)


@pytest.mark.parametrize(("name", "text", "where", "message"), [
    ("a.json", '{"num_stages": 4,\n "forward_times": }', (2, 19), "not valid JSON: Expecting value"),
    ("a.yaml", "num_stages: 4\nforward_times: [1, 2\n", (3, 1), "not valid YAML"),
    ("a.yaml", "forward_times:\n  0: 0.8\n  1: 1.2\n", (1, 1), "config key 'forward_times': a mapping is not"),
    ("a.yaml", "- 1\n- 2\n", (1, 1), "a config file holds one mapping"),
    ("a.json", '{"output_file": 3}', (1, 3), "config key 'output_file' must be a file name"),
])
def test_bad_files(name: str, text: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(SchedlangError) as info:
        parse_config(text, name)
    assert info.value.message.startswith(message)
    assert info.value.span is not None and (info.value.span.line, info.value.span.col) == where


def test_parameters_by_name() -> None:
    cfg = parse_config("num_stages: 2\nnum_batches: 3\np2p_time: 0.5\nmem_limit: 4\ncosts_per: stage\n", "c.yml")
    assert cfg.params == {"p": 2, "m": 3, "tc": 0.5, "mem_limit": 4, "costs_per": "stage"}
    assert cfg.keys["tc"] == "p2p_time" and cfg.output is None
    with pytest.raises(SchedlangError, match="config key 'p' sets 'p', which 'num_stages' already sets"):
        parse_config('{"num_stages": 2, "p": 3}', "c.json")
