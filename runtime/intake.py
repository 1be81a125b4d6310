"""Model intake: turn what a user's model factory returns into pipeline stages, checked.

``schedlang run --model SPEC`` and ``schedlang profile --model SPEC`` name a factory as
``MODULE:FACTORY`` (imported like ``python -m`` does: the current folder first) or
``path/to/file.py:FACTORY`` (the file's folder goes first on ``sys.path``, as for
``python path/to/file.py``). The factory has one signature::

    def FACTORY(num_stages: int, num_microbatches: int) -> ModelSpec | nn.Module | list[nn.Module]

and may return:

- a :class:`~schedlang.runtime.models.ModelSpec` with ``stages`` (already cut, one module per
  stage) or ``model`` (cut here), plus any of ``loss_fn``, ``batch``, ``optimizer``,
  ``example``, ``split``;
- an ``nn.Sequential`` or a list of blocks: cut by
  :func:`~schedlang.runtime.models.split_sequential` into balanced contiguous stages (or at the
  top-level indices a split spec names, e.g. ``--split 2,4``);
- any other ``nn.Module`` with split points: ``pipe_split()`` calls in its forward
  (``torch.distributed.pipelining.pipe_split``) or a split spec naming the submodules that begin
  a new stage (``--split transformer.h.2,transformer.h.4``). PyTorch's own tracer,
  ``torch.distributed.pipelining.pipeline()``, cuts it; each traced stage is wrapped in a
  :class:`TracedStage` that carries every value a later stage still needs (skip connections)
  across each stage boundary packed in one tensor.

Defaults, each overridden by the ``ModelSpec`` field of the same name:

- ``loss_fn``: cross entropy of the last stage's output (classes in its last dimension) against
  integer targets;
- ``batch``: synthetic batches, new data every step: inputs like ``example`` (normal noise for
  floating point, integers in ``[example.min(), example.max()]`` otherwise) and class-index
  targets shaped like the output without its last dimension. ``example`` is one whole batch of
  inputs; without it, the inputs of ``batch(0)`` serve, and without ``batch`` either, a model
  whose first layer is an ``nn.Linear`` gets ``4 * num_microbatches`` rows of ``in_features``;
- ``optimizer``: ``torch.optim.AdamW(params, lr=1e-3)``.

The factory is called after ``torch.manual_seed(0)``, so every process that calls it builds the
same initial weights unless the factory seeds differently on purpose.

Parameters shared between stages (tied weights, e.g. an embedding reused by the output head) are
found by identity; each stage then holds its own copy, and their gradients are summed before
every optimizer step (:attr:`PreparedModel.tied`, passed to the runner as ``tied``).

:func:`prepare_model` does all of this and :func:`check_model` runs one microbatch through the
stages on the CPU; every mistake is a :class:`ModelError` whose message names the factory.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from schedlang.runtime.models import ModelSpec, split_sequential
from torch import nn
from torch.nn import functional as fn

__all__ = ["ModelError", "PreparedModel", "SyntheticBatches", "TracedStage", "check_model",
           "cross_entropy", "fingerprint", "load_factory", "prepare_model"]

# the integers a floating-point type holds exactly (mantissa bits + 1)
_EXACT_INT_BITS = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24, torch.float64: 53}


class ModelError(ValueError):
    """A mistake in the model a factory gave; the message names the factory."""


# ---------------------------------------------------------------------- finding the factory


def load_factory(spec: str) -> Callable[..., Any]:
    """Import the factory ``MODULE:FACTORY`` or ``path/to/file.py:FACTORY`` (module docstring)."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ModelError(f"model {spec}: expected MODULE:FACTORY or path/to/file.py:FACTORY")
    if target.endswith(".py") or os.sep in target or "/" in target:
        module = _import_file(spec, target)
    else:
        module = _import_module(spec, target)
    if not hasattr(module, name):
        raise ModelError(f"model {spec}: {module.__name__} ({_where(module)}) has no attribute '{name}'")
    factory = getattr(module, name)
    if not callable(factory):
        raise ModelError(f"model {spec}: '{name}' is a {type(factory).__name__}, not a callable factory")
    return factory  # type: ignore[no-any-return]


