"""Session replay: simulated users type a log's queries keystroke by keystroke.

Each session of a query log is one simulated user. For each of its queries, in
order, the user types the query one character at a time; after every keystroke
it asks for k completions of the prefix typed so far, with the context a session
store would hold: in-process, the session's previous query and earlier queries and
the user's past queries with their counts and times (from the log rows before the
session, rows before ``--since`` included, and the session's own earlier queries;
:meth:`Session.case`); over HTTP, what the service's store (e.g. Redis) has recorded
during the replay. When the target query is among
the shown completions the user accepts it, and the query is submitted to the
session.

Acceptance policies (:attr:`ReplayConfig.accept`):

- ``"shown"``: accept as soon as the target is anywhere among the k shown;
- ``"top"``: accept only when it is within the first ``top_m``.

Modes (:attr:`ReplayConfig.mode`):

- ``"typed"`` (the simulation): every query of every session; one request per
  keystroke at prefix lengths 1, 2, ... up to acceptance, never at the full
  length (nothing is left to save). So MRR at prefix length n averages over the
  queries the user was still typing at n: the ones accepted earlier drop out, and
  a long query counts at every length it was typed. That is not ``qac eval``'s
  figure, which asks every query at the fixed lengths 1, 2, 3, 5, 8.
- ``"fixed"``: ``qac eval``'s protocol through the replay machinery: only queries
  with a previous query in their session, at ``lengths`` (those shorter than the
  query), no acceptance. With the in-process target it computes exactly
  :func:`qac.evaluate.evaluate`'s figures (the same :class:`CompletionMetrics`, the
  same seen/unseen groups); only the order of summation follows the sessions'
  time order rather than log order, which can move a figure in its last bits.

Metrics per configuration: :class:`~qac.metrics.CompletionMetrics` over every
request (grouped "seen"/"unseen" by the first model's label set, as ``qac eval``)
and over the requests of queries that have a previous query; keystrokes saved
(characters not typed / characters of all queries; the acceptance itself is not
counted as a keystroke); the share of queries completed (accepted) at all;
per-keystroke latency p50/p95/p99 (in-process: the store look-up plus the
completer call; HTTP: the client's round trip, plus the server's ``took_ms``);
throughput (requests per second of wall time).

Sessions run in the time order of their first query. With ``concurrency`` > 1
they are handed to that many workers (threads in-process, coroutines over HTTP)
in that order. ``seed`` fixes the session sample (``sessions`` > 0) and the
keystroke-interval jitter.

Layout, one job a module: :mod:`~qac.replay.sessions` (the configuration, the log's
sessions), :mod:`~qac.replay.runs` (one configuration's measurements and their
figures), :mod:`~qac.replay.inprocess` and :mod:`~qac.replay.http` (the two
replays), :mod:`~qac.replay.report` (JSON and Markdown), :mod:`~qac.replay.plots`
(PNGs), :mod:`~qac.replay.cli` (``qac replay`` and ``sim/replay.py``). The names
below are the public ones, importable from ``qac.replay``.
"""

from qac.replay.cli import add_replay_arguments, run_replay
from qac.replay.http import check_url, replay_http
from qac.replay.inprocess import inprocess_systems, replay
from qac.replay.plots import plot
from qac.replay.report import build_report, markdown, session_effect, write_outputs
from qac.replay.runs import NO_CONTEXT, NO_SESSION, SAVED_BINS, SystemRun
from qac.replay.sessions import ACCEPT, MODES, ReplayConfig, Session, sample_sessions, sessions_of

__all__ = [
    "ACCEPT",
    "MODES",
    "NO_CONTEXT",
    "NO_SESSION",
    "SAVED_BINS",
    "ReplayConfig",
    "Session",
    "SystemRun",
    "add_replay_arguments",
    "build_report",
    "check_url",
    "inprocess_systems",
    "markdown",
    "plot",
    "replay",
    "replay_http",
    "run_replay",
    "sample_sessions",
    "session_effect",
    "sessions_of",
    "write_outputs",
]
