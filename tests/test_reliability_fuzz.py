"""Fuzzing the whole command line with a seeded mutator over the examples and the standard library.

Each case mutates a program (characters, tokens, numbers swapped for hostile values such as a
``**`` tower, a 4301-digit integer or ``range(0, 10**9)``, deep nesting, hostile imports) and
sometimes adds ``--set`` overrides, then runs ``schedlang simulate --json`` on it in one child
process capped in memory (``RLIMIT_AS``), each case under a wall-time bound enforced by the
parent (see ``harness.py``). Every case must end in success with finite figures, or in a user
error located as ``FILE:LINE:COL: error:``; never an internal error, a timeout or a crash.

``SCHEDLANG_FUZZ_CASES`` (default 300) and ``SCHEDLANG_FUZZ_SEED`` (default 0) set the run; the
same seed gives the same cases. Some cases raise ``max_int_bits`` to 4000, past what a float
holds. ``max_ops`` is lowered for the run so that every case is small
(the heuristics' own running time on large programs is measured by benchmarks, not here).
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from harness import Harness

from schedlang.load import read_source, std_names

ROOT = Path(__file__).resolve().parent.parent
SEEDS = [(f"std:{n}", read_source(f"std:{n}").text) for n in std_names()] + \
        [(p.name, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "examples").glob("*.sched"))]
TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_]*|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|\.\.|->|=>|\*\*|[<>=!]=|\"[^\"\n]*\"|.")
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
HOSTILE_VALUES = ["2**2**40", "9**9**9", "10**9", "9" * 4400, "1e308", "1e999", "-1", "0", "range(0, 10**9)",
                  "[1, 2]", "0.5", "inf", '"s"', "true", "2**62", "-(2**62)", "1/0", "10**18 * 10**18",
                  "1e308 * 10", "(-8) ** 0.5", "int(1e300)", "floor(1e300)", "sum(range(0, 10**6))"]
HOSTILE_IMPORTS = ["/etc/passwd", "/dev/zero", "/proc/self/environ", "../../etc/hostname", "../outside.sched",
                   "./fuzz.sched", "fuzz.sched", "std:nope", "std:../x", "std:1f1b", "a\x00b.sched", ""]
PUNCT = list("{}[]()=-+*/?&;,.:\"#<>!") + ["rank", "for", "op", "dep", "if", "else", "0", "..", "**", "->"]
LOCATED = re.compile(r"^[^\s].*?:\d+:\d+: error: ")
CASES = int(os.environ.get("SCHEDLANG_FUZZ_CASES", "300"))
SEED = int(os.environ.get("SCHEDLANG_FUZZ_SEED", "0"))
TIMEOUT_S = 60.0  # per case; a case that takes longer is a failure (the usual case takes milliseconds)


def mutate(text: str, rng: random.Random) -> str:  # noqa: C901 - one branch per kind of mutation
    """One to three random edits of ``text``."""
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["del-char", "dup-char", "swap-char", "ins-char", "del-tok", "dup-tok", "swap-tok",
                           "truncate", "number", "number", "number", "nest", "import"])
        units = list(text) if kind.endswith("char") else TOKEN.findall(text)
        if not units:
            break
        i = rng.randrange(len(units))
        if kind.startswith("del"):
            del units[i]
        elif kind.startswith("dup"):
            units.insert(i, units[i])
        elif kind.startswith("swap"):
            j = rng.randrange(len(units))
            units[i], units[j] = units[j], units[i]
        elif kind == "ins-char":
            units.insert(i, rng.choice(PUNCT))
        elif kind == "truncate":
            units = units[:i]
        elif kind == "number":
            spots = [k for k, u in enumerate(units) if NUMBER.fullmatch(u)]
            if spots:
                units[rng.choice(spots)] = rng.choice(HOSTILE_VALUES)
        elif kind == "nest":
            spots = [k for k, u in enumerate(units) if NUMBER.fullmatch(u)] or [i]
            k, depth = rng.choice(spots), rng.choice([50, 300, 3000])
            wrap = rng.choice([("-" * depth, ""), ("1 + " * depth, ""), ("[" * depth, "]" * depth),
                               ("abs(" * depth, ")" * depth), ("(" * depth, ")" * depth)])
            units[k] = wrap[0] + units[k] + wrap[1]
        else:
            units.insert(0, f'import "{rng.choice(HOSTILE_IMPORTS)}"\n')
        text = "".join(units)
    return text


def overrides(text: str, rng: random.Random) -> list[str]:
    """Sometimes a ``--set`` of one of the program's parameters to a hostile value."""
    names = re.findall(r"^\s*param\s+([A-Za-z_]\w*)", text, re.M)
    if not names or rng.random() < 0.7:
        return []
    return ["--set", f"{rng.choice(names)}={rng.choice(HOSTILE_VALUES)}"]


def test_fuzzed_command_line_gives_only_located_errors(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    work = tmp_path / "proj"
    work.mkdir()
    (tmp_path / "outside.sched").write_text("param leaked = 1\n")
    harness = Harness(cwd=str(work))
    failures: list[str] = []
    outcomes = {"ok": 0, "error": 0}
    try:
        for case in range(CASES):
            origin, seed = rng.choice(SEEDS)
            text = mutate(seed, rng)
            path = work / "fuzz.sched"
            path.write_text(text, encoding="utf-8")
            argv = ["simulate", "--json", str(path), "--limit", "max_ops=20000", *overrides(text, rng)]
            if rng.random() < 0.15:  # big integers, past what a float holds
                argv += ["--limit", "max_int_bits=4000"]
            res = harness.run(argv, timeout=TIMEOUT_S)
            problem = _problem(res.rc, res.out, res.err)
            if problem:
                (tmp_path / f"case{case}.sched").write_text(text, encoding="utf-8")
                failures.append(f"case {case} (from {origin}, {argv[4:]}, kept as case{case}.sched): {problem}")
            else:
                outcomes["ok" if res.rc == 0 else "error"] += 1
    finally:
        harness.close()
    assert not failures, "\n".join(failures[:20])
    # the mutator must reach both sides, or the test proves little
    assert outcomes["ok"] > CASES // 20 and outcomes["error"] > CASES // 2, outcomes


def _problem(rc: int | None, out: str, err: str) -> str | None:
    """What is wrong with one outcome, or None."""
    if rc is None:
        return f"no answer within {TIMEOUT_S} s"
    if "internal error" in err or "Traceback" in err or "harness:" in err:
        return f"internal error: {err[-600:]}"
    if rc == 0:
        figures = json.loads(out)
        if re.search(r"\b(Infinity|NaN)\b", out):
            return f"a non-finite figure: {figures}"
        return None
    if rc != 1:
        return f"exit status {rc}: {err[-600:]}"
    errors = [line for line in err.splitlines() if " error: " in line or line.startswith("error: ")]
    if not errors or not all(LOCATED.match(line) for line in errors):
        return f"an error without a location: {err[:600]}"
    return None