def _where(module: Any) -> str:
    return str(getattr(module, "__file__", None) or module.__name__)


def _import_module(spec: str, target: str) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        # what `python -m` does: the current folder first, but only while the factory's module
        # loads, so that a folder of the same name as a library there (this repository's own
        # kernels/, say) does not shadow that library for the rest of the process
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise ModelError(f"model {spec}: no module named '{exc.name}' in the current folder "
                             f"({cwd}) or on the Python path") from None
        raise ModelError(f"model {spec}: importing {target} failed: {_brief(exc)}") from None
    except Exception as exc:
        raise ModelError(f"model {spec}: importing {target} failed: {_brief(exc)}") from None
    finally:
        if added and sys.path and sys.path[0] == cwd:
            del sys.path[0]


def _import_file(spec: str, target: str) -> Any:
    path = Path(target).resolve()
    if not path.is_file():
        raise ModelError(f"model {spec}: no file {target} (from {os.getcwd()})")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # what `python path/to/file.py` does: its folder first
    name = path.stem if path.stem.isidentifier() else "schedlang_user_model"
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
        return sys.modules[name]
    mspec = importlib.util.spec_from_file_location(name, path)
    if mspec is None or mspec.loader is None:
        raise ModelError(f"model {spec}: cannot load {target} as a Python module")
    module = importlib.util.module_from_spec(mspec)
    sys.modules[name] = module
    try:
        mspec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelError(f"model {spec}: importing {target} failed: {_brief(exc)}") from None
    return module


def _brief(exc: BaseException) -> str:
    """``Type: message (file:line)``: the innermost frame outside torch and intake, where the
    user's code failed (none when the error is torch's own, e.g. shapes that do not meet)."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != __file__ and not f.filename.startswith(torch_dir)]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


# ---------------------------------------------------------------------- what intake returns


LossFn = Callable[[Any, Any], torch.Tensor]
BatchFn = Callable[[int], tuple[torch.Tensor, Any]]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


@dataclass
class PreparedModel:
    """A model cut into stages with everything a run needs (see the module docstring).

    ``tied`` lists groups of ``(stage, parameter name)`` that are one parameter in the model:
    their gradients are summed before each optimizer step. ``kind`` says how the stages were
    made: ``"stages"`` (the factory cut them), ``"sequential"`` or ``"traced"``.
    """

    name: str
    stages: list[nn.Module]
    loss_fn: LossFn
    batch: BatchFn
    optimizer: OptimizerFactory
    kind: str
    tied: list[list[tuple[int, str]]] = field(default_factory=list)
    example: torch.Tensor | None = None


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The default loss: mean cross entropy, classes in the output's last dimension."""
    return fn.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))


