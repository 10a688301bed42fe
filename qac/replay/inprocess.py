"""The in-process replay: the configurations offered over loaded models, and
simulated users (threads) calling them directly, the session store in memory."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from qac.errors import InputError
from qac.evaluate import Case, CompleterSystem, HistoryThenMpc, MpcSystem, System
from qac.replay.runs import NO_CONTEXT, NO_SESSION, SystemRun, _canonical, _Tally
from qac.replay.sessions import ReplayConfig, Session, _jitter

log = logging.getLogger(__name__)


def inprocess_systems(models: dict[str, Any], select: Sequence[str] | None = None
                      ) -> dict[str, tuple[System, bool]]:
    """name -> (system, uses the session) for in-process completers.

    Offered: ``mpc`` (most popular over the first model's training queries, as
    ``qac eval``), ``hist+mpc`` (the user's past queries with the prefix, most recent
    first, then MPC), and for each model NAME: ``NAME`` (with the whole context),
    ``NAME -session`` (without the previous query and the session's queries;
    ``NAME-nosession`` is accepted too) and ``NAME -context`` (with no context at
    all; ``NAME-nocontext``). ``select`` picks and orders them; default: mpc,
    hist+mpc, then each model with and without the session.
    """
    from qac.mpc import MostPopular

    if not models:
        raise InputError("at least one model directory is needed")
    first = next(iter(models.values()))
    mpc = MostPopular(dict(zip(first.labels.texts(), first.labels.counts.tolist(),
                               strict=True)))
    offered: dict[str, tuple[System, bool]] = {"mpc": (MpcSystem(mpc), False),
                                               "hist+mpc": (HistoryThenMpc(mpc), False)}
    names = ["mpc", "hist+mpc"]
    for name, c in models.items():
        offered[name] = (CompleterSystem(c), True)
        offered[name + NO_SESSION] = (CompleterSystem(c, session=False), False)
        offered[name + NO_CONTEXT] = (CompleterSystem(c, session=False, history=False), False)
        names += [name, name + NO_SESSION]
    if select is not None:
        names = [_canonical(s) for s in select]
    unknown = [n for n in names if n not in offered]
    if unknown:
        raise InputError(f"unknown configuration(s) {unknown}; offered: {list(offered)}")
    return {n: offered[n] for n in names}


def _replay_inprocess(sessions: Sequence[Session], system: System, use_session: bool,
                      cfg: ReplayConfig, seen: Callable[[str], bool] | None,
                      progress: Any) -> _Tally:
    feed: Iterator[Session] = iter(sessions)
    lock = threading.Lock()

    def worker(wid: int) -> _Tally:
        tally = _Tally(cfg.k)
        rng = random.Random(cfg.seed * 1_000_003 + wid)
        while True:
            with lock:
                sess = next(feed, None)
            if sess is None:
                return tally
            _user(sess, system, use_session, cfg, seen, tally, rng)
            if progress is not None:
                with lock:
                    progress.update(1)

    if cfg.concurrency == 1:
        return worker(0)
    total = _Tally(cfg.k)
    with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="replay") as pool:
        for t in pool.map(worker, range(cfg.concurrency)):
            total.merge(t)
    return total


def _user(sess: Session, system: System, use_session: bool, cfg: ReplayConfig,
          seen: Callable[[str], bool] | None, tally: _Tally, rng: random.Random) -> None:
    """One simulated user typing its session's queries (the per-keystroke loop). The
    context of each query is the session's own earlier queries and the user's
    history, as the session store holds them (:meth:`Session.case`); without
    ``use_session``, no previous query and no session list."""
    k, window, typed = cfg.k, cfg.window, cfg.mode == "typed"
    interval = cfg.interval_ms / 1e3
    add, add_prev = tally.metrics.add, tally.with_previous.add
    lat = tally.latency_s.append
    clock = time.perf_counter
    for qi, target in enumerate(sess.queries):
        has_prev = qi > 0
        case = sess.case(qi, cfg.history)
        if not use_session:
            case = Case(target, None, case.history, (), case.time)
        group = ("seen" if seen(target) else "unseen") if seen is not None else None
        at = -1
        for n in cfg.plan(target, has_prev):
            prefix = target[:n]
            t0 = clock()
            got = system(prefix, case, k)
            lat(clock() - t0)
            add(n, group, got, target)
            if has_prev:
                add_prev(n, group, got, target)
            if typed and target in got[:window]:
                at = n
                break
            if interval:
                time.sleep(_jitter(rng, interval))
        tally.q_len.append(len(target))
        tally.q_at.append(at)
        tally.q_prev.append(has_prev)


def replay(sessions: Sequence[Session], systems: dict[str, tuple[System, bool]],
           config: ReplayConfig | None = None, seen: Callable[[str], bool] | None = None,
           progress: bool = False) -> list[SystemRun]:
    """Replay ``sessions`` in-process against each configuration in turn (each with a
    fresh session store). ``seen(query)`` groups events "seen"/"unseen" (None: no groups).
    """
    from tqdm import tqdm

    cfg = config or ReplayConfig()
    runs = []
    for name, (system, use_session) in systems.items():
        bar = tqdm(total=len(sessions), desc=name, unit="session", leave=False,
                   disable=not progress) if progress else None
        t0 = time.perf_counter()
        tally = _replay_inprocess(sessions, system, use_session, cfg, seen, bar)
        wall = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        log.info("replay %s: %d requests in %.1f s", name, len(tally.latency_s), wall)
        runs.append(SystemRun(name, tally, wall, cfg.mode))
    return runs
