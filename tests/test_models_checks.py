"""Model intake's checks before launch: every factory mistake is one message naming the factory.

The factories live in files written to a scratch folder, imported from there as a user's would
be (``MODULE:FACTORY`` from the current folder, or ``path/to/file.py:FACTORY``). The checks run
in this process: no worker starts, so none of these tests needs torch.distributed.
"""

from __future__ import annotations

import copy
import itertools
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from schedlang.runtime.intake import ModelError, SyntheticBatches, check_model, prepare_model  # noqa: E402

from schedlang import api  # noqa: E402
from schedlang.cli import main  # noqa: E402

_names = itertools.count()

HEADER = """\
import torch
from torch import nn
from torch.distributed.pipelining import pipe_split
from schedlang.runtime.models import ModelSpec
"""


def _module(tmp_path: Path, body: str) -> str:
    """Write a model file into tmp_path under a fresh module name; return the name."""
    name = f"user_model_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(HEADER + textwrap.dedent(body), encoding="utf-8")
    return name


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # intake puts the current folder first
    return tmp_path


def _error(spec: str, p: int = 2, m: int = 2, split: str | None = None) -> str:
    prog = api.compile("std:1f1b", p=p, m=m)
    with pytest.raises(Exception) as info:
        api.check_model(spec, prog, split)
    assert type(info.value).__name__ == "SchedlangError"
    return str(info.value)


def test_a_module_is_found_in_the_current_folder_without_pythonpath(in_tmp: Path) -> None:
    name = _module(in_tmp, """
        def make(num_stages, num_microbatches):
            return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 3))
    """)
    summary = api.check_model(f"{name}:make", api.compile("std:1f1b", p=2, m=2)).summary
    assert summary.startswith(f"model {name}:make: 2 stages (sequential), parameters per stage [40, 99]")


def test_a_file_path_names_the_factory_and_its_folder_comes_first(in_tmp: Path) -> None:
    sub = in_tmp / "sub"
    sub.mkdir()
    (sub / "helper_blocks.py").write_text("from torch import nn\nWIDTH = 5\n", encoding="utf-8")
    (sub / "net.py").write_text(HEADER + textwrap.dedent("""
        from helper_blocks import WIDTH
        def make(num_stages, num_microbatches):
            return [nn.Linear(WIDTH, WIDTH) for _ in range(3)]
    """), encoding="utf-8")
    model = prepare_model("sub/net.py:make", 3, 2)
    assert model.kind == "sequential" and len(model.stages) == 3
    assert check_model(model, 2).startswith("model sub/net.py:make: 3 stages")


def test_defaults_cross_entropy_synthetic_batches_adamw(in_tmp: Path) -> None:
    name = _module(in_tmp, """
        def make(num_stages, num_microbatches):
            return nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    """)
    model = prepare_model(f"{name}:make", 2, 4)
    assert isinstance(model.batch, SyntheticBatches)
    x, y = model.batch(0)
    assert x.shape == (16, 4) and x.dtype == torch.float32  # 4 rows per microbatch
    assert y.shape == (16,) and int(y.min()) >= 0 and int(y.max()) < 3
    assert not torch.equal(x, model.batch(1)[0])  # new data every step
    assert torch.equal(x, model.batch(0)[0])  # and the same data for the same step
    opt = model.optimizer([p for s in model.stages for p in s.parameters()])
    assert type(opt).__name__ == "AdamW" and opt.defaults["lr"] == 1e-3
    out = model.stages[1](model.stages[0](x))
    want = torch.nn.functional.cross_entropy(out, y)
    torch.testing.assert_close(model.loss_fn(out, y), want)


def test_the_factory_may_override_loss_batches_and_optimizer(in_tmp: Path) -> None:
    name = _module(in_tmp, """
        def mse(out, y):
            return ((out - y) ** 2).mean()
        def batch(step):
            g = torch.Generator().manual_seed(step)
            return torch.randn(6, 4, generator=g), torch.randn(6, 2, generator=g)
        def make(num_stages, num_microbatches):
            return ModelSpec(model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), loss_fn=mse,
                             batch=batch, optimizer=lambda ps: torch.optim.SGD(ps, lr=0.5))
    """)
    model = prepare_model(f"{name}:make", 2, 3)
    assert model.loss_fn.__name__ == "mse" and model.batch.__name__ == "batch"
    assert type(model.optimizer(list(model.stages[0].parameters()))).__name__ == "SGD"
    assert "one microbatch of 2 runs through" in check_model(model, 3)


