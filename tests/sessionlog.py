"""Tiny session logs for completion tests, built in memory (one home for them)."""

from __future__ import annotations

from datetime import datetime, timedelta

from qac.logs import LogEvent


class SessionLog:
    """Appends sessions of queries, one minute apart, in log order."""

    def __init__(self, start: datetime = datetime(2006, 3, 1)) -> None:
        self.time = start
        self.events: list[LogEvent] = []

    def session(self, sid: str, *queries: str) -> None:
        for q in queries:
            self.time += timedelta(minutes=1)
            self.events.append(LogEvent(sid, q, self.time, "u"))

    def repeat(self, n: int, prefix: str, *queries: str) -> None:
        """``n`` sessions ``<prefix>0..`` each issuing ``queries``."""
        for i in range(n):
            self.session(f"{prefix}{i}", *queries)


def pl_log() -> SessionLog:
    """Sessions where the previous query decides the completion of "pl": after
    "rose of jericho" it is "plant care tips", without context "playstation"."""
    log = SessionLog()
    log.repeat(6, "a", "rose of jericho", "plant care tips")
    log.repeat(12, "b", "game console", "playstation 5")
    log.repeat(20, "c", "playstation")
    log.repeat(4, "d", "new york times", "newark airport")
    return log


PATTERNS = (("rose of jericho", "plant care tips"), ("game console", "playstation 5"),
            ("playstation",), ("playstation",), ("playstation",),
            ("new york times", "newark airport"), ("newton", "new york weather"),
            ("planet earth", "plant nursery"))
NOISE = ("paris hotels", "pizza", "plumber", "news", "nba scores", "rose garden")


def weeks_log(weeks: int = 3, seed: int = 0, per_day: int = 12,
              patterns: tuple[tuple[str, ...], ...] = PATTERNS,
              noise: tuple[str, ...] = NOISE) -> SessionLog:
    """``pl_log``'s patterns spread over ``weeks`` weeks, with a few users who repeat
    themselves and some noise: enough keystrokes for ``qac train`` to fit a ranker
    of its own on the last week (with ``CompleterConfig(min_fit=...)`` lowered)."""
    import random

    rng = random.Random(seed)
    log = SessionLog()
    # (in PATTERNS, without context "pl" completes to "playstation", the most popular)
    sessions = list(patterns)
    n = 0
    for day in range(7 * weeks):
        log.time = datetime(2006, 3, 1) + timedelta(days=day)
        for _ in range(per_day):
            n += 1
            queries = list(rng.choice(sessions))
            if noise and rng.random() < 0.3:
                queries.append(rng.choice(noise))
            user = f"u{rng.randrange(20)}"
            for q in queries:
                log.time += timedelta(minutes=1)
                log.events.append(LogEvent(f"{user}/{n}", q, log.time, user))
    return log
