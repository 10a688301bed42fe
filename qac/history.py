"""What a keystroke knows of its user: the previous query, this session's queries,
and the user's past queries with how often and when they were issued.

These are the shapes every producer of context hands to
:meth:`qac.complete.Completer.complete`: the session stores (:mod:`qac.session`,
one round trip per keystroke), and the log replays of training, ``qac eval`` and
``qac replay`` (:class:`UserLog`), so a ranker fitted on a replayed log sees the
same features as the service.
"""

from __future__ import annotations

from typing import NamedTuple


class Past(NamedTuple):
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
    history:  the user's distinct past queries that start with the typed prefix
              (for the empty prefix, the most recent ones), at most the number
              asked for, in no particular order.
    """

    previous: str | None = None
    session: tuple[tuple[str, float], ...] = ()
    history: tuple[Past, ...] = ()
