"""``--config FILE``: parameters from a JSON or YAML file with the keys of the common 1F1B
pipeline visualizer (PP-Schedule-Visualization's ``pipeline.py --config``), or any schedlang
parameter by name.

Keys and what they set:

========================  =================================================================
``num_stages``            ``p`` (ranks; one stage each in 1F1B)
``num_batches``           ``m`` (microbatches)
``forward_times``         ``tf`` (a number or one value per stage)
``backward_times``        ``tbw``: the visualizer's backward is B and W together, which is the
                          fused backward of ``std:1f1b`` / ``std:gpipe`` (``std:fused``)
``p2p_time``              ``tc`` (time to move an activation or a gradient between ranks)
``output_file``           the output path (``-o``) of the command
any other name            the schedlang parameter of that name
========================  =================================================================

A key the program does not have as a parameter is an error that names the key, located at the
key in the file. The values must be numbers, booleans, strings or lists of them (a YAML mapping
such as per-stage ``{0: 0.8, 1: 1.2}`` is not accepted: give a list). JSON is read with the
standard library; YAML needs PyYAML (``pip install schedlang[config]``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from schedlang.ir import Value
from schedlang.source import SchedlangError, Source, Span

# visualizer key -> schedlang parameter (None: not a parameter)
KEYS: dict[str, str | None] = {
    "num_stages": "p",
    "num_batches": "m",
    "forward_times": "tf",
    "backward_times": "tbw",
    "p2p_time": "tc",
    "output_file": None,
}


@dataclass(frozen=True)
class Config:
    """What a config file says: parameter overrides (with the span of each key, for errors), the
    config key each parameter came from, and the output path if it names one."""

    params: dict[str, Value] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # parameter -> the key that set it
    output: str | None = None


def _key_span(src: Source, key: str, yaml_style: bool) -> Span:
    """Where ``key`` is written in the file (its first occurrence as a key), for errors."""
    k = re.escape(key)
    pattern = rf"^\s*([\"']?)({k})\1\s*:" if yaml_style else rf"\"({k})\"\s*:"
    for lineno, line in enumerate(src.text.splitlines(), 1):
        mt = re.search(pattern, line)
        if mt:
            col = mt.start(mt.lastindex or 1) + 1
            return Span(src, lineno, col, lineno, col + len(key))
    return Span(src, 1, 1)


def _value(v: Any, key: str, span: Span) -> Value:
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list):
        return tuple(_value(x, key, span) for x in v)
    if isinstance(v, dict):
        raise SchedlangError(f"config key '{key}': a mapping is not a parameter value; give a number or a list "
                             "(one value per stage)", span)
    raise SchedlangError(f"config key '{key}': unsupported value {v!r} (use a number, a boolean, a string or a list)",
                         span)


def parse_config(text: str, name: str) -> Config:
    """Read a config from its text; ``name`` (the file name) picks JSON (``.json``) or YAML."""
    src = Source(name, text)
    yaml_style = not name.lower().endswith(".json")
    try:
        if yaml_style:
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise SchedlangError(f"reading '{name}' as YAML needs PyYAML (pip install pyyaml); or give a .json "
                                     "file") from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchedlangError(f"not valid JSON: {exc.msg}", Span(src, exc.lineno, exc.colno)) from None
    except SchedlangError:
        raise
    except Exception as exc:  # yaml.YAMLError: its marks carry 0-based positions
        mark = getattr(exc, "problem_mark", None)
        where = Span(src, mark.line + 1, mark.column + 1) if mark is not None else Span(src, 1, 1)
        raise SchedlangError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", where) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SchedlangError("a config file holds one mapping of keys to values (num_stages, num_batches, ...)",
                             Span(src, 1, 1))
    params: dict[str, Value] = {}
    spans: dict[str, Span] = {}
    keys: dict[str, str] = {}
    output: str | None = None
    for key, raw in data.items():
        key = str(key)
        span = _key_span(src, key, yaml_style)
        if key == "output_file":
            if not isinstance(raw, str) or not raw:
                raise SchedlangError("config key 'output_file' must be a file name", span)
            output = raw
            continue
        target = KEYS.get(key) or key
        if not target.isidentifier():
            raise SchedlangError(f"config key '{key}' is not a parameter name", span)
        if target in params:
            raise SchedlangError(f"config key '{key}' sets '{target}', which '{keys[target]}' already sets", span)
        params[target] = _value(raw, key, span)
        spans[target] = span
        keys[target] = key
    return Config(params, spans, keys, output)


def read_config(path: str) -> Config:
    """Read a config file (see the module docstring)."""
    from schedlang.load import read_text_file

    return parse_config(read_text_file(path).text, path)


def check_config(config: Config, declared: list[str], program: str) -> None:
    """Every parameter the config sets is one the program declares; otherwise an error at the key
    that names it (and what it maps to, for the visualizer's keys)."""
    for name, key in config.keys.items():
        if name in declared:
            continue
        known = f"(parameters: {', '.join(declared) or 'none'})"
        if name == "tbw":
            raise SchedlangError(f"config key '{key}' sets 'tbw', the fused backward's time (B and W together), which "
                                 f"'{program}' does not have: give tb and tw for split B / W programs {known}",
                                 config.spans[name])
        via = f" (it sets '{name}')" if key != name else ""
        raise SchedlangError(f"config key '{key}'{via}: '{program}' has no such parameter {known}", config.spans[name])
