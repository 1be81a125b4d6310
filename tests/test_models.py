"""Bring your own model: a user's factory, cut by intake, trains like one process does.

Differential, on 2 and 4 gloo processes with ZB-H1, 1F1B and ZB-V (V placement: a rank holds the
first and the last stage): a model cut by ``pipe_split()`` with a skip connection across every
stage boundary, a model whose embedding is tied to its output head (split by name in the
factory's ``ModelSpec``), and transformers' GPT-2 from a small config (split by name, as
``--split transformer.h.1,...``; its head is tied to ``wte`` too). After three optimizer
steps (float64, SGD with momentum, new data every step) every stage's parameters equal those of
the whole model trained in one process on the same microbatches; the tied copies included.
All cases of one process count share one spawned group (process start-up dominates).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
try:
    import transformers  # noqa: F401
except ModuleNotFoundError:  # a missing test dependency fails loudly; it never skips
    pytest.fail("tests/test_models.py needs transformers: pip install 'schedlang[test]'", pytrace=False)

from schedlang.runtime.intake import prepare_model  # noqa: E402
from schedlang.runtime.launch import spawn  # noqa: E402

from schedlang import api  # noqa: E402
from schedlang.codegen import codegen  # noqa: E402

pytestmark = pytest.mark.dist

ZOO = Path(__file__).with_name("model_zoo.py")
STEPS = 3
SCHEDULES = ("std:zb-h1", "std:1f1b", "std:zb-v")
MODELS = ("skip_net", "tied_lm", "gpt2")


def _split(model: str, num_stages: int) -> list[str] | None:
    return [f"transformer.h.{i}" for i in range(1, num_stages)] if model == "gpt2" else None


@cache
def _streams(p: int, sched: str) -> Any:
    return codegen(api.compile(sched, {"p": p, "m": p}))


def _cases(p: int) -> tuple[tuple[str, Any, str, list[str] | None], ...]:
    out = []
    for sched in SCHEDULES:
        streams = _streams(p, sched)
        for model in MODELS:
            out.append((f"{sched} {model}", streams, f"{ZOO}:{model}", _split(model, streams.num_parts)))
    return tuple(out)


def _run_cases(rank: int, world: int, cases: tuple[tuple[str, Any, str, list[str] | None], ...]) -> dict[str, Any]:
    """Worker: train every case for STEPS steps; return this rank's parameters per case."""
    from schedlang.runtime.worker import make_runner

    built: dict[tuple[str, int, int], Any] = {}
    out: dict[str, Any] = {}
    for cid, streams, factory, split in cases:
        key = (factory, streams.num_parts, streams.num_microbatches)
        if key not in built:  # tracing is the slow part; the runner copies the stages it keeps
            built[key] = prepare_model(factory, streams.num_parts, streams.num_microbatches, split)
        runner, model = make_runner(streams, rank, built[key], timeout=60, fault_action="raise")
        losses = []
        for step in range(STEPS):
            x, y = model.batch(step)
            loss = runner.step(x if runner.holds_input else None, y if runner.holds_loss else None,
                               broadcast_loss=True)
            losses.append(float(loss))
        runner.close()
        params = {(s, n): p.detach().clone() for s, mod in runner.modules.items() for n, p in mod.named_parameters()}
        out[cid] = {"params": params, "losses": losses}
    return out


@cache
def _results(p: int) -> dict[str, dict[str, Any]]:
    ranks = spawn(_run_cases, p, (_cases(p),), timeout=60, join_timeout=400)
    merged: dict[str, dict[str, Any]] = {}
    for res in ranks:
        for cid, r in res.value.items():
            entry = merged.setdefault(cid, {"params": {}, "losses": r["losses"]})
            entry["params"].update(r["params"])
            assert entry["losses"] == r["losses"], "broadcast loss differs between ranks"
    return merged


@cache
def _reference(model: str, num_stages: int, m: int) -> tuple[Any, list[float]]:
    """The factory's whole model trained in one process on the same microbatches."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_zoo_reference", ZOO)
    assert spec is not None and spec.loader is not None
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    data = prepare_model(f"{ZOO}:{model}", num_stages, m, _split(model, num_stages)).batch
    torch.manual_seed(0)  # as intake seeds before it calls the factory
    ms = getattr(zoo, model)(num_stages, m)
    whole, net = ms.model, zoo.unsplit(ms)
    opt = ms.optimizer(list(whole.parameters()))
    losses = []
    for step in range(STEPS):
        x, y = data(step)
        opt.zero_grad()
        outs = [(net(a), b) for a, b in zip(x.chunk(m), y.chunk(m), strict=True)]
        loss = sum(torch.nn.functional.cross_entropy(o.reshape(-1, o.shape[-1]), b.reshape(-1)) for o, b in outs) / m
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return whole, losses


CASES = [(p, sched, model) for p in (2, 4) for sched in SCHEDULES for model in MODELS]


@pytest.mark.parametrize(("p", "sched", "model"), CASES, ids=[f"p{p}-{s[4:]}-{m}" for p, s, m in CASES])
def test_parameters_match_single_process_training(p: int, sched: str, model: str) -> None:
    streams = _streams(p, sched)
    got = _results(p)[f"{sched} {model}"]
    whole, ref_losses = _reference(model, streams.num_parts, streams.num_microbatches)
    names = {n for n, _ in whole.named_parameters(remove_duplicate=False)}  # tied: both names
    seen = set()
    for (s, n), value in got["params"].items():
        assert n in names, f"stage {s} holds {n}, which the model does not have"
        want = whole.get_parameter(n)
        torch.testing.assert_close(value, want.detach(), rtol=1e-10, atol=1e-12,
                                   msg=lambda msg, s=s, n=n: f"{sched} {model}: stage {s} parameter {n}: {msg}")
        seen.add(id(want))
    # every parameter of the model is held (and was compared) somewhere
    assert seen == {id(q) for q in whole.parameters()}
    assert got["losses"] == pytest.approx(ref_losses, rel=1e-10)


def test_the_cases_cover_a_v_placement_and_tied_weights_across_ranks() -> None:
    assert _streams(4, "std:zb-v").placement == (0, 1, 2, 3, 3, 2, 1, 0)
    gpt = prepare_model(f"{ZOO}:gpt2", 4, 4, _split("gpt2", 4))
    tied = prepare_model(f"{ZOO}:tied_lm", 4, 4)
    for prepared in (gpt, tied):
        assert len(prepared.tied) == 1 and {s for s, _ in prepared.tied[0]} == {0, 3}
    skip = prepare_model(f"{ZOO}:skip_net", 4, 4)
    # the input projection's output crosses every boundary next to the running activation
    assert all(len(st.plan.out_names) == 2 for st in skip.stages[:-1])
    first = copy.deepcopy(skip.stages[0])
    assert [n for n, _ in first.named_parameters()][:2] == ["inp.weight", "inp.bias"]