def adamw(params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The default optimizer: ``torch.optim.AdamW(params, lr=1e-3)``."""
    return torch.optim.AdamW(params, lr=1e-3)


class SyntheticBatches:
    """The default batches: ``(inputs like example, class-index targets)``, new each step."""

    def __init__(self, example: torch.Tensor, target_shape: Sequence[int], classes: int, seed: int = 0) -> None:
        self.example = example
        self.target_shape = tuple(target_shape)
        self.classes = classes
        self.seed = seed

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1000003 + step)
        ex = self.example
        if ex.is_floating_point():
            x = torch.randn(ex.shape, generator=g, dtype=ex.dtype)
        elif ex.dtype == torch.bool:
            x = torch.randint(0, 2, ex.shape, generator=g).bool()
        else:
            lo, hi = (int(ex.min()), int(ex.max())) if ex.numel() else (0, 0)
            x = torch.randint(lo, hi + 1, ex.shape, generator=g, dtype=ex.dtype)
        y = torch.randint(0, self.classes, self.target_shape, generator=g)
        return x, y


# ---------------------------------------------------------------------- the factory's result


def prepare_model(spec: str, num_stages: int, num_microbatches: int, split: Sequence[str] | None = None,
                  *, seed: int = 0) -> PreparedModel:
    """Import and call the factory, cut its model into ``num_stages`` stages, fill in defaults.

    ``split`` (``--split``) names the submodules that begin stages 1, 2, ... (or, for an
    ``nn.Sequential``, their top-level indices). Raises :class:`ModelError`.
    """
    factory = load_factory(spec)
    torch.manual_seed(seed)
    try:
        got = factory(num_stages, num_microbatches)
    except Exception as exc:
        called = isinstance(exc, TypeError) and all(
            f.filename == __file__ for f in traceback.extract_tb(exc.__traceback__))
        hint = "; a factory takes (num_stages, num_microbatches)" if called else ""
        raise ModelError(f"model {spec}: the factory {spec}({num_stages}, {num_microbatches}) raised "
                         f"{_brief(exc)}{hint}") from None
    if isinstance(got, ModelSpec):
        ms = got
    elif isinstance(got, nn.Module) or (isinstance(got, (list, tuple)) and got
                                        and all(isinstance(b, nn.Module) for b in got)):
        ms = ModelSpec(model=got)
    else:
        raise ModelError(f"model {spec}: the factory returned {_describe(got)}; expected a ModelSpec, "
                         "an nn.Module or a list of nn.Module blocks")
    if split is not None and ms.split is not None and list(split) != list(ms.split):
        raise ModelError(f"model {spec}: --split {','.join(split)} differs from the factory's split "
                         f"{','.join(ms.split)}; give one of them")
    split = list(split) if split is not None else (list(ms.split) if ms.split is not None else None)
    stages, kind, example, out_shape = _cut(spec, ms, num_stages, num_microbatches, split)
    loss_fn = ms.loss_fn if ms.loss_fn is not None else cross_entropy
    batch = ms.batch
    if batch is None:
        if example is None:
            raise ModelError(f"model {spec}: cannot tell what input the model takes; return "
                             "ModelSpec(..., example=<one batch of inputs>) or ModelSpec(..., batch=...)")
        if out_shape is None:
            out_shape = _output_shape(spec, stages, example[: max(1, example.shape[0] // num_microbatches)])
        if len(out_shape) < 2:
            raise ModelError(f"model {spec}: the default targets are class indices, but the model's "
                             f"output has shape {tuple(out_shape)} (no class dimension); give batch=...")
        batch = SyntheticBatches(example, (example.shape[0], *out_shape[1:-1]), out_shape[-1], seed)
    optimizer = ms.optimizer if ms.optimizer is not None else adamw
    tied = _tied_groups(stages, _aliases_of(ms) if kind == "traced" else ())
    return PreparedModel(spec, stages, loss_fn, batch, optimizer, kind, tied, example)


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        kinds = sorted({type(b).__name__ for b in x})
        return f"a {type(x).__name__} of {len(x)} ({', '.join(kinds) or 'nothing'})"
    return "None" if x is None else f"a {type(x).__name__}"


def _cut(spec: str, ms: ModelSpec, num_stages: int, m: int, split: list[str] | None
         ) -> tuple[list[nn.Module], str, torch.Tensor | None, list[int] | None]:
    """(stages, kind, example batch, microbatch output shape when known)."""
    if ms.stages is not None and ms.model is not None:
        raise ModelError(f"model {spec}: the ModelSpec gives both stages and model; give one")
    if ms.stages is not None:
        stages = list(ms.stages)
        if not all(isinstance(s, nn.Module) for s in stages):
            raise ModelError(f"model {spec}: ModelSpec.stages must be nn.Module objects, got {_describe(stages)}")
        if split:
            raise ModelError(f"model {spec}: the factory cut the stages itself; --split does not apply")
        _check_count(spec, len(stages), num_stages, "the factory built")
        return stages, "stages", ms.example, None
    model = ms.model
    if model is None:
        raise ModelError(f"model {spec}: the ModelSpec gives neither stages nor model")
    example = ms.example if ms.example is not None else _example_of(spec, ms, model, m)
    if isinstance(model, (list, tuple)) or (isinstance(model, nn.Sequential)
                                            and (split is None or all(s.isdigit() for s in split))):
        blocks = list(model)
        cuts = [int(s) for s in split] if split else None
        if cuts is not None:
            _check_count(spec, len(cuts) + 1, num_stages, f"--split {','.join(split or [])} makes")
        if not 1 <= num_stages <= len(blocks):
            raise ModelError(f"model {spec}: cannot cut {len(blocks)} blocks into {num_stages} stages "
                             "(the schedule's count); give more blocks")
        try:
            return list(split_sequential(blocks, num_stages, cuts)), "sequential", example, None
        except ValueError as exc:
            raise ModelError(f"model {spec}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {spec}: ModelSpec.model is {_describe(model)}, not an nn.Module")
    if example is None:
        raise ModelError(f"model {spec}: tracing the model needs an example input; return "
                         "ModelSpec(model=..., example=<one batch of inputs>)")
    if example.shape[0] % m:
        raise ModelError(f"model {spec}: a batch of {example.shape[0]} does not split into {m} microbatches")
    stages, out_shape = trace_stages(spec, model, example[: example.shape[0] // m], num_stages, split)
    return stages, "traced", example, out_shape


def _aliases_of(ms: ModelSpec) -> list[set[str]]:
    return _aliases(ms.model) if isinstance(ms.model, nn.Module) and not isinstance(ms.model, nn.Sequential) else []


def _check_count(spec: str, got: int, want: int, what: str) -> None:
    if got != want:
        raise ModelError(f"model {spec}: {what} {got} stage{'s' if got != 1 else ''}, but the "
                         f"schedule has {want}")


def _example_of(spec: str, ms: ModelSpec, model: Any, m: int) -> torch.Tensor | None:
    """The inputs of the factory's first batch when it gives ``batch``, else an inferred example."""
    if ms.batch is None:
        return _infer_example(model, m)
    try:
        x = ms.batch(0)[0]
    except Exception as exc:
        raise ModelError(f"model {spec}: batch(0) raised {_brief(exc)}") from None
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"model {spec}: batch(0) must return (inputs tensor, targets); the inputs are {_describe(x)}")
    return x


