"""Standard optimizer instances: the F/B/W pipeline with the paper's cost profiles.

Used by the tests and ``benchmarks/optimizer.py``. Memory is in units where one layer's
activations are ``M_B = 34h + 5as`` and ``M_W = 32h`` (per ``s*b``; the zero-bubble paper, Qi et
al., ICLR 2024), so the ratio M_W / M_B is the paper's.
"""

from __future__ import annotations

from typing import Any

from schedlang.ir import Program

SOURCE = """\
import "std:fbw"
param p = 4
param m = 8
ranks p
microbatches m
"""

# name -> (T_F, T_B, T_W, T_comm, h, a): times in ms profiled on A100s in the zero-bubble paper (p = 8, m = 24).
PROFILES: dict[str, tuple[float, float, float, float, int, int]] = {
    "1.5B": (18.522, 18.086, 9.337, 0.601, 2304, 24),
    "6.2B": (29.718, 29.444, 19.927, 0.527, 4096, 32),
}
SEQ = 1024


def memory_units(h: int, a: int) -> tuple[int, int]:
    """(M_B, M_W) per ``s*b`` for hidden size ``h`` and ``a`` heads at sequence length 1024."""
    return 34 * h + 5 * a * SEQ, 32 * h


def pipeline(p: int, m: int, profile: str = "1.5B", limit_factor: float | None = 1.0, *,
             comm: bool = True, heavy_last: float = 1.0) -> Program:
    """An F/B/W pipeline on ``p`` ranks with ``m`` microbatches.

    ``profile`` is ``"uniform"`` (T_F = T_B = T_W = 1, M_W = M_B / 2, comm 0.1 if ``comm``) or a
    key of :data:`PROFILES`. The memory limit is ``limit_factor * p * M_B`` (None: unlimited).
    ``heavy_last`` multiplies the last stage's times.
    """
    from schedlang.api import loads

    if profile == "uniform":
        tf = tb = tw = 1.0
        tc = 0.1
        mf, mw = 2, 1
    else:
        tf, tb, tw, tc, h, a = PROFILES[profile]
        mf, mw = memory_units(h, a)
    params: dict[str, Any] = {"p": p, "m": m, "tc": tc if comm else 0.0, "mem_f": mf, "mem_w": mw}
    if heavy_last != 1.0:
        params.update(tf=[tf] * (p - 1) + [tf * heavy_last], tb=[tb] * (p - 1) + [tb * heavy_last],
                      tw=[tw] * (p - 1) + [tw * heavy_last])
    else:
        params.update(tf=tf, tb=tb, tw=tw)
    if limit_factor is not None:
        params["mem_limit"] = limit_factor * p * mf
    return loads(SOURCE, name=f"fbw-{profile}-p{p}-m{m}", params=params)
