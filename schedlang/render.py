"""Pictures of a schedule: the classic pipeline diagram, as SVG (no dependency) or PNG (Pillow).

One row per rank, time across. Every op is a box coloured by its kind (F blue, B green, W
orange, BW purple, user kinds from a further palette; a rank's second, third... stage is drawn
lighter, so interleaved and V schedules show their chunks) with its microbatch number inside
when the box is wide enough (when most boxes are too narrow, as at p = 32, m = 128, only every
tenth microbatch keeps its number). Ops overlapped in one slot
split the row's height. Inside a rank's span (first start to last end), idle time is a hatched
band; the start offset before the first op is left blank. A cross-rank dependency with a latency
is a thin grey line from the end of its source to the moment its data arrives on the target row,
so communication gaps are visible. With ``memory=True`` a band under each row plots the rank's
activation memory (step at each op end, in order; the dashed line is the rank's limit). The
title gives the bubble rate, the makespan and the peak memory.

Both formats draw the same :class:`Scene` (a flat list of rectangles, lines, polylines and
texts in pixel coordinates) built by :func:`layout`, so tests can check the picture's content:
the SVG's op boxes carry ``class="op"`` and ``data-op``/``data-rank`` attributes, rows carry
``data-rank``/``data-y``/``data-h``, and the ops group carries ``data-x0`` (pixel of time 0) and
``data-scale`` (pixels per time unit).

``schedlang compile --emit svg`` calls :func:`render_svg` (see :mod:`schedlang.emitters`).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

from schedlang.ir import Program, Role
from schedlang.simulate import Simulation, simulate
from schedlang.source import SchedlangError

ROLE_COLOURS = {Role.F: "#4e79a7", Role.B: "#59a14f", Role.W: "#f28e2b", Role.BW: "#8e6bb8"}
USER_COLOURS = ("#e15759", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac", "#b07aa1")
IDLE_COLOUR = "#d9534f"
COMM_COLOUR = "#555555"
MEM_COLOUR = "#2b6cb0"
BACKGROUND = "#ffffff"
ROW_BACKGROUND = "#f4f4f4"
TEXT_COLOUR = "#222222"


# ------------------------------------------------------------------ scene


@dataclass(frozen=True, slots=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    fill: str
    cls: str
    tip: str = ""
    data: tuple[tuple[str, str], ...] = ()
    opacity: float = 1.0
    stroke: str = ""  # a thin outline (op boxes: white, so neighbouring boxes stay apart)


@dataclass(frozen=True, slots=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    stroke: str
    cls: str
    width: float = 1.0
    dash: bool = False
    opacity: float = 1.0


@dataclass(frozen=True, slots=True)
class Poly:
    points: tuple[tuple[float, float], ...]
    stroke: str
    cls: str
    width: float = 1.0


@dataclass(frozen=True, slots=True)
class Text:
    x: float
    y: float  # baseline
    text: str
    size: float
    cls: str
    anchor: str = "start"  # start, middle, end
    fill: str = TEXT_COLOUR
    bold: bool = False


Item = Rect | Line | Poly | Text


@dataclass
class Scene:
    """A picture in pixel coordinates; ``groups`` keeps the items in drawing order by layer."""

    width: int
    height: int
    x0: float  # pixel of time 0
    scale: float  # pixels per time unit
    rows: list[tuple[int, float, float]] = field(default_factory=list)  # (rank, y, h)
    groups: dict[str, list[Item]] = field(default_factory=dict)

    def add(self, group: str, item: Item) -> None:
        self.groups.setdefault(group, []).append(item)


@dataclass(frozen=True)
class Style:
    """Sizes in pixels. ``width`` 0 picks one from the number of slots per rank."""

    width: int = 0
    row_h: float = 20.0
    row_gap: float = 4.0
    mem_h: float = 24.0
    left: float = 64.0
    right: float = 24.0
    top: float = 58.0
    bottom: float = 56.0
    font: float = 11.0
    char_w: float = 0.62  # average glyph width as a fraction of the font size


# ------------------------------------------------------------------ colours


def _lighten(hex_colour: str, amount: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    h, lum, s = colorsys.rgb_to_hls(r, g, b)
    lum = lum + (1 - lum) * amount
    r, g, b = colorsys.hls_to_rgb(h, lum, s)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def kind_colours(program: Program) -> dict[str, str]:
    """A colour per op kind: by role for the first kind of each role, then from the user palette."""
    out: dict[str, str] = {}
    used: set[Role] = set()
    extra = 0
    for k in program.kinds:
        if k.role in ROLE_COLOURS and k.role not in used:
            out[k.name] = ROLE_COLOURS[k.role]
            used.add(k.role)
        else:
            out[k.name] = USER_COLOURS[extra % len(USER_COLOURS)]
            extra += 1
    return out


def _text_colour(fill: str) -> str:
    r, g, b = (int(fill[i:i + 2], 16) for i in (1, 3, 5))
    return "#ffffff" if 0.299 * r + 0.587 * g + 0.114 * b < 150 else "#111111"


# ------------------------------------------------------------------ layout


def _nice_step(span: float, target: int) -> float:
    raw = span / max(target, 1)
    if raw <= 0:
        return 1.0
    mag = 10 ** math.floor(math.log10(raw))
    for f in (1, 2, 2.5, 5, 10):
        if raw <= f * mag:
            return f * mag
    return 10 * mag


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def layout(program: Program, sim: Simulation | None = None, *, memory: bool = False,
           style: Style | None = None) -> Scene:
    """Lay the picture out (see the module docstring). ``sim`` defaults to ``simulate(program)``."""
    sim = sim or simulate(program)
    st = style or Style()
    slots_per_rank = max((len(s) for s in program.orders.ranks), default=1)
    width = st.width or int(min(4000, max(1000, st.left + st.right + 12 * slots_per_rank)))
    band = st.row_h + (st.mem_h if memory else 0.0) + st.row_gap
    height = int(st.top + band * program.num_ranks + st.bottom)
    span = sim.makespan if sim.makespan > 0 else 1.0
    scale = (width - st.left - st.right) / span
    scene = Scene(width, height, st.left, scale)
    for r in range(program.num_ranks):
        y = st.top + band * r
        scene.rows.append((r, y, st.row_h))
        scene.add("rows", Rect(st.left, y, span * scale, st.row_h, ROW_BACKGROUND, "row",
                               data=(("rank", str(r)), ("y", _fmt(y)), ("h", _fmt(st.row_h)))))
        scene.add("labels", Text(st.left - 8, y + st.row_h / 2 + st.font * 0.35, f"rank {r}", st.font,
                                 "rank-label", anchor="end"))
    _idle(program, sim, scene)
    _ops(program, sim, scene, st)
    _comm(program, sim, scene)
    if memory:
        _memory(program, sim, scene, st)
    _axis(sim, scene, st, height)
    _title(program, sim, scene, st)
    _legend(program, scene, st, height)
    return scene


def _row_y(scene: Scene, rank: int) -> tuple[float, float]:
    _, y, h = scene.rows[rank]
    return y, h


def _idle(program: Program, sim: Simulation, scene: Scene) -> None:
    for r, slots in enumerate(program.orders.ranks):
        y, h = _row_y(scene, r)
        t = None
        for slot in slots:
            s, e = sim.start[slot[0]], sim.end[slot[0]]
            if t is not None and s > t + 1e-12:
                scene.add("idle", Rect(scene.x0 + t * scene.scale, y, (s - t) * scene.scale, h, IDLE_COLOUR,
                                       "idle", tip=f"rank {r} idle {_fmt(t)}..{_fmt(s)}", opacity=0.28))
            t = e if t is None else max(t, e)


def _ops(program: Program, sim: Simulation, scene: Scene, st: Style) -> None:
    colours = kind_colours(program)
    chunk = {s: program.stages_on(program.placement[s]).index(s) for s in range(program.num_stages)}
    labels: list[Text] = []
    for r, slots in enumerate(program.orders.ranks):
        y, h = _row_y(scene, r)
        for slot in slots:
            sub = h / len(slot)
            for j, k in enumerate(slot):
                op = program.ops[k]
                fill = colours[op.kind]
                if chunk[op.stage]:
                    fill = _lighten(fill, min(0.6, 0.3 * chunk[op.stage]))
                x = scene.x0 + sim.start[k] * scene.scale
                w = (sim.end[k] - sim.start[k]) * scene.scale
                oy = y + j * sub
                tip = f"{op.label} rank {r}: {_fmt(sim.start[k])}..{_fmt(sim.end[k])}"
                scene.add("ops", Rect(x, oy, w, sub, fill, "op", tip=tip, stroke=BACKGROUND,
                                      data=(("op", str(k)), ("rank", str(r)), ("kind", op.kind))))
                label = str(op.mb)
                size = min(st.font, sub - 2)
                if size >= 6 and w >= len(label) * size * st.char_w + 2:
                    labels.append(Text(x + w / 2, oy + sub / 2 + size * 0.35, label, size, "mb",
                                       anchor="middle", fill=_text_colour(fill)))
    # Thin out: when most boxes are too narrow for their number, a run of single digits says
    # little, so only every tenth microbatch (0, 10, 20, ...) keeps its label.
    if len(labels) < len(program.ops) / 2:
        labels = [t for t in labels if int(t.text) % 10 == 0]
    for t in labels:
        scene.add("op-labels", t)


def _comm(program: Program, sim: Simulation, scene: Scene) -> None:
    for e in program.edges:
        a, b = program.ops[e.src], program.ops[e.dst]
        if a.rank == b.rank or e.latency <= 0:
            continue
        ya, ha = _row_y(scene, a.rank)
        yb, hb = _row_y(scene, b.rank)
        t0 = sim.end[e.src]
        t1 = t0 + e.latency
        down = b.rank > a.rank
        scene.add("comm", Line(scene.x0 + t0 * scene.scale, ya + (ha if down else 0.0),
                               scene.x0 + t1 * scene.scale, yb + (0.0 if down else hb),
                               COMM_COLOUR, "comm", width=0.8, opacity=0.7))


def _memory(program: Program, sim: Simulation, scene: Scene, st: Style) -> None:
    peak = max([r.peak_memory for r in sim.ranks] + [1e-12])
    limits = program.mem_limit
    top = max(peak, max((x for x in limits or () if math.isfinite(x)), default=0.0))
    low = min(0.0, *(_levels(program, r)[1] for r in range(program.num_ranks)))
    rng = (top - low) or 1.0
    for r in range(program.num_ranks):
        y, h = _row_y(scene, r)
        base, mh = y + h + 2, st.mem_h - 4

        def py(level: float, base: float = base, mh: float = mh) -> float:
            return base + mh - (level - low) / rng * mh

        pts: list[tuple[float, float]] = [(scene.x0, py(0.0))]
        level = 0.0
        for slot in program.orders.ranks[r]:
            for k in slot:
                x = scene.x0 + sim.end[k] * scene.scale
                pts.append((x, py(level)))
                level += program.ops[k].mem
                pts.append((x, py(level)))
        pts.append((scene.x0 + sim.makespan * scene.scale, py(level)))
        scene.add("memory", Rect(scene.x0, base, sim.makespan * scene.scale, mh, "#fbfbfb", "mem-band",
                                 data=(("rank", str(r)),)))
        scene.add("memory", Poly(tuple(pts), MEM_COLOUR, "mem", width=1.2))
        if limits is not None and math.isfinite(limits[r]):
            scene.add("memory", Line(scene.x0, py(limits[r]), scene.x0 + sim.makespan * scene.scale, py(limits[r]),
                                     IDLE_COLOUR, "mem-limit", dash=True))
        scene.add("labels", Text(st.left - 8, base + mh, f"mem {_fmt(sim.ranks[r].peak_memory)}", st.font * 0.8,
                                 "mem-label", anchor="end", fill=MEM_COLOUR))


def _levels(program: Program, rank: int) -> tuple[float, float]:
    level = hi = lo = 0.0
    for slot in program.orders.ranks[rank]:
        for k in slot:
            level += program.ops[k].mem
            hi, lo = max(hi, level), min(lo, level)
    return hi, lo


def _axis(sim: Simulation, scene: Scene, st: Style, height: int) -> None:
    y = height - st.bottom + 6
    end = sim.makespan
    scene.add("axis", Line(scene.x0, y, scene.x0 + end * scene.scale, y, TEXT_COLOUR, "axis"))
    step = _nice_step(end, max(2, int((scene.width - st.left - st.right) / 90)))
    t = 0.0
    while t <= end * (1 + 1e-9):
        x = scene.x0 + t * scene.scale
        scene.add("axis", Line(x, y, x, y + 4, TEXT_COLOUR, "tick"))
        scene.add("axis", Text(x, y + 5 + st.font, _fmt(round(t, 9)), st.font * 0.9, "tick-label", anchor="middle"))
        t += step
    scene.add("axis", Text(scene.x0 + end * scene.scale, y + 10 + 2 * st.font, "time", st.font * 0.9,
                           "axis-label", anchor="end"))


def _title(program: Program, sim: Simulation, scene: Scene, st: Style) -> None:
    peak_rank = max(range(len(sim.ranks)), key=lambda r: sim.ranks[r].peak_memory)
    head = (f"{program.name}: {program.num_ranks} ranks, {program.num_stages} stages, "
            f"{program.num_microbatches} microbatches")
    stats = f"bubble rate {sim.bubble_rate * 100:.2f}%   makespan {_fmt(sim.makespan)}"
    if any(op.mem for op in program.ops):  # a timeline read from a trace has no memory model
        stats += f"   peak memory {_fmt(sim.ranks[peak_rank].peak_memory)} (rank {peak_rank})"
    scene.add("title", Text(st.left, 20, head, st.font * 1.35, "title", bold=True))
    scene.add("title", Text(st.left, 40, stats, st.font * 1.1, "subtitle"))


def _legend(program: Program, scene: Scene, st: Style, height: int) -> None:
    colours = kind_colours(program)
    x = st.left
    y = height - 14
    entries = [(k.name, colours[k.name], 1.0) for k in program.kinds]
    entries += [("idle", IDLE_COLOUR, 0.28)]
    for name, colour, opacity in entries:
        scene.add("legend", Rect(x, y - 9, 12, 10, colour, "legend-box", opacity=opacity))
        scene.add("legend", Text(x + 16, y, name, st.font * 0.9, "legend-text"))
        x += 16 + len(name) * st.font * 0.9 * st.char_w + 18
    if any(e.latency > 0 and program.ops[e.src].rank != program.ops[e.dst].rank for e in program.edges):
        scene.add("legend", Line(x, y - 4, x + 14, y - 4, COMM_COLOUR, "legend-line"))
        scene.add("legend", Text(x + 18, y, "communication", st.font * 0.9, "legend-text"))


# ------------------------------------------------------------------ SVG


def _n(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x == x else "0"


_ANCHORS = {"start": "start", "middle": "middle", "end": "end"}


def _svg_item(it: Item) -> str:
    if isinstance(it, Rect):
        data = "".join(f" data-{k}={quoteattr(v)}" for k, v in it.data)
        if it.cls == "idle":  # hatched in SVG; a flat tint in PNG
            fill, op = 'fill="url(#hatch)"', ""
        else:
            fill = f'fill="{it.fill}"'
            op = f' fill-opacity="{_n(it.opacity)}"' if it.opacity < 1 else ""
        if it.stroke:
            op += f' stroke="{it.stroke}" stroke-width="0.5"'
        body = f"<title>{escape(it.tip)}</title>" if it.tip else ""
        head = (f'<rect class="{it.cls}" x="{_n(it.x)}" y="{_n(it.y)}" width="{_n(it.w)}" '
                f'height="{_n(it.h)}" {fill}{op}{data}')
        return f"{head}>{body}</rect>" if body else f"{head}/>"
    if isinstance(it, Line):
        dash = ' stroke-dasharray="4 3"' if it.dash else ""
        op = f' stroke-opacity="{_n(it.opacity)}"' if it.opacity < 1 else ""
        return (f'<line class="{it.cls}" x1="{_n(it.x1)}" y1="{_n(it.y1)}" x2="{_n(it.x2)}" y2="{_n(it.y2)}" '
                f'stroke="{it.stroke}" stroke-width="{_n(it.width)}"{dash}{op}/>')
    if isinstance(it, Poly):
        pts = " ".join(f"{_n(x)},{_n(y)}" for x, y in it.points)
        return (f'<polyline class="{it.cls}" points="{pts}" fill="none" stroke="{it.stroke}" '
                f'stroke-width="{_n(it.width)}"/>')
    weight = ' font-weight="bold"' if it.bold else ""
    return (f'<text class="{it.cls}" x="{_n(it.x)}" y="{_n(it.y)}" font-size="{_n(it.size)}" '
            f'text-anchor="{_ANCHORS[it.anchor]}" fill="{it.fill}"{weight}>{escape(it.text)}</text>')


def scene_svg(scene: Scene) -> str:
    """Serialise a scene as a standalone SVG document."""
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width}" height="{scene.height}" '
        f'viewBox="0 0 {scene.width} {scene.height}" font-family="Helvetica, Arial, sans-serif">',
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fbe3e2"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{IDLE_COLOUR}" stroke-width="1.5" stroke-opacity="0.55"/>'
        "</pattern></defs>",
        f'<rect class="background" width="{scene.width}" height="{scene.height}" fill="{BACKGROUND}"/>',
    ]
    for name, items in scene.groups.items():
        extra = f' data-x0="{_n(scene.x0)}" data-scale="{scene.scale!r}"' if name == "ops" else ""
        out.append(f'<g class="{name}"{extra}>')
        out.extend(_svg_item(it) for it in items)
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_svg(program: Program, *, memory: bool = False, style: Style | None = None) -> str:
    """The schedule as SVG text."""
    return scene_svg(layout(program, memory=memory, style=style))


# ------------------------------------------------------------------ PNG


def _rgba(colour: str, opacity: float = 1.0) -> tuple[int, int, int, int]:
    return (int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16), round(255 * opacity))


MAX_PNG_PIXELS = 100_000_000


def scene_png(scene: Scene, path: str, *, dpi_scale: float = 1.0) -> None:
    """Draw a scene with Pillow and save it as PNG at ``path`` (size: scene size x ``dpi_scale``)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise SchedlangError("PNG output needs Pillow (pip install pillow); SVG needs nothing") from None
    k = dpi_scale
    w, h = round(scene.width * k), round(scene.height * k)
    if w * h > MAX_PNG_PIXELS:  # about 3 bytes a pixel in memory
        raise SchedlangError(f"a {w}x{h} PNG is over {MAX_PNG_PIXELS:,} pixels; draw SVG instead, or fewer ranks")
    img = Image.new("RGB", (round(scene.width * k), round(scene.height * k)), BACKGROUND)
    draw = ImageDraw.Draw(img, "RGBA")
    fonts: dict[tuple[float, bool], ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}

    def font(size: float, bold: bool) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        key = (round(size * k, 1), bold)
        if key not in fonts:
            fonts[key] = ImageFont.load_default(size=key[0])
        return fonts[key]

    anchors = {"start": "ls", "middle": "ms", "end": "rs"}
    for items in scene.groups.values():
        for it in items:
            if isinstance(it, Rect):
                if it.w * k >= 0.5:
                    box = (it.x * k, it.y * k, max(it.x * k, (it.x + it.w) * k - 1), (it.y + it.h) * k - 1)
                    draw.rectangle(box, fill=_rgba(it.fill, it.opacity))
                    if it.stroke and it.w * k >= 3:  # a one-pixel gap on the right keeps boxes apart
                        draw.line((box[2], box[1], box[2], box[3]), fill=_rgba(it.stroke))
            elif isinstance(it, Line):
                draw.line((it.x1 * k, it.y1 * k, it.x2 * k, it.y2 * k), fill=_rgba(it.stroke, it.opacity),
                          width=max(1, round(it.width * k)))
            elif isinstance(it, Poly):
                draw.line([(x * k, y * k) for x, y in it.points], fill=_rgba(it.stroke), width=max(1, round(it.width * k)))
            else:
                draw.text((it.x * k, it.y * k), it.text, fill=_rgba(it.fill), font=font(it.size, it.bold),
                          anchor=anchors[it.anchor])
    try:
        img.save(path, format="PNG")
    except OSError as exc:
        raise SchedlangError(f"cannot write '{path}': {exc}") from None


def render_png(program: Program, path: str, *, memory: bool = False, style: Style | None = None,
               dpi_scale: float = 1.0) -> Scene:
    """Render the schedule to a PNG file; returns the scene (pixel coordinates at ``dpi_scale`` 1)."""
    scene = layout(program, memory=memory, style=style)
    scene_png(scene, path, dpi_scale=dpi_scale)
    return scene


def op_boxes(scene: Scene) -> Sequence[Rect]:
    """The op rectangles of a scene (one per op)."""
    return [it for it in scene.groups.get("ops", []) if isinstance(it, Rect)]