def _infer_example(model: Any, m: int) -> torch.Tensor | None:
    """``4 * m`` rows of random features when the first block's first layer is an ``nn.Linear``."""
    first = model[0] if isinstance(model, (list, tuple, nn.Sequential)) and len(model) else None
    if first is None:
        return None
    leaf = next((mod for mod in first.modules() if not list(mod.children())), None)
    if isinstance(leaf, nn.Linear):
        return torch.zeros(4 * m, leaf.in_features, dtype=leaf.weight.dtype)
    return None


def _run_stages(spec: str, stages: Sequence[nn.Module], x: torch.Tensor) -> Any:
    """Run one microbatch through the stages in order; a failure names the stage."""
    out: Any = x
    for s, stage in enumerate(stages):
        try:
            out = stage(out)
        except Exception as exc:
            raise ModelError(f"model {spec}: stage {s} failed on a microbatch of {x.shape[0]} rows: "
                             f"{_brief(exc)}") from None
        if s + 1 < len(stages) and not isinstance(out, torch.Tensor):
            raise ModelError(f"model {spec}: stage {s} returns {_describe(out)}; a stage that feeds "
                             "another must return one tensor")
    return out


def _output_shape(spec: str, stages: list[nn.Module], x: torch.Tensor) -> list[int]:
    with torch.random.fork_rng(), torch.no_grad():
        out = _run_stages(spec, stages, x)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"model {spec}: the last stage returns {_describe(out)}, not a tensor; "
                         "the default loss and batches need one: give loss_fn and batch")
    return list(out.shape)


