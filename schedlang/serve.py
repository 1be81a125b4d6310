"""``schedlang serve``: a schedule explorer in the browser, on this machine only by default.

The page (``schedlang/web/``: one HTML file, one small script, one style sheet; no build step,
nothing fetched from elsewhere) has the program text in an editor on one side and, on the other,
the pipeline picture (:func:`schedlang.render.scene_svg`), the bubble rate and the per-rank table
(busy, idle, peak memory), redrawn as the text or the controls change. The controls set the
parameters the program declares (schedule, ``p``, ``m``, ``v``, per-stage op times ``tf``,
``tb``, ``tw``, ``tc``, ``mem_limit``), exactly as ``--set`` does; a control for a parameter the
program does not declare is disabled, never silently ignored. Below: a compare view (several
programs on the same overrides), the CP-SAT optimizer under a visible time budget with its gap,
and downloads (SVG, PNG, the ``.sched`` program, PyTorch's CSV, the Chrome trace).

Everything the page asks for is one of the functions below, each taking the editor's text and
the controls' overrides and returning plain data; a user error comes back as data too (the
rendered ``file:line:col: error`` message and its place, which the page marks in the editor),
never as a traceback. :func:`create_app` wraps them in a Flask application and :func:`serve` runs
it; Flask is needed only for those two (``pip install 'schedlang[serve]'``).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping
from importlib import resources
from typing import Any

from schedlang import api
from schedlang.ir import Program
from schedlang.source import SchedlangError, Span, cli_source

# The controls of the page: parameter name -> label. A control is enabled when the program
# declares a parameter of that name (the standard library's names).
CONTROLS: dict[str, str] = {
    "p": "ranks p", "m": "microbatches m", "v": "chunks per rank v",
    "tf": "T_F (per stage)", "tb": "T_B (per stage)", "tw": "T_W (per stage)",
    "tc": "comm T_comm", "mem_limit": "memory limit",
}
MAX_OPTIMIZE_SECONDS = 120.0
DOWNLOADS: dict[str, tuple[str, str]] = {  # format -> (file extension, media type)
    "svg": ("svg", "image/svg+xml"),
    "png": ("png", "image/png"),
    "sched": ("sched", "text/plain; charset=utf-8"),
    "torch-csv": ("csv", "text/csv; charset=utf-8"),
    "chrome-trace": ("trace.json", "application/json"),
}


def error_data(exc: SchedlangError, editor: str) -> dict[str, Any]:
    """A user error as the page shows it: the rendered message, and its place in the editor
    (``line``, ``col``, ``end_line``, ``end_col``, 1-based) when it lies in the editor's text, or
    the control it came from (``control``) when it lies in an override."""
    out: dict[str, Any] = {"message": exc.message, "rendered": exc.render()}
    span = exc.span
    if span is not None and span.source.name == editor:
        out.update(line=span.line, col=span.col, end_line=span.end_line or span.line,
                   end_col=span.end_col or span.col + 1)
    elif span is not None and span.source.name.startswith("<control "):
        out["control"] = span.source.name.removeprefix("<control ").removesuffix(">")
    return out


def _overrides(params: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Span]]:
    """The controls' texts as parameter values (empty: left at the program's default)."""
    values: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    for name, text in params.items():
        text = str(text).strip()
        if not text:
            continue
        where = f"<control {name}>"
        # a per-stage list may be typed without brackets: "1, 2, 1.5"
        if "," in text and not text.startswith("["):
            text = f"[{text}]"
        try:
            values[name] = api.parse_value(text, where)
        except SchedlangError as exc:
            raise SchedlangError(f"{name}: {exc.message}", Span(cli_source(text, where), 1, 1)) from None
        spans[name] = Span(cli_source(text, where), 1, 1, 1, len(text) + 1)
    return values, spans


def _lower(text: str, name: str, params: Mapping[str, str]) -> tuple[Program, list[str]]:
    """Lower the editor's text under the controls' overrides, each applied only where the program
    declares it; returns the program and the overrides it does not declare."""
    from schedlang.source import Source

    values, spans = _overrides(params)
    declared = declared_params(text, name)
    ignored = sorted(k for k in values if k not in declared)
    used = {k: v for k, v in values.items() if k in declared}
    return api.lower_source(Source(name, text), used, spans), ignored


def declared_params(text: str, name: str) -> list[str]:
    """The names of the parameters the text declares (its own and its imports')."""
    from schedlang import syntax as S
    from schedlang.load import load_program_items
    from schedlang.source import Source

    return [it.decl.name for it in load_program_items(Source(name, text)) if isinstance(it.decl, S.ParamDecl)]


def op_table(program: Program, sim: Any) -> list[dict[str, Any]]:
    """Every op as the page's hover shows it: name, rank, start, end and the rank's memory after
    it (by op id, the ``data-op`` of the picture's boxes)."""
    from schedlang.simulate import memory_profile

    mem_after = [0.0] * len(program.ops)
    for r, slots in enumerate(program.orders.ranks):
        levels = iter(memory_profile(program, r))
        for slot in slots:
            for k in slot:
                mem_after[k] = next(levels)
    return [{"name": o.label, "rank": o.rank, "start": sim.start[o.id], "end": sim.end[o.id],
             "mem": o.mem, "mem_after": mem_after[o.id]} for o in program.ops]


def _figures(program: Program, width: int = 0) -> dict[str, Any]:
    from schedlang.render import scene_svg

    sim = api.simulate(program)
    d = api.simulation_dict(program)
    return {"name": program.name, "num_ranks": program.num_ranks, "num_stages": program.num_stages,
            "num_microbatches": program.num_microbatches, "num_ops": len(program.ops),
            "origin": program.orders.origin, "makespan": d["makespan"], "cost": d["cost"],
            "bubble": d["bubble"], "bubble_rate": d["bubble_rate"], "ranks": d["ranks"],
            "svg": scene_svg(api.render(program, sim, memory=True, width=width)),
            "ops": op_table(program, sim)}


def view(text: str, name: str = "explorer.sched", params: Mapping[str, str] | None = None,
         scheduler: str | None = None) -> dict[str, Any]:
    """The right-hand side of the page for the editor's text: ``{"ok": True, picture and
    figures, "params": {declared parameter: its value}, "ignored": [overrides not declared]}``,
    or ``{"ok": False, "error": ...}`` (see :func:`error_data`)."""
    try:
        program, ignored = _lower(text, name, params or {})
        if scheduler:
            program = api.with_scheduler(program, scheduler)
        program = api.schedule(program)
        out = {"ok": True, **_figures(program), "ignored": ignored,
               "params": {k: _plain(v) for k, v in program.params},
               "warnings": [w.render("warning") for w in program.warnings]}
        return out
    except SchedlangError as exc:
        return {"ok": False, "error": error_data(exc, name)}


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def jsonable(x: Any) -> Any:
    """``x`` with every non-finite float written as schedlang writes it (``inf``, ``-inf``): JSON
    has no infinity, and a memory limit or a bound may be one."""
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "-inf" if x < 0 else "nan"
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


def compare(text: str, name: str, others: list[str], params: Mapping[str, str] | None = None
            ) -> dict[str, Any]:
    """The editor's program and each of ``others`` (``std:NAME`` or file paths) on the same
    overrides (each applied where declared): one row each with its figures and picture, or its
    error. The pictures share one time scale (a longer schedule is a wider picture)."""
    from schedlang.load import read_source
    from schedlang.render import Style

    done: list[tuple[str, Program | SchedlangError, list[str]]] = []
    for label, src_text, src_name in [("editor", text, name)] + [(o, None, o) for o in others]:
        try:
            if src_text is None:
                src_text = read_source(src_name).text
            program, ignored = _lower(src_text, src_name, params or {})
            done.append((label, api.schedule(program), ignored))
        except SchedlangError as exc:
            done.append((label, exc, []))
    sims = {label: api.simulate(p) for label, p, _ in done if isinstance(p, Program)}
    longest = max((s.makespan for s in sims.values()), default=0.0) or 1.0
    margins = Style().left + Style().right
    rows = []
    for label, p, ignored in done:
        if not isinstance(p, Program):
            rows.append({"program": label, "ok": False, "error": error_data(p, name)})
            continue
        width = max(200, round(margins + 800 * sims[label].makespan / longest))
        fig = _figures(p, width=width)
        rows.append({"program": label, "ok": True, "ignored": ignored,
                     **{k: fig[k] for k in ("bubble_rate", "makespan", "cost", "svg", "origin",
                                            "num_ranks", "num_stages", "num_microbatches")},
                     "peak_memory": [r["peak_memory"] for r in fig["ranks"]]})
    return {"ok": True, "rows": rows}


def optimize(text: str, name: str = "explorer.sched", params: Mapping[str, str] | None = None,
             time_limit: float = 5.0) -> dict[str, Any]:
    """Run the CP-SAT optimizer on the editor's program with a wall-clock time budget in seconds
    (at most :data:`MAX_OPTIMIZE_SECONDS`): the report (status,
    objective, bound, gap), the optimized picture and figures, and the optimized program as text
    (``--emit sched``)."""
    try:
        if not 0 < time_limit <= MAX_OPTIMIZE_SECONDS:
            raise SchedlangError(f"the time budget must be more than 0 and at most "
                                 f"{MAX_OPTIMIZE_SECONDS:g} seconds, got {time_limit:g}")
        program, ignored = _lower(text, name, params or {})
        # time_limit is the optimizer's wall-clock budget for the whole run
        optimized, report = api.optimize(program, time_limit=time_limit, seed=0, workers=1)
        rep = report.as_dict()
        return {"ok": True, **_figures(optimized), "ignored": ignored, "report": rep,
                "summary": report.summary(), "time_limit": time_limit,
                "sched": api.emit(optimized, "sched")}
    except SchedlangError as exc:
        return {"ok": False, "error": error_data(exc, name)}


def download(text: str, name: str, params: Mapping[str, str] | None, fmt: str) -> tuple[bytes, str, str]:
    """The editor's program in a download format (:data:`DOWNLOADS`): ``(content, media type,
    file name)``. Raises :class:`SchedlangError` for a bad program or format."""
    if fmt not in DOWNLOADS:
        raise SchedlangError(f"unknown download format '{fmt}' (formats: {', '.join(DOWNLOADS)})")
    program, _ = _lower(text, name, params or {})
    program = api.schedule(program)
    ext, media = DOWNLOADS[fmt]
    base = os.path.splitext(os.path.basename(name))[0] or "schedule"
    if fmt == "png":
        from schedlang.render import scene_png

        with tempfile.TemporaryDirectory(prefix="schedlang-serve-") as tmp:
            path = os.path.join(tmp, "out.png")
            scene_png(api.render(program, memory=True), path)
            with open(path, "rb") as fh:
                data = fh.read()
    elif fmt == "svg":
        from schedlang.render import scene_svg

        data = scene_svg(api.render(program, memory=True)).encode()
    else:
        data = api.emit(program, fmt).encode()
    return data, media, f"{base}.{ext}"


def builtin_sources() -> dict[str, str]:
    """Every built-in program with a schedule: ``std:NAME`` -> its text (the schedule menu)."""
    from schedlang.load import read_source

    return {e.name: read_source(e.name).text for e in api.builtins() if e.group == "schedule"}


def page_file(name: str) -> str:
    """One of the page's files (``index.html``, ``explorer.js``, ``explorer.css``)."""
    return resources.files("schedlang.web").joinpath(name).read_text("utf-8")


def initial_program(path: str | None) -> tuple[str, str]:
    """The editor's first text and its name: ``path`` (a file or ``std:NAME``), or ``std:zb-h1``."""
    from schedlang.load import read_source

    source = read_source(path or "std:zb-h1")
    name = source.name if path and not path.startswith("std:") else "explorer.sched"
    return source.text, name


def create_app(path: str | None = None) -> Any:
    """The Flask application of the explorer, its editor starting with ``path``'s text."""
    try:
        from flask import Flask, Response, jsonify, request
    except ModuleNotFoundError:
        raise SchedlangError("schedlang serve needs Flask: pip install 'schedlang[serve]'") from None
    text, name = initial_program(path)
    app = Flask("schedlang.serve", static_folder=None)

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        return data if isinstance(data, dict) else {}

    def params_of(data: dict[str, Any]) -> dict[str, str]:
        p = data.get("params") or {}
        return {str(k): str(v) for k, v in p.items()} if isinstance(p, dict) else {}

    @app.get("/")
    def index() -> Response:
        return Response(page_file("index.html"), mimetype="text/html")

    @app.get("/explorer.js")
    def script() -> Response:
        return Response(page_file("explorer.js"), mimetype="text/javascript")

    @app.get("/explorer.css")
    def style() -> Response:
        return Response(page_file("explorer.css"), mimetype="text/css")

    @app.get("/api/start")
    def start() -> Response:
        return jsonify({"text": text, "name": name, "builtins": builtin_sources(),
                        "controls": list(CONTROLS.items()), "downloads": list(DOWNLOADS),
                        "max_optimize_seconds": MAX_OPTIMIZE_SECONDS})

    @app.post("/api/view")
    def view_route() -> Response:
        d = body()
        return jsonify(jsonable(view(str(d.get("text", "")), str(d.get("name") or name), params_of(d))))

    @app.post("/api/compare")
    def compare_route() -> Response:
        d = body()
        others = [str(x) for x in d.get("others") or [] if isinstance(x, str)]
        return jsonify(jsonable(compare(str(d.get("text", "")), str(d.get("name") or name), others, params_of(d))))

    @app.post("/api/optimize")
    def optimize_route() -> Response:
        d = body()
        try:
            budget = float(d.get("time_limit", 5.0))
        except (TypeError, ValueError):
            budget = -1.0
        return jsonify(jsonable(optimize(str(d.get("text", "")), str(d.get("name") or name), params_of(d), budget)))

    @app.post("/api/download/<fmt>")
    def download_route(fmt: str) -> Response:
        d = body()
        src = str(d.get("name") or name)
        try:
            data, media, filename = download(str(d.get("text", "")), src, params_of(d), fmt)
        except SchedlangError as exc:
            return Response(exc.render(), status=400, mimetype="text/plain")
        return Response(data, mimetype=media,
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    app.register_error_handler(Exception, _internal_error)
    return app


def _internal_error(exc: Exception) -> tuple[Any, int]:
    """An HTTP error or an internal bug, as the page's error data: plainly, never a traceback."""
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    if isinstance(exc, HTTPException):
        return jsonify({"ok": False, "error": {"message": str(exc), "rendered": str(exc)}}), exc.code or 500
    msg = f"internal error: {type(exc).__name__}: {exc} (please report it)"
    return jsonify({"ok": False, "error": {"message": msg, "rendered": msg}}), 500


def make_server(path: str | None = None, host: str = "127.0.0.1", port: int = 8765) -> Any:
    """A threaded WSGI server of :func:`create_app` bound to ``host:port`` (port 0: any free
    port; read it from ``server.server_port``). Call ``serve_forever()`` and ``shutdown()``."""
    from werkzeug.serving import make_server as _make_server

    if not 0 <= port <= 65535:
        raise SchedlangError(f"--port {port} is not a TCP port (0 to 65535)")
    app = create_app(path)
    try:
        return _make_server(host, port, app, threaded=True)
    except OSError as exc:
        raise SchedlangError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
