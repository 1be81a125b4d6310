"""The one stream checker (:mod:`schedlang.isa_check`) and ``schedlang streams`` on broken input.

Every mutation of a built-in's streams that breaks it (a compute instruction deleted or
duplicated, OPT_STEP or REDUCE_GRAD dropped, OPT_STEP moved first, a receive moved after its
consumer, a stage or microbatch out of range or on another rank) is refused by the checker with
the rank and instruction index, and by ``schedlang streams`` with a located error. Malformed JSON
streams name the JSON path of the bad value; files that are not UTF-8 give located errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from schedlang import api, isa
from schedlang.cli import main
from schedlang.codegen import codegen
from schedlang.isa import Instr, Opcode, RankStream, Streams
from schedlang.isa_check import StreamError, check_streams
from schedlang.source import SchedlangError

BUILTINS = [
    ("1f1b", {"p": 3, "m": 4}),
    ("zb-h1", {"p": 3, "m": 4}),
    ("interleaved-1f1b", {"p": 2, "m": 4, "v": 2}),
    ("zb-v", {"p": 2, "m": 4}),
    ("dualpipe-v", {"p": 2, "m": 4}),
    ("chimera", {"p": 2, "m": 4}),
]

LOCATED = re.compile(r"^\S+:\d+:\d+: error: ")


def _compile(name: str, params: dict[str, int]) -> Streams:
    try:
        return codegen(api.compile(f"std:{name}", **params))
    except SchedlangError as exc:  # a built-in whose parameters another change renamed
        pytest.skip(f"std:{name} does not compile with {params}: {exc.message}")


def _with_rank(streams: Streams, rank: int, instrs: list[Instr]) -> Streams:
    ranks = list(streams.ranks)
    ranks[rank] = RankStream(rank, ranks[rank].stages, tuple(instrs))
    return dataclasses.replace(streams, ranks=tuple(ranks))


def _flat(streams: Streams) -> Streams:
    """The same streams with every BATCH replaced by its parts (valid under buffered sends)."""
    return dataclasses.replace(streams, ranks=tuple(
        RankStream(rs.rank, rs.stages, tuple(isa.flatten(rs.instrs))) for rs in streams.ranks))


def _computes(instrs: list[Instr]) -> list[int]:
    return [k for k, ins in enumerate(instrs) if ins.op.is_compute]


# Each mutation takes one rank's (flattened) instructions and the streams; returns the new list.
Mutation = Callable[[list[Instr], Streams], list[Instr]]


def _delete_compute(instrs: list[Instr], _: Streams) -> list[Instr]:
    k = _computes(instrs)[len(_computes(instrs)) // 2]
    return instrs[:k] + instrs[k + 1:]


def _delete_last_compute(instrs: list[Instr], _: Streams) -> list[Instr]:
    k = _computes(instrs)[-1]
    return instrs[:k] + instrs[k + 1:]


def _duplicate_compute(instrs: list[Instr], _: Streams) -> list[Instr]:
    k = _computes(instrs)[len(_computes(instrs)) // 2]
    return instrs[:k + 1] + [instrs[k]] + instrs[k + 1:]


def _drop_opt_step(instrs: list[Instr], _: Streams) -> list[Instr]:
    assert instrs[-1].op is Opcode.OPT_STEP
    return instrs[:-1]


def _drop_reduce_grad(instrs: list[Instr], _: Streams) -> list[Instr]:
    k = next(k for k, ins in enumerate(instrs) if ins.op is Opcode.REDUCE_GRAD)
    return instrs[:k] + instrs[k + 1:]


def _opt_step_first(instrs: list[Instr], _: Streams) -> list[Instr]:
    return [instrs[-1]] + instrs[:-1]


def _recv_after_consumer(instrs: list[Instr], _: Streams) -> list[Instr]:
    k = next(k for k, ins in enumerate(instrs) if ins.op is Opcode.RECV_ACT)
    recv = instrs[k]
    use = next(j for j, ins in enumerate(instrs)
               if ins.op in (Opcode.F, Opcode.FB) and (ins.stage, ins.mb) == (recv.stage, recv.mb))
    return instrs[:k] + instrs[k + 1:use + 1] + [recv] + instrs[use + 1:]


def _stage_out_of_range(instrs: list[Instr], s: Streams) -> list[Instr]:
    k = _computes(instrs)[0]
    return instrs[:k] + [dataclasses.replace(instrs[k], stage=s.num_stages + 2)] + instrs[k + 1:]


def _mb_out_of_range(instrs: list[Instr], s: Streams) -> list[Instr]:
    k = _computes(instrs)[1]
    return instrs[:k] + [dataclasses.replace(instrs[k], mb=s.num_microbatches)] + instrs[k + 1:]


def _stage_on_other_rank(instrs: list[Instr], s: Streams) -> list[Instr]:
    k = _computes(instrs)[0]
    mine = instrs[k].stage
    other = next(t for t in range(s.num_stages) if s.placement[t] != s.placement[mine])
    return instrs[:k] + [dataclasses.replace(instrs[k], stage=other)] + instrs[k + 1:]


MUTATIONS: dict[str, Mutation] = {
    "delete-compute": _delete_compute,
    "delete-last-compute": _delete_last_compute,
    "duplicate-compute": _duplicate_compute,
    "drop-opt-step": _drop_opt_step,
    "drop-reduce-grad": _drop_reduce_grad,
    "opt-step-first": _opt_step_first,
    "recv-after-consumer": _recv_after_consumer,
    "stage-out-of-range": _stage_out_of_range,
    "mb-out-of-range": _mb_out_of_range,
    "stage-on-other-rank": _stage_on_other_rank,
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize(("name", "params"), BUILTINS, ids=[n for n, _ in BUILTINS])
def test_every_mutation_is_refused_with_rank_and_instruction(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            name: str, params: dict[str, int],
                                                            mutation: str) -> None:
    streams = _flat(_compile(name, params))
    check_streams(streams)  # the unmutated (flattened) streams pass
    rank = 1
    bad = _with_rank(streams, rank, MUTATIONS[mutation](list(streams.ranks[rank].instrs), streams))
    with pytest.raises(StreamError) as info:
        check_streams(bad)
    err = info.value
    assert err.rank == rank and err.index is not None, err.message
    assert f"rank {rank}, instruction " in err.message or f"rank {rank}, at the end" in err.message
    path = tmp_path / "bad.txt"
    path.write_text(isa.to_text(bad))
    assert main(["streams", str(path)]) == 1
    out = capsys.readouterr().err
    assert LOCATED.match(out), out
    line = int(out.split(":")[1])
    assert line > next(k for k, t in enumerate(path.read_text().splitlines(), 1) if t == f"rank {rank} stages="
                       + ",".join(map(str, bad.ranks[rank].stages))), out  # points into rank 1's section
    assert "Traceback" not in out and "internal error" not in out


def test_zb_h1_missing_weight_backward_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: without ``W stage=0 mb=1`` the ZB-H1 (p=2, m=2) streams used to pass as
    "ok: no deadlock" while the runtime refused them."""
    good = tmp_path / "zb.txt"
    assert main(["compile", "std:zb-h1", "--set", "p=2", "--set", "m=2", "--emit", "streams", "-o", str(good)]) == 0
    lines = good.read_text().splitlines(keepends=True)
    assert lines.count("  W stage=0 mb=1\n") == 1
    bad = tmp_path / "zb-bad.txt"
    bad.write_text("".join(t for t in lines if t != "  W stage=0 mb=1\n"))
    assert main(["streams", str(good)]) == 0
    capsys.readouterr()
    assert main(["streams", str(bad)]) == 1
    out = capsys.readouterr()
    assert "ok" not in out.out
    assert out.err.startswith(f"{bad}:16:3: error: rank 0, instruction 8 (REDUCE_GRAD stage=0): the weight "
                              "backward (W/BW) of stage 0 microbatch 1 has not run before this REDUCE_GRAD"), out.err