def _tied_groups(stages: list[nn.Module], aliases: Sequence[set[str]] = ()) -> list[list[tuple[int, str]]]:
    """Parameters that are one parameter of the model but sit in several places of the stages.

    Found by identity (one object in several stages) and, for traced stages, whose tied
    parameters the tracer copies, by name: ``aliases`` are the sets of names the original model
    gives one parameter. Returns ``[(stage, name), ...]`` per such parameter.
    """
    alias_of = {name: i for i, names in enumerate(aliases) for name in names}
    where: dict[Any, list[tuple[int, str]]] = {}
    for s, mod in enumerate(stages):
        for name, p in mod.named_parameters():
            if p.requires_grad:
                key = ("alias", alias_of[name]) if name in alias_of else ("id", id(p))
                holders = where.setdefault(key, [])
                if (s, name) not in holders and not any(h == s and mod.get_parameter(n) is p for h, n in holders):
                    holders.append((s, name))
    return [g for g in where.values() if len(g) > 1]


def _aliases(model: nn.Module) -> list[set[str]]:
    """Names the model gives one parameter object, for every parameter it reaches by two names."""
    names: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), set()).add(name)
    return [v for v in names.values() if len(v) > 1]


# ---------------------------------------------------------------------- tracing


def trace_stages(spec: str, model: nn.Module, example_mb: torch.Tensor, num_stages: int,
                 split: Sequence[str] | None) -> tuple[list[nn.Module], list[int] | None]:
    """Cut ``model`` with ``torch.distributed.pipelining.pipeline()`` and wrap each stage.

    Returns the stage modules and the shape of one microbatch's output (None when the output is
    not a single tensor).
    """
    from torch.distributed.pipelining import SplitPoint, pipeline

    split_spec = None
    if split:
        names = dict(model.named_modules())
        missing = [s for s in split if s not in names]
        if missing:
            near = ", ".join(sorted(n for n in names if n and n.count(".") <= 2)[:12])
            raise ModelError(f"model {spec}: --split names {', '.join(missing)}, which the model does not "
                             f"have (its modules include {near}, ...)")
        split_spec = {s: SplitPoint.BEGINNING for s in split}
    try:
        with torch.random.fork_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecations
            pipe = pipeline(model, mb_args=(example_mb,), split_spec=split_spec)
    except Exception as exc:
        raise ModelError(f"model {spec}: torch.distributed.pipelining could not trace the model: "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if pipe.num_stages != num_stages:
        how = (f"--split {','.join(split)} makes" if split else
               "its pipe_split() calls make" if pipe.num_stages > 1 else
               "without pipe_split() calls or --split it has")
        _check_count(spec, pipe.num_stages, num_stages, how)
    return _wrap_traced(spec, pipe.split_gm, example_mb)


@dataclass(frozen=True)
class _Plan:
    """How one traced stage reads its input and which values it passes on."""

    index: int
    target: str  # the stage submodule's name in the split graph
    in_names: tuple[str, ...]
    in_specs: tuple[tuple[tuple[int, ...], torch.dtype], ...]
    arg_names: tuple[str, ...]
    getitems: tuple[tuple[str, int], ...]  # (value name, index into the stage's output)
    out_names: tuple[str, ...]  # values live after this stage (the last stage: none)
    out_specs: tuple[tuple[tuple[int, ...], torch.dtype], ...]
    output: Any = None  # the last stage: the model's output, as a structure of value names


def _graph_roles(spec: str, graph: Any) -> tuple[Any, list[Any], dict[str, int], dict[int, list[tuple[str, int]]],
                                                  Any, dict[str, int]]:
    """The split graph's input, stage calls, the stage defining each value, each stage's
    ``getitem`` outputs, the output node, and the last stage using each value (the output: after
    the last)."""
    import operator

    import torch.fx

    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(f"model {spec}: the model's forward takes {len(placeholders)} inputs; the runtime "
                         "feeds it one tensor (wrap the model so that forward takes one)")
    calls = [n for n in graph.nodes if n.op == "call_module"]
    stage_of: dict[str, int] = {placeholders[0].name: -1}
    getitems: dict[int, list[tuple[str, int]]] = {k: [] for k in range(len(calls))}
    for k, n in enumerate(calls):
        stage_of[n.name] = k
    for n in graph.nodes:
        if n.op == "call_function" and n.target is operator.getitem and n.args[0].name in stage_of:
            k = stage_of[n.args[0].name]
            stage_of[n.name] = k
            getitems[k].append((n.name, int(n.args[1])))
        elif n.op not in ("placeholder", "call_module", "output"):
            raise ModelError(f"model {spec}: unexpected operation {n.op} {n.target} between traced stages")
    output = next(n for n in graph.nodes if n.op == "output")
    last_use: dict[str, int] = {}
    for k, n in enumerate(calls):
        for a in n.args:
            last_use[a.name] = max(last_use.get(a.name, -1), k)
    torch.fx.node.map_arg(output.args[0], lambda a: last_use.__setitem__(a.name, len(calls)))
    return placeholders[0], calls, stage_of, getitems, output, last_use


def _wrap_traced(spec: str, split_gm: Any, example_mb: torch.Tensor) -> tuple[list[nn.Module], list[int] | None]:
    import torch.fx

    graph = split_gm.graph
    placeholder, calls, stage_of, getitems, output, last_use = _graph_roles(spec, graph)
    # run the stages once on the example microbatch for every value's shape and dtype
    values: dict[str, Any] = {placeholder.name: example_mb}
    with torch.random.fork_rng(), torch.no_grad():
        for k, n in enumerate(calls):
            res = split_gm.get_submodule(n.target)(*(values[a.name] for a in n.args))
            values[n.name] = res
            for name, i in getitems[k]:
                values[name] = res[i]
    order = [n.name for n in graph.nodes if n.name in stage_of]

    def live_after(k: int) -> tuple[str, ...]:
        return tuple(v for v in order if stage_of[v] <= k and last_use.get(v, -1) > k)

    def specs(names: tuple[str, ...]) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
        out = []
        for v in names:
            t = values[v]
            if not isinstance(t, torch.Tensor):
                raise ModelError(f"model {spec}: a value passed between stages is {_describe(t)}, not a tensor")
            out.append((tuple(t.shape), t.dtype))
        return tuple(out)

    stages: list[nn.Module] = []
    prev: tuple[str, ...] = (placeholder.name,)
    for k, n in enumerate(calls):
        last = k == len(calls) - 1
        outs = () if last else live_after(k)
        if not last and not outs:
            raise ModelError(f"model {spec}: stage {k + 1} does not use anything stage {k} computes")
        plan = _Plan(k, n.target, prev, specs(prev), tuple(a.name for a in n.args), tuple(getitems[k]),
                     outs, specs(outs), output.args[0] if last else None)
        stages.append(TracedStage(split_gm.get_submodule(n.target), plan))
        prev = outs
    final = torch.fx.node.map_arg(output.args[0], lambda a: values[a.name])
    while isinstance(final, (tuple, list)) and len(final) == 1:
        final = final[0]
    return stages, list(final.shape) if isinstance(final, torch.Tensor) else None


def _carrier(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    floats = [d for d in dtypes if d.is_floating_point]
    return max(floats, key=lambda d: torch.finfo(d).bits) if floats else torch.get_default_dtype()


class TracedStage(nn.Module):
    """One stage cut by ``torch.distributed.pipelining.pipeline()``, with one tensor in and out.

    The runtime moves one tensor across each stage boundary. A traced stage may need several
    values (a skip connection from an earlier stage, a mask): the stage before packs every value
    still needed later into one flat tensor (cast to the widest floating-point type among them;
    integer and boolean values must be exactly representable in it, which is checked), and this
    stage unpacks it. A boundary that carries one floating-point tensor carries it as it is.
    The stage's submodules are registered under their own names, so parameter names are the
    model's (``transformer.h.2.mlp.c_fc.weight``).
    """

    def __init__(self, graph_module: Any, plan: _Plan) -> None:
        super().__init__()
        # what the stage's graph reaches: the tracer also leaves copies of a tied parameter's
        # other names on stages that never use them, which are left out here
        used = {str(n.target).split(".")[0] for n in graph_module.graph.nodes
                if n.op in ("call_module", "get_attr")}
        for name, child in graph_module.named_children():
            if name in used:
                self.add_module(name, child)
        for name, p in graph_module.named_parameters(recurse=False):
            if name in used:
                self.register_parameter(name, p)
        for name, b in graph_module.named_buffers(recurse=False):
            if name in used:
                self.register_buffer(name, b)
        self._graph = [graph_module]  # not a registered child: its parameters are registered above
        for mod in graph_module.modules():
            if hasattr(mod, "_run_with_interpreter"):
                # the unflattened submodules run their generated code, not torch.fx.Interpreter
                # node by node in Python (the same operations, several times faster)
                mod._run_with_interpreter = False
        self.plan = plan
        self._out_carrier = _carrier([d for _, d in plan.out_specs])

    def __deepcopy__(self, memo: dict[int, Any]) -> TracedStage:
        import copy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecations, not ours
            graph = copy.deepcopy(self._graph[0], memo)
        new = TracedStage(graph, self.plan)
        new.train(self.training)
        return new

    def _apply(self, fn: Any, recurse: bool = True) -> TracedStage:
        super()._apply(fn, recurse)
        self._graph[0]._apply(fn, recurse)  # the same tensors: a no-op unless new ones were made
        return self

    def retarget(self, device: torch.device | str) -> TracedStage:
        """Make the operations that create tensors create them on ``device``.

        The tracer writes the tracing device into operations such as ``arange(..., device=cpu)``;
        after moving a stage's parameters (``.to(device)``), this moves those operations too,
        as PyTorch's own ``Pipe.build_stage`` does. (Dtypes are written in as well: convert the
        model in the factory, before it is traced, not afterwards.)
        """
        import torch.fx

        device = torch.device(device)
        owners = [owner for mod in self._graph[0].modules() for owner in (mod, getattr(mod, "graph_module", None))
                  if owner is not None and isinstance(getattr(owner, "graph", None), torch.fx.Graph)]
        changed: set[int] = set()
        for graph in {id(o.graph): o.graph for o in owners}.values():  # a graph may have two owners
            for node in graph.nodes:
                if node.op == "call_function" and "device" in node.kwargs and node.kwargs["device"] != device:
                    node.update_kwarg("device", device)
                    changed.add(id(graph))
        for owner in owners:
            if id(owner.graph) in changed and isinstance(owner, torch.fx.GraphModule):
                owner.recompile()
        return self

    def forward(self, x: torch.Tensor) -> Any:
        plan = self.plan
        env: dict[str, Any] = dict(zip(plan.in_names, _unpack(x, plan.in_specs, plan.index == 0), strict=True))
        res = self._graph[0](*(env[a] for a in plan.arg_names))
        env[plan.target] = res
        for name, i in plan.getitems:
            env[name] = res[i]
        if plan.output is not None:
            import torch.fx

            out = torch.fx.node.map_arg(plan.output, lambda a: env[a.name])
            while isinstance(out, (tuple, list)) and len(out) == 1:
                out = out[0]
            return out
        return _pack([env[v] for v in plan.out_names], self._out_carrier)


def _pack(values: list[torch.Tensor], carrier: torch.dtype) -> torch.Tensor:
    if len(values) == 1 and values[0].is_floating_point():
        return values[0]
    parts = []
    for v in values:
        if not v.is_floating_point() and v.numel():
            big = int(v.abs().max()) if v.dtype != torch.bool else 1
            if big >= 2 ** _EXACT_INT_BITS.get(carrier, 24):
                raise ValueError(f"an integer value of {big} passed between stages is not exact in {carrier}")
        parts.append(v.reshape(-1).to(carrier))
    return torch.cat(parts)


def _unpack(x: torch.Tensor, specs: Sequence[tuple[tuple[int, ...], torch.dtype]], raw: bool) -> list[torch.Tensor]:
    if raw or (len(specs) == 1 and specs[0][1].is_floating_point):
        return [x]
    sizes = [math.prod(shape) for shape, _ in specs]
    if x.dim() != 1 or x.shape[0] != sum(sizes):
        raise ValueError(f"a packed stage input has shape {tuple(x.shape)}, expected ({sum(sizes)},): "
                         "the microbatch shape differs from the traced one")
    return [p.reshape(shape) if p.dtype == dtype else p.detach().reshape(shape).to(dtype)
            for p, (shape, dtype) in zip(x.split(sizes), specs, strict=True)]


def fingerprint(stages: Sequence[nn.Module]) -> str:
    """A short digest of the stages' parameter values: two processes that built the same initial
    weights give the same text (every rank calls the factory itself; this checks it built the
    model the launching process checked)."""
    import hashlib

    h = hashlib.sha256()
    for stage in stages:
        for name, p in stage.named_parameters():
            v = p.detach().to("cpu", torch.float64).reshape(-1)
            h.update(f"{name}:{tuple(p.shape)}:{float(v.sum())!r}:{float((v * v).sum())!r};".encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------- the check before launch


def check_model(model: PreparedModel, num_microbatches: int) -> str:
    """Run one microbatch of the first batch through the stages (forward, loss, backward).

    Raises :class:`ModelError` naming the factory and the stage that failed; returns a one-line
    summary (stages and their parameter counts). Call it in the parent process, before launch.
    """
    spec = model.name
    try:
        x, y = model.batch(0)
    except Exception as exc:
        raise ModelError(f"model {spec}: batch(0) raised {_brief(exc)}") from None
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"model {spec}: batch(0) must return (inputs tensor, targets); the inputs are {_describe(x)}")
    if x.dim() == 0 or x.shape[0] % num_microbatches:
        raise ModelError(f"model {spec}: a batch of {x.shape[0] if x.dim() else 0} rows does not split into "
                         f"{num_microbatches} microbatches")
    rows = x.shape[0] // num_microbatches
    out: Any = x[:rows]
    if isinstance(y, torch.Tensor):
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise ModelError(f"model {spec}: batch(0) gives {x.shape[0]} input rows but targets of shape "
                             f"{tuple(y.shape)}")
        y = y[:rows]
    with torch.random.fork_rng():
        out = _run_stages(spec, model.stages, out)
        try:
            loss = model.loss_fn(out, y)
        except Exception as exc:
            raise ModelError(f"model {spec}: the loss function failed on the last stage's output: "
                             f"{_brief(exc)}") from None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ModelError(f"model {spec}: the loss function must return a scalar tensor, got "
                             f"{_describe(loss) if not isinstance(loss, torch.Tensor) else tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ModelError(f"model {spec}: the loss does not depend on any parameter that requires grad")
        loss.backward()
    for stage in model.stages:
        stage.zero_grad(set_to_none=True)
    sizes = [sum(p.numel() for p in st.parameters()) for st in model.stages]
    tied = f", {len(model.tied)} tied parameter(s)" if model.tied else ""
    return (f"model {spec}: {len(sizes)} stages ({model.kind}), parameters per stage "
            f"{sizes}{tied}; one microbatch of {rows} runs through, loss {float(loss.detach()):.4g}")
