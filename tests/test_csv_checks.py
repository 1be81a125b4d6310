"""PyTorch schedule CSVs through ``schedlang streams`` and ``schedlang import``.

A compute-only CSV is checked as PyTorch runs it: with the communication and ``REDUCE_GRAD``\\ s
PyTorch adds on load (differentially tested against PyTorch's own lowering). Broken CSVs
(duplicated actions, blank rows, odd cells) get located errors, and a seeded fuzzer over the
exported CSVs of the built-ins asserts that no mutation causes an internal error or an error
without a location.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from schedlang import api
from schedlang.cli import main
from schedlang.export import (
    emit_torch_csv,
    emit_torch_csv_comms,
    streams_to_torch_rows,
    torch_csv_streams,
)
from schedlang.isa_check import check_streams
from schedlang.source import SchedlangError

BUILTINS = [
    ("1f1b", {"p": 4, "m": 8}),
    ("zb-h1", {"p": 4, "m": 8}),
    ("zb-v", {"p": 4, "m": 8}),
    ("dualpipe-v", {"p": 4, "m": 8}),
    ("interleaved-1f1b", {"p": 2, "m": 4, "v": 2}),
    ("gpipe", {"p": 3, "m": 3}),
]

LOCATED = re.compile(r"^\S+:\d+:\d+: error: ")


def _csv(name: str, params: dict[str, int], comms: bool = False) -> str:
    try:
        prog = api.compile(f"std:{name}", **params)
    except SchedlangError as exc:  # a built-in whose parameters another change renamed
        pytest.skip(f"std:{name} does not compile with {params}: {exc.message}")
    return emit_torch_csv_comms(prog) if comms else emit_torch_csv(prog)


def _streams_cmd(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str, str]:
    path = tmp_path / "s.csv"
    path.write_text(text)
    rc = main(["streams", str(path)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(("name", "params"), BUILTINS, ids=[n for n, _ in BUILTINS])
def test_compute_only_csv_gets_pytorchs_communication(name: str, params: dict[str, int]) -> None:
    """The communication added to an exported compute-only CSV is, action for action, what
    PyTorch 2.13's loader adds (``_add_reduce_grad`` then ``_add_send_recv``)."""
    sched = pytest.importorskip("torch.distributed.pipelining.schedules")
    csv = _csv(name, params)
    streams, _, kind = torch_csv_streams(csv, "x.csv")
    assert kind == "csv-compute-only"
    check_streams(streams, recvs="posted", opt_step=False)
    rows = [[c for c in line.split(",") if c] for line in csv.splitlines()]
    acts = {r: sched._add_reduce_grad([sched._Action.from_str(c) for c in row], streams.num_microbatches)
            for r, row in enumerate(rows)}
    theirs = sched._add_send_recv(acts, lambda s: streams.placement[s], streams.num_stages)
    assert streams_to_torch_rows(streams) == [[str(a) for a in theirs[r]] for r in range(len(rows))]


@pytest.mark.parametrize(("name", "params"), BUILTINS, ids=[n for n, _ in BUILTINS])
def test_exported_csvs_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                            params: dict[str, int]) -> None:
    rc, out, err = _streams_cmd(tmp_path, capsys, _csv(name, params))
    assert rc == 0 and "communication added as PyTorch adds it" in out, err
    rc, out, err = _streams_cmd(tmp_path, capsys, _csv(name, params, comms=True))
    assert rc == 0 and "ok:" in out and "communication added" not in out, err


def test_compute_only_csv_is_checked_with_communication(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # rank 1 runs the backward of microbatch 1 before its forward: no deadlock in a CSV without
    # communication, but PyTorch cannot run it
    rc, _, err = _streams_cmd(tmp_path, capsys, "0F0,0F1,0B0,0B1\n1F0,1B0,1B1,1F1\n")
    assert rc == 1
    assert err.startswith(f"{tmp_path / 's.csv'}:2:9: error: rank 1, instruction 5 (BW stage=1 mb=1): backward "
                          "before the forward of stage 1 microbatch 1"), err
    # both ranks wait: PyTorch's loader gives up, and so does the check, at the first stuck cell
    rc, _, err = _streams_cmd(tmp_path, capsys, "0B0,0F0\n1F0,1B0\n")
    assert rc == 1
    assert err.startswith(f"{tmp_path / 's.csv'}:1:1: error: PyTorch cannot add communication to this "
                          "compute-only schedule: every rank waits for an input no rank can send yet "
                          "(rank 0 at 0B0, rank 1 at 1F0)"), err


@pytest.mark.parametrize(("text", "where", "message"), [
    ("0F0,0F0,0B0\n1F0,1B0\n", "1:5", "action 0F0 appears twice"),
    ("0F0,0B0\n\n1F0,1B0\n", "2:1", "rank 1 (row 2) has no compute actions"),
    ("0F0,0B0\n,,\n1F0,1B0\n", "2:1", "rank 1 (row 2) has no compute actions"),
    ("0F0,(0F1;0B0;1F0)OVERLAP_F_B\n1F0,1B0\n", "1:5", "OVERLAP_F_B must hold one forward and one backward"),
    ("0F0,0B0,0REDUCE_GRAD\n1F0,1B0,5SEND_F0,1REDUCE_GRAD\n", "2:9", "'5SEND_F0' names stage 5"),
    ("0F0,0B0,0REDUCE_GRAD\n1F0,1B0,1SEND_F0,1REDUCE_GRAD\n", "2:9", "'1SEND_F0' has no peer stage"),
    ("0F0,0B0\n1F0,1B" + "9" * 5000 + "\n", "2:5", "stage or microbatch index too large"),
])
def test_broken_csvs_give_located_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                         where: str, message: str) -> None:
    rc, _, err = _streams_cmd(tmp_path, capsys, text)
    assert rc == 1 and err.startswith(f"{tmp_path / 's.csv'}:{where}: error: {message}"), err