MISTAKES = [
    # (factory body, schedule p, m, --split, the message after "model SPEC: ")
    ("", 2, 2, None, "{mod} ({file}) has no attribute 'make'"),
    ("make = 3\n", 2, 2, None, "'make' is a int, not a callable factory"),
    ("def make(num_stages, num_microbatches):\n    raise RuntimeError('no GPU here')\n", 2, 2, None,
     "the factory {spec}(2, 2) raised RuntimeError: no GPU here ({file}:6)"),
    ("def make(num_stages):\n    return nn.Linear(2, 2)\n", 2, 2, None,
     "the factory {spec}(2, 2) raised TypeError: make() takes 1 positional argument but 2 were given; "
     "a factory takes (num_stages, num_microbatches)"),
    ("def make(n, m):\n    return {'model': nn.Linear(2, 2)}\n", 2, 2, None,
     "the factory returned a dict; expected a ModelSpec, an nn.Module or a list of nn.Module blocks"),
    ("def make(n, m):\n    return ModelSpec(stages=[nn.Linear(2, 2)] * 3)\n", 2, 2, None,
     "the factory built 3 stages, but the schedule has 2"),
    ("def make(n, m):\n    return nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))\n", 4, 4, None,
     "cannot cut 2 blocks into 4 stages (the schedule's count); give more blocks"),
    ("def make(n, m):\n    return nn.Sequential(nn.Linear(4, 5), nn.Linear(6, 3))\n", 2, 2, None,
     "stage 1 failed on a microbatch of 4 rows: RuntimeError: mat1 and mat2 shapes cannot be multiplied "
     "(4x5 and 6x3)"),
    ("def make(n, m):\n    return ModelSpec(model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), "
     "example=torch.zeros(5, 4))\n", 2, 2, None, "a batch of 5 rows does not split into 2 microbatches"),
    ("def make(n, m):\n    return nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 3))\n", 2, 2, None,
     "cannot tell what input the model takes; return ModelSpec(..., example=<one batch of inputs>) "
     "or ModelSpec(..., batch=...)"),
    ("class Three(nn.Module):\n"
     "    def __init__(self):\n        super().__init__()\n        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)\n"
     "    def forward(self, x):\n        x = self.a(x)\n        pipe_split()\n        x = self.b(x)\n        pipe_split()\n"
     "        return self.c(x)\n"
     "def make(n, m):\n    return ModelSpec(model=Three(), example=torch.zeros(4, 3))\n", 2, 2, None,
     "its pipe_split() calls make 3 stages, but the schedule has 2"),
    ("class Net(nn.Module):\n"
     "    def __init__(self):\n        super().__init__()\n        self.body = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])\n"
     "    def forward(self, x):\n        return self.body[1](self.body[0](x))\n"
     "def make(n, m):\n    return ModelSpec(model=Net(), example=torch.zeros(4, 3))\n", 2, 2, "body.2",
     "--split names body.2, which the model does not have (its modules include body, body.0, body.1, ...)"),
    ("class Net(nn.Module):\n"
     "    def __init__(self):\n        super().__init__()\n        self.body = nn.ModuleList([nn.Linear(3, 3), nn.Linear(3, 3)])\n"
     "    def forward(self, x):\n        return self.body[1](self.body[0](x))\n"
     "def make(n, m):\n    return ModelSpec(model=Net(), example=torch.zeros(4, 3))\n", 2, 2, None,
     "without pipe_split() calls or --split it has 1 stage, but the schedule has 2"),
    ("def make(n, m):\n    return ModelSpec(model=nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3)), "
     "loss_fn=lambda out, y: out.sum(dim=1))\n", 2, 2, None,
     "the loss function must return a scalar tensor, got (4,)"),
    ("import no_such_package_here\n", 2, 2, None,
     "importing {mod} failed: ModuleNotFoundError: No module named 'no_such_package_here' ({file}:5)"),
]


@pytest.mark.parametrize(("body", "p", "m", "split", "want"), MISTAKES, ids=[str(i) for i in range(len(MISTAKES))])
def test_each_factory_mistake_is_one_message_naming_the_factory(in_tmp: Path, body: str, p: int, m: int,
                                                                split: str | None, want: str) -> None:
    mod = _module(in_tmp, body)
    spec = f"{mod}:make"
    text = _error(spec, p, m, split)
    expected = "schedlang: error: model " + spec + ": " + want.format(mod=mod, spec=spec, file=in_tmp / f"{mod}.py")
    assert text == expected