def test_errors_in_a_batch_name_the_part(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    streams = _compile("1f1b", {"p": 2, "m": 4})
    r0 = list(streams.ranks[0].instrs)
    k = next(k for k, ins in enumerate(r0) if ins.op is Opcode.BATCH)
    parts = list(r0[k].parts)
    parts[1] = dataclasses.replace(parts[1], mb=9)
    r0[k] = Instr(Opcode.BATCH, parts=tuple(parts))
    bad = _with_rank(streams, 0, r0)
    with pytest.raises(StreamError) as info:
        check_streams(bad)
    assert (info.value.rank, info.value.index, info.value.part) == (0, k, 1)
    path = tmp_path / "bad.txt"
    path.write_text(isa.to_text(bad))
    assert main(["streams", str(path)]) == 1
    err = capsys.readouterr().err
    text_lines = path.read_text().splitlines()
    line = int(err.split(":")[1])
    assert text_lines[line - 1].strip() == str(parts[1]) and text_lines[line - 3].strip() == "BATCH", err
    assert f"rank 0, instruction {k}, BATCH part 1" in err


def test_forward_only_streams_need_every_forward() -> None:
    streams = codegen(api.loads("""
        op F[s, i] time 1 mem 0
        dep F[s, i] -> F[s + 1, i]
        ranks 2
        microbatches 2
        schedule { rank 0 { F[0, 0] F[0, 1] } rank 1 { F[1, 0] F[1, 1] } }"""))
    check_streams(streams)
    with pytest.raises(StreamError, match="runtime|backward"):
        check_streams(streams, training=True)
    r1 = [i for i in streams.ranks[1].instrs if i != Instr(Opcode.F, 1, 1)]
    with pytest.raises(StreamError, match=r"rank 1, at the end of its stream .*: no forward of stage 1 microbatch 1"):
        check_streams(_with_rank(streams, 1, r1))


def test_huge_header_values_are_refused_quickly() -> None:
    streams = _compile("1f1b", {"p": 2, "m": 2})
    with pytest.raises(StreamError, match="expected one stream per rank"):
        check_streams(dataclasses.replace(streams, num_ranks=10**15))
    with pytest.raises(StreamError, match="microbatches but only"):
        check_streams(dataclasses.replace(streams, num_microbatches=10**15))


# ------------------------------------------------------------------ malformed files


def _json_doc() -> dict[str, object]:
    doc: dict[str, object] = json.loads(isa.to_json(_compile("1f1b", {"p": 2, "m": 2})))
    return doc


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.__setitem__("ranks", [5, 6]), "ranks[0]: expected an object, got 5"),
    (lambda d: d["ranks"][1]["instrs"][4].__setitem__("mb", "x"), 'ranks[1].instrs[4].mb: expected an integer, got "x"'),
    (lambda d: d["ranks"][1]["instrs"][4].__setitem__("mb", True), "ranks[1].instrs[4].mb: expected an integer, got true"),
    (lambda d: d["ranks"][0]["instrs"].__setitem__(0, {"op": "NOPE"}), "ranks[0].instrs[0].op: expected an opcode"),
    (lambda d: d["ranks"][0].__setitem__("stages", {"a": 1}), "ranks[0].stages: expected a list of integers"),
    (lambda d: d["ranks"][0]["instrs"].__setitem__(0, {"op": "F", "speed": 1}), "ranks[0].instrs[0]: unknown field 'speed'"),
    (lambda d: d.pop("num_stages"), "the document: missing field 'num_stages'"),
    (lambda d: d.__setitem__("placement", 3), "placement: expected a list of integers, got 3"),
    (lambda d: d.__setitem__("meta", 5), "meta: expected an object of strings, got 5"),
    (lambda d: d["ranks"][1].__setitem__("instrs", 7), "ranks[1].instrs: expected a list of instructions, got 7"),
    (lambda d: d["ranks"][0]["instrs"].__setitem__(0, {"op": "BATCH", "parts": [{"op": "BATCH", "parts": []}]}),
     "ranks[0].instrs[0].parts[0].parts: only a BATCH holds parts, and a BATCH is not nested"),
])
def test_malformed_json_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       edit: Callable[[dict[str, object]], object], message: str) -> None:
    doc = _json_doc()
    edit(doc)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    assert main(["streams", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:1:1: error: {message}"), err


def test_json_checker_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _json_doc()
    instrs = doc["ranks"][0]["instrs"]  # type: ignore[index]
    k = next(k for k, i in enumerate(instrs) if i["op"] == "REDUCE_GRAD")
    del instrs[k]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    assert main(["streams", str(path)]) == 1
    err = capsys.readouterr().err
    assert re.match(rf"{re.escape(str(path))}:1:1: error: ranks\[0\]\.instrs\[\d+\]: rank 0, ", err), err


@pytest.mark.parametrize("text", [
    '{"format": "schedlang-isa", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"format": "schedlang-isa", "version": 1, "num_ranks": 1' + "0" * 5000 + "}",
    '{"format": "schedlang-isa", "version": 1,',
    "[1, 2]",
])
def test_hostile_json_gives_located_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    assert main(["streams", str(path)]) == 1
    err = capsys.readouterr().err
    assert LOCATED.match(err) and "internal error" not in err, err


@pytest.mark.parametrize("suffix", [".txt", ".json", ".csv"])
def test_non_utf8_files_give_located_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    path = tmp_path / f"s{suffix}"
    path.write_bytes(b"schedlang-isa 1\n0F0,\xff0B0\n")
    assert main(["streams", str(path)]) == 1
    assert capsys.readouterr().err.startswith(f"{path}:2:5: error: cannot read '{path}': not UTF-8 text")
    if suffix == ".csv":
        assert main(["import", str(path)]) == 1
        assert capsys.readouterr().err.startswith(f"{path}:2:5: error: cannot read '{path}': not UTF-8 text")


def _mutate_text(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(len(lines))
        op = rng.randrange(6)
        if op == 0:
            del lines[k]
        elif op == 1:
            lines.insert(rng.randrange(len(lines)), lines[k])
        elif op == 2:
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], lines[k]
        elif op == 3:  # change one number
            nums = list(re.finditer(r"\d+", lines[k]))
            if nums:
                m = rng.choice(nums)
                new = rng.choice(["0", "1", "2", "7", "-1", "9" * 30, "x"])
                lines[k] = lines[k][:m.start()] + new + lines[k][m.end():]
        elif op == 4:
            lines.insert(k, rng.choice(["  BATCH", "  END", "rank 1 stages=1", "  OPT_STEP", "  F stage=0",
                                        "  FB stage=0 mb=0 stage2=0 mb2=0", "meta x=y", "  USER kind=R"]))
        else:
            lines[k] = lines[k].replace("=", rng.choice(["==", " = ", "="]), 1)
    return "\n".join(lines) + "\n"


def test_stream_file_fuzz_gives_no_internal_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seeded line mutations of built-ins' text streams: ok or a located error, never an internal
    one; and most mutations are refused (a stream is hard to break harmlessly)."""
    rng = random.Random(23)
    bases = [isa.to_text(_compile(n, p)) for n, p in BUILTINS]
    path = tmp_path / "s.txt"
    refused = 0
    for case in range(300):
        text = _mutate_text(rng.choice(bases), rng)
        path.write_text(text)
        rc = main(["streams", str(path)])
        err = capsys.readouterr().err
        assert rc in (0, 1), f"case {case}: {err}\n{text}"
        assert rc == 0 or LOCATED.match(err), f"case {case} unlocated: {err}"
        refused += rc
    assert refused > 250, refused


def test_special_files_are_refused_without_reading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        assert main(["streams", path]) == 1
        assert capsys.readouterr().err.startswith(f"{path}:1:1: error: cannot read '{path}': "), path
