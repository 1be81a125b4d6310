"""Weight versions under an asynchronous weight-update policy (``weights`` clause, docs/async.md).

:func:`weight_plan` reads a scheduled program whose policy is not ``flush`` and says, from the
per-rank orders alone:

- which weight version of its stage every microbatch's forward and backward use (version ``v`` of
  stage ``s`` = the stage's weights after ``v`` updates; ``0`` = the weights at the start);
- where each stage's updates happen (after the op that finishes the last weight gradient of an
  update group, on the stage's rank) and which microbatches' gradients each one applies;
- how many versions each stage must keep at once (the current one, every version an unfinished
  microbatch uses, and older ones a later forward still needs).

The policies (PipeDream, Narayanan et al., SOSP 2019; PipeDream-2BW, Narayanan et al., ICML 2021):

- ``stash``: a stage updates after every microbatch's weight gradient (update group = one
  microbatch); a forward uses the stage's current version, its backward the same (stashed) one;
- ``stash+vsync``: updates as for ``stash``; every stage uses the version stage 0 used for that
  microbatch (vertical sync), so a microbatch sees one consistent set of weights;
- ``2bw``: a stage updates once per ``every`` microbatches, with their mean gradient; the
  microbatches of group ``g`` use version ``g - 1`` (version 0 for groups 0 and 1): the update
  rule ``W(t+1) = W(t) - lr * grad f(W(t-1))``.

A plan the order cannot honour (a version that does not exist yet when its forward runs) is a
located error. The weight gradient of a microbatch is finished by its ``W`` op when the program
has one, else by its ``BW``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from schedlang.ir import Program, Role
from schedlang.source import SchedlangError


@dataclass(frozen=True, slots=True)
class WeightPlan:
    """Weight versions of an asynchronous program (see the module docstring).

    ``version[s][j]``: the version microbatch ``j`` uses on stage ``s`` (forward and backward).
    ``groups[s]``: the update groups of stage ``s`` in the order its updates run, each a tuple of
    microbatches in the order their weight gradients finish (update ``u`` applies ``groups[s][u]``
    and makes version ``u + 1``). ``update_after[s][u]``: the op id after which update ``u`` runs.
    ``peak_versions[s]``: the most versions stage ``s`` holds at once (1 = only the current one).
    ``held[r]``: after each op of rank ``r``'s order (slot ops in slot order), the number of
    versions its stages hold beyond their current ones (what ``mem`` is charged for).
    """

    policy: str
    every: int
    mem: float
    version: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[tuple[int, ...], ...], ...]
    update_after: tuple[tuple[int, ...], ...]
    peak_versions: tuple[int, ...]
    held: tuple[tuple[int, ...], ...]

    def update_ops(self) -> dict[int, int]:
        """op id -> the stage that updates right after it."""
        return {k: s for s, ks in enumerate(self.update_after) for k in ks}


def group_of(policy: str, every: int, mb: int) -> int:
    """The update group microbatch ``mb`` belongs to."""
    return mb // every if policy == "2bw" else mb


def _finishers(p: Program) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]]:
    """(stage, mb) -> its forward op and the op that finishes its weight gradient."""
    roles = {k.name: k.role for k in p.kinds}
    fin_role = Role.W if Role.W in roles.values() else Role.BW
    fwd: dict[tuple[int, int], int] = {}
    fin: dict[tuple[int, int], int] = {}
    for o in p.ops:
        r = roles[o.kind]
        table = fwd if r is Role.F else fin if r is fin_role else None
        if table is None:
            continue
        if (o.stage, o.mb) in table:
            raise SchedlangError(f"weights {p.weights.policy}: {o.label} is a second "
                                 f"{'forward' if r is Role.F else 'weight gradient'} of stage {o.stage}, "
                                 f"microbatch {o.mb}; a weight version needs exactly one", p.weights.span)
        table[(o.stage, o.mb)] = o.id
    want = {(s, j) for s in range(p.num_stages) for j in range(p.num_microbatches)}
    for table, what in ((fwd, "F"), (fin, "W or BW")):
        missing = sorted(want - set(table))
        if missing:
            s, j = missing[0]
            raise SchedlangError(f"weights {p.weights.policy}: stage {s}, microbatch {j} has no {what} op; "
                                 "an asynchronous policy needs a forward and a weight gradient per "
                                 "stage and microbatch", p.weights.span)
    return fwd, fin


def weight_plan(p: Program) -> WeightPlan | None:
    """The weight plan of a scheduled program (``None`` under ``flush``); see the module docstring."""
    w = p.weights
    if not w.asynchronous:
        return None
    fwd, fin = _finishers(p)
    S, M = p.num_stages, p.num_microbatches
    size = Counter(group_of(w.policy, w.every, j) for j in range(M))
    seen_at = [[0] * M for _ in range(S)]  # updates the stage had made when the forward ran
    groups: list[list[tuple[int, ...]]] = [[] for _ in range(S)]
    after: list[list[int]] = [[] for _ in range(S)]
    fwd_of = {k: sj for sj, k in fwd.items()}
    fin_of = {k: sj for sj, k in fin.items()}
    for slots in p.orders.ranks:
        done: dict[tuple[int, int], list[int]] = {}
        for slot in slots:
            for k in slot:
                if k in fwd_of:
                    s, j = fwd_of[k]
                    seen_at[s][j] = len(groups[s])
                elif k in fin_of:
                    s, j = fin_of[k]
                    g = group_of(w.policy, w.every, j)
                    members = done.setdefault((s, g), [])
                    members.append(j)
                    if len(members) == size[g]:
                        groups[s].append(tuple(members))
                        after[s].append(k)
    version = [[_version(w.policy, w.every, seen_at, s, j) for j in range(M)] for s in range(S)]
    for s in range(S):
        for j in range(M):
            if version[s][j] > seen_at[s][j]:
                raise SchedlangError(
                    f"weights {w.policy}: F[{s},{j}] needs weight version {version[s][j]} of stage {s}, "
                    f"but the order runs it after only {seen_at[s][j]} update(s) of that stage"
                    + (f" (with 'every {w.every}', microbatch {j} is in group {j // w.every}, which uses "
                       f"the version the update of group {j // w.every - 2} makes; raise 'every')"
                       if w.policy == "2bw" else ""),
                    p.schedule_span or w.span)
    peak, held = _held(p, fwd_of, fin_of, version, after)
    return WeightPlan(w.policy, w.every, w.mem, tuple(tuple(v) for v in version),
                      tuple(tuple(g) for g in groups), tuple(tuple(a) for a in after), peak, held)


def _version(policy: str, every: int, seen_at: list[list[int]], s: int, j: int) -> int:
    if policy == "stash":
        return seen_at[s][j]
    if policy == "stash+vsync":
        return seen_at[0][j]
    return max(0, j // every - 1)


def _held(p: Program, fwd_of: dict[int, tuple[int, int]], fin_of: dict[int, tuple[int, int]],
          version: list[list[int]], after: list[list[int]]) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Peak versions per stage, and per rank the extra versions held after each op.

    A stage holds its current version and every existing version (``<=`` current) that a
    microbatch whose weight gradient has not finished uses. Kept incrementally: ``users[s][v]``
    counts those microbatches per version, ``live[s]`` the versions ``<=`` current that have any."""
    update_stage = {k: s for s, ks in enumerate(after) for k in ks}
    peak = [1] * p.num_stages
    held: list[tuple[int, ...]] = []
    for r, slots in enumerate(p.orders.ranks):
        stages = p.stages_on(r)
        current = dict.fromkeys(stages, 0)
        users = {s: Counter(version[s]) for s in stages}
        live = {s: 1 if users[s][0] else 0 for s in stages}
        out = []
        for slot in slots:
            for k in slot:
                if k in fin_of:
                    s, j = fin_of[k]
                    v = version[s][j]
                    users[s][v] -= 1
                    if not users[s][v] and v <= current[s]:
                        live[s] -= 1
                if k in update_stage:
                    s = update_stage[k]
                    current[s] += 1
                    if users[s][current[s]]:
                        live[s] += 1
                extra = 0
                for s in stages:
                    n = live[s] + (0 if users[s][current[s]] else 1)
                    peak[s] = max(peak[s], n)
                    extra += n - 1
                out.append(extra)
        held.append(tuple(out))
    return tuple(peak), tuple(held)