def test_a_module_that_is_nowhere(in_tmp: Path) -> None:
    assert _error("nowhere_to_be_found:make") == (
        f"schedlang: error: model nowhere_to_be_found:make: no module named 'nowhere_to_be_found' in the "
        f"current folder ({in_tmp}) or on the Python path")
    assert _error("gone/model.py:make") == (
        f"schedlang: error: model gone/model.py:make: no file gone/model.py (from {in_tmp})")
    assert _error("just-a-name") == (
        "schedlang: error: model just-a-name: expected MODULE:FACTORY or path/to/file.py:FACTORY")


def test_the_command_line_says_it_once_without_a_traceback(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _module(in_tmp, "def make(n, m):\n    return ModelSpec(stages=[nn.Linear(2, 2)] * 3)\n")
    for command in ("run", "profile"):
        status = main([command, "std:zb-h1", "--set", "p=2", "--model", f"{mod}:make"])
        err = capsys.readouterr().err
        assert status == 1
        assert err == f"schedlang: error: model {mod}:make: the factory built 3 stages, but the schedule has 2\n"


def test_a_split_for_a_factory_that_cut_its_stages_itself(in_tmp: Path) -> None:
    mod = _module(in_tmp, "def make(n, m):\n    return ModelSpec(stages=[nn.Linear(2, 2), nn.Linear(2, 2)])\n")
    with pytest.raises(ModelError, match="the factory cut the stages itself; --split does not apply"):
        prepare_model(f"{mod}:make", 2, 2, ["x"])


def test_kernels_need_layers_they_can_split(in_tmp: Path) -> None:
    """A traced model's layers are traced operations: the kernels would split nothing, so say so."""
    mod = _module(in_tmp, """
        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)
            def forward(self, x):
                x = self.a(x)
                pipe_split()
                return self.b(x)
        def make(n, m):
            return ModelSpec(model=Two(), example=torch.zeros(4, 3))
    """)
    prog = api.compile("std:zb-h1", p=2, m=2)
    with pytest.raises(Exception) as info:
        api.check_model(f"{mod}:make", prog, split_backward="kernels")
    assert str(info.value) == (
        f"schedlang: error: model {mod}:make: --split-backward kernels splits nn.Linear and nn.LayerNorm "
        "layers, and stages 0, 1 have none (a traced model's layers are traced operations); use "
        "--split-backward autograd")
    assert api.check_model(f"{mod}:make", prog).summary.startswith(f"model {mod}:make: 2 stages (traced)")


def test_a_traced_stage_moves_its_tensor_creating_operations_with_it() -> None:
    """The tracer writes the device into operations like arange(device=cpu); retarget moves them."""
    zoo = Path(__file__).with_name("model_zoo.py")
    model = prepare_model(f"{zoo}:gpt2", 2, 2, ["transformer.h.1"])

    def devices(stage: torch.nn.Module) -> set[str]:
        return {str(n.kwargs["device"]) for m in stage._graph[0].modules()  # type: ignore[attr-defined]
                for g in [getattr(m, "graph", None)] if isinstance(g, torch.fx.Graph)
                for n in g.nodes if n.op == "call_function" and "device" in n.kwargs}

    assert devices(model.stages[0]) == {"cpu"}  # positions and the causal mask are made in the graph
    moved = copy.deepcopy(model.stages[0]).retarget("meta")
    assert devices(moved) == {"meta"} and devices(model.stages[0]) == {"cpu"}
    x = model.batch(0)[0][:2]
    # parameters and operations on another device ("meta" stands in for a GPU here): the stage
    # runs there, so no operation still makes its tensors on the CPU
    on_meta = copy.deepcopy(model.stages[0]).to("meta").retarget("meta")
    out = on_meta(x.to("meta"))
    assert out.device.type == "meta" and out.shape == model.stages[0](x).shape
    back = moved.retarget("cpu")
    torch.testing.assert_close(back(x), model.stages[0](x), rtol=0, atol=0)


def test_a_traced_model_with_its_own_batches_needs_no_example(in_tmp: Path) -> None:
    mod = _module(in_tmp, """
        class Two(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 1)
            def forward(self, x):
                x = torch.relu(self.a(x))
                pipe_split()
                return self.b(x)
        def batch(step):
            g = torch.Generator().manual_seed(step)
            x = torch.randn(6, 3, generator=g)
            return x, x.sum(1, keepdim=True)
        def make(n, m):
            return ModelSpec(model=Two(), batch=batch, loss_fn=nn.functional.mse_loss)
    """)
    model = prepare_model(f"{mod}:make", 2, 3)
    assert model.kind == "traced" and tuple(model.example.shape) == (6, 3)
    assert "one microbatch of 2 runs through" in check_model(model, 3)