def test_spaces_and_quotes_in_cells_are_read_as_import_reads_them(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _streams_cmd(tmp_path, capsys, '" 0F0",0B0\n1F0 , "1B0"\n')
    assert rc == 0 and "ok: 2 ranks" in out, err
    path = tmp_path / "s.csv"
    assert main(["import", str(path)]) == 0
    assert "F[0, 0]" in capsys.readouterr().out


# ------------------------------------------------------------------ fuzzing

_JUNK = [" 0F0", '"', "(0F0;0B0;0F1)OVERLAP_F_B", "(0F0)OVERLAP_F_B", "(;)OVERLAP_F_B", "9SEND_F0", "0RECV_B0",
         "0SEND_B0", "0REDUCE_GRAD", "0UNSHARD", "None", "", "1F" + "7" * 30, "0F-1", "F0", "0X0", "\ufeff0F0",
         "0F0\t", "((0F0;0I0)OVERLAP_F_B)", "0I0;0W0", "99F0", "0W99", '" 0F0"', '"1SEND_F0 "', "0SEND_F",
         "7RECV_F0", "0RECV_F0", "3SEND_B1", "(0F1;1I0)OVERLAP_F_B", "1RESHARD"]


def _mutate(text: str, rng: random.Random) -> str:
    rows = [line.split(",") for line in text.splitlines()]
    for _ in range(rng.randint(1, 3)):
        r = rng.randrange(len(rows))
        row = rows[r]
        k = rng.randrange(len(row)) if row else 0
        op = rng.randrange(9)
        if op == 0 and row:
            del row[k]
        elif op == 1 and row:
            row.insert(k, row[k])  # duplicate an action
        elif op == 2 and len(row) > 1:
            j = rng.randrange(len(row))
            row[k], row[j] = row[j], row[k]
        elif op == 3:
            row.insert(k, rng.choice(_JUNK))
        elif op == 4 and row:
            cell = row[k]
            pos = rng.randrange(len(cell) + 1)
            row[k] = cell[:pos] + rng.choice("0123456789FIBW;()_ ,\"") + cell[pos + 1:]
        elif op == 5:
            rows.insert(r, [])  # a blank row
        elif op == 6 and len(rows) > 1:
            j = rng.randrange(len(rows))
            rows[r], rows[j] = rows[j], rows[r]
        elif op == 7:
            rows[r] = row[:k]
        else:
            row.insert(k, row[k] if row and rng.random() < 0.5 else rng.choice(_JUNK))
    return "".join(",".join(row) + "\n" for row in rows)


def test_csv_fuzz_gives_no_internal_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seeded mutations of the built-ins' exported CSVs (both formats) through ``streams`` and
    ``import``: every answer is ok or a located error, never an internal one."""
    rng = random.Random(2314)
    bases = [_csv(n, p, comms) for n, p in BUILTINS[:4] for comms in (False, True)]
    path = tmp_path / "f.csv"
    outcomes = {"streams": [0, 0], "import": [0, 0]}
    for case in range(240):
        text = _mutate(rng.choice(bases), rng)
        path.write_text(text)
        for cmd in ("streams", "import"):
            if cmd == "import" and case % 2:  # import compiles a program: every other case keeps CI fast
                continue
            rc = main([cmd, str(path)])
            err = capsys.readouterr().err
            assert rc in (0, 1), f"{cmd} case {case}: {err}\n{text}"
            assert rc == 0 or LOCATED.match(err), f"{cmd} case {case} unlocated: {err}\n{text}"
            outcomes[cmd][rc] += 1
    # the fuzzer reaches both answers through both commands (it is not all rejects)
    assert all(ok > 0 and bad > 0 for ok, bad in outcomes.values()), outcomes
