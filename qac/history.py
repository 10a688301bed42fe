"""What a keystroke knows of its user: the previous query, this session's queries,
and the user's past queries with how often and when they were issued.

These are the shapes every producer of context hands to
:meth:`qac.complete.Completer.complete`: the session stores (:mod:`qac.session`,
one round trip per keystroke), and the log replays of training, ``qac eval`` and
``qac replay`` (:class:`UserLog`), so a ranker fitted on a replayed log sees the
same features as the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Past:
    """One distinct past query of a user.

    query: normalized text.
    count: how many times the user issued it (>= 1).
    last:  when they last issued it, in Unix seconds (0.0: unknown).
    """

    query: str
    count: int = 1
    last: float = 0.0


class SessionContext(NamedTuple):
    """A session store's answer for one keystroke (see :mod:`qac.session`).

    previous: the session's last submitted query, or None.
    session:  this session's recent queries with their Unix times, most recent
              first (``session[0][0] == previous`` when there is one).
    history:  the user's distinct past queries that start with the prefix the
              store was asked for (for the empty prefix, all of them), the most
              recently issued first, at most the number asked for.
              :meth:`UserLog.context` gives the whole history instead (the
              completer reads those that match).
    """

    previous: str | None = None
    session: tuple[tuple[str, float], ...] = ()
    history: tuple[Past, ...] = ()


#: distinct past queries kept per user (the session store's default history size)
HISTORY_SIZE = 200
#: a session repeating its last query within this many seconds is the same search,
#: counted once: the session stores and the live overlays do not record it again, so
#: a retried submit (after a timeout that hid a landed write) is counted once too.
#: :func:`qac.logs.read_log` drops a session's consecutive repeat at any gap (in AOL,
#: another click on the same results); where sessions end after 30 idle minutes, as
#: AOL's and a log without session ids do, that is the same rule
REPEAT_SECONDS = 1800.0


class UserLog:
    """A log replayed in order, holding what a session store would hold at each event.

    Per session: its recent queries with their times (the head is the *previous
    query*, the same one :func:`qac.logs.previous_queries` gives). Per user (events
    without a user id count as their session's): their last ``size`` distinct
    queries, each with its count and last time; the least recently issued is evicted
    first, as the stores do.

    ``context(session, user)`` then ``add(session, user, query, time)`` per event, in
    log order.
    """

    def __init__(self, size: int = HISTORY_SIZE, session_size: int = 10) -> None:
        self.size = size
        self.session_size = session_size
        # user -> query -> Past; dict order = least recently issued first
        self._users: dict[str, dict[str, Past]] = {}
        self._sessions: dict[str, list[tuple[str, float]]] = {}

    @staticmethod
    def user_of(session: str, user: str | None) -> str:
        """Whose history an event belongs to: its user, else its session."""
        return user if user is not None else session

    def previous(self, session: str) -> str | None:
        s = self._sessions.get(session)
        return s[-1][0] if s else None

    def context(self, session: str, user: str | None) -> SessionContext:
        """What the stores would answer before the next event of ``session``: the
        previous query, the session's recent queries (most recent first) and the
        user's whole history (most recently issued first)."""
        s = self._sessions.get(session, ())
        recent = tuple(reversed(s[-self.session_size:]))
        h = self._users.get(self.user_of(session, user))
        hist = tuple(reversed(h.values())) if h else ()
        return SessionContext(recent[0][0] if recent else None, recent, hist)

    def add(self, session: str, user: str | None, query: str, time: float) -> None:
        s = self._sessions.setdefault(session, [])
        s.append((query, time))
        if len(s) > 2 * self.session_size:
            del s[:-self.session_size]
        if self.size <= 0:
            return
        h = self._users.setdefault(self.user_of(session, user), {})
        old = h.pop(query, None)
        h[query] = Past(query, 1 if old is None else old.count + 1, time)
        if len(h) > self.size:
            del h[next(iter(h))]
