"""The replay's report: the JSON document (:func:`build_report`), its Markdown
rendering, and the output directory (:func:`write_outputs`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qac.replay.plots import plot
from qac.replay.runs import NO_SESSION, SystemRun
from qac.replay.sessions import ReplayConfig, Session


def session_effect(summaries: dict[str, dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """For every NAME with a ``NAME -session`` run: the two on queries with a
    previous query (MRR@k, success@k, keystrokes saved), difference and ratio."""
    out = []
    key = f"mrr@{k}"
    for name, s in summaries.items():
        off = summaries.get(name + NO_SESSION)
        if off is None:
            continue
        on_m, off_m = s["with_previous"]["overall"], off["with_previous"]["overall"]
        row: dict[str, Any] = {
            "system": name,
            "mrr_with_session": on_m[key],
            "mrr_without_session": off_m[key],
            "mrr_delta": on_m[key] - off_m[key],
            "mrr_ratio": on_m[key] / off_m[key] if off_m[key] else float("nan"),
            "success_with_session": on_m[f"success@{k}"],
            "success_without_session": off_m[f"success@{k}"],
        }
        on_l, off_l = s["with_previous"]["by_length"], off["with_previous"]["by_length"]
        if 1 in on_l and 1 in off_l:  # every query is asked at length 1: no survivor bias
            row["mrr_at_length_1_with_session"] = on_l[1][key]
            row["mrr_at_length_1_without_session"] = off_l[1][key]
        if "keystrokes_with_previous" in s:
            row["saved_pct_with_session"] = s["keystrokes_with_previous"]["saved_pct"]
            row["saved_pct_without_session"] = off["keystrokes_with_previous"]["saved_pct"]
        out.append(row)
    return out


def build_report(runs: Sequence[SystemRun], config: ReplayConfig, sessions: Sequence[Session],
                 meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: configuration, per-configuration figures, session effect."""
    summaries = {r.name: r.summary() for r in runs}
    n_queries = sum(len(s.queries) for s in sessions)
    return {
        "format": "qac-replay/1",
        "config": {**asdict(config), "lengths": list(config.lengths), **meta},
        "sessions": len(sessions),
        "queries": n_queries,
        "queries_with_previous": n_queries - len(sessions),
        "systems": summaries,
        "session_effect": session_effect(summaries, config.k),
    }


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def markdown(report: dict[str, Any], max_len: int = 12) -> str:
    """A Markdown report of :func:`build_report`'s document."""
    cfg = report["config"]
    k = cfg["k"]
    mrr = f"mrr@{k}"
    systems = report["systems"]
    lines = [
        "# Session replay",
        "",
        f"- target: {cfg.get('target', '?')}; log: `{cfg.get('log', '?')}`"
        + (f" from {cfg['since']}" if cfg.get("since") else "")
        + (f" until {cfg['until']}" if cfg.get("until") else ""),
        f"- {report['sessions']:,} sessions, {report['queries']:,} queries "
        f"({report['queries_with_previous']:,} with a previous query in their session)",
        f"- mode {cfg['mode']}, k={k}, acceptance "
        + (f"at first sight among the {k} shown" if cfg["accept"] == "shown"
           else f"within the top {cfg['top_m']}")
        + f", concurrency {cfg['concurrency']}, keystroke interval {cfg['interval_ms']} ms, "
        f"seed {cfg['seed']}" + (", from the empty prefix" if cfg["from_empty"] else ""),
    ]
    if cfg.get("command"):
        lines.append(f"- command: `{cfg['command']}`")
    if cfg.get("wall_s") is not None:
        lines.append(f"- wall time of the whole run: {cfg['wall_s']:.1f} s")
    lines += ["", "## Summary", "",
              f"MRR@{k}, s@1, s@{k}: over every request; \"w/ prev\": requests of queries "
              "with a previous query in their session; \"seen\": requests whose target is "
              "in the first model's label set; \"completed\": share of queries accepted "
              "from a suggestion; \"saved %\": characters not typed / all characters.", ""]
    typed = cfg["mode"] == "typed"
    head = ["system", "requests", f"MRR@{k}", "s@1", f"s@{k}", f"MRR@{k} w/ prev", "seen"]
    if typed:
        head += ["completed", "saved %", "saved % w/ prev"]
    head += ["p50 ms", "p95 ms", "p99 ms", "req/s", "errors"]
    lines += ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for name, s in systems.items():
        ov, wp, lat = s["metrics"]["overall"], s["with_previous"]["overall"], s["latency_ms"]
        row = [name, f"{s['throughput']['requests']:,}", _f(ov[mrr]), _f(ov["success@1"]),
               _f(ov[f"success@{k}"]), _f(wp[mrr]),
               _f(s["metrics"]["by_group"].get("seen", {}).get(mrr))]
        if typed:
            ks, kp = s["keystrokes"], s["keystrokes_with_previous"]
            row += [_f(ks["completed_share"], 3), _f(ks["saved_pct"], 1), _f(kp["saved_pct"], 1)]
        row += [_f(lat["p50"], 3), _f(lat["p95"], 3), _f(lat["p99"], 3),
                f"{s['throughput']['requests_per_s']:,.0f}", str(s["errors"])]
        lines.append("| " + " | ".join(row) + " |")
    if any("server_took_ms" in s for s in systems.values()):
        lines += ["", "Server-side time (`took_ms` of each answer), ms:", "",
                  "| system | p50 | p95 | p99 |", "| --- | ---: | ---: | ---: |"]
        for name, s in systems.items():
            if "server_took_ms" in s:
                t = s["server_took_ms"]
                lines.append(f"| {name} | {_f(t['p50'], 3)} | {_f(t['p95'], 3)} | "
                             f"{_f(t['p99'], 3)} |")
    if report["session_effect"]:
        lines += ["", "## Session effect (queries with a previous query)", ""]
        for e in report["session_effect"]:
            text = (f"- **{e['system']}**: MRR@{k} {e['mrr_with_session']:.4f} with the "
                    f"session vs {e['mrr_without_session']:.4f} without "
                    f"({e['mrr_delta']:+.4f}, x{e['mrr_ratio']:.2f}); success@{k} "
                    f"{e['success_with_session']:.4f} vs {e['success_without_session']:.4f}")
            if "mrr_at_length_1_with_session" in e:
                text += (f"; at prefix length 1 MRR@{k} {e['mrr_at_length_1_with_session']:.4f}"
                         f" vs {e['mrr_at_length_1_without_session']:.4f}")
            if "saved_pct_with_session" in e:
                text += (f"; keystrokes saved {e['saved_pct_with_session']:.1f}% vs "
                         f"{e['saved_pct_without_session']:.1f}%")
            lines.append(text)
    # by prefix length
    lengths = sorted({int(n) for s in systems.values() for n in s["metrics"]["by_length"]})
    lengths = [n for n in lengths if n <= max_len]
    if lengths:
        lines += ["", f"## MRR@{k} by prefix length", ""]
        if typed:
            lines += ["Every keystroke the user actually typed counts, until acceptance: at "
                      "length n the queries still being typed (those accepted earlier drop "
                      "out). `qac eval` (and `--mode fixed`) asks every query at fixed lengths "
                      "instead, so these are not its figures. Past length 1 a system that "
                      "gets more queries accepted early leaves the harder ones to the later "
                      "lengths, so a better system can show a lower MRR there: compare the "
                      "overall, length-1 and keystrokes-saved figures, or run `--mode fixed`.",
                      ""]
        lines += ["| system | " + " | ".join(f"n={n}" for n in lengths) + " |",
                  "| --- |" + " ---: |" * len(lengths)]
        for name, s in systems.items():
            bl = {int(n): v for n, v in s["metrics"]["by_length"].items()}
            lines.append(f"| {name} | " + " | ".join(
                _f(bl[n][mrr]) if n in bl else "-" for n in lengths) + " |")
        lines += ["", f"success@{k} by prefix length:", "",
                  "| system | " + " | ".join(f"n={n}" for n in lengths) + " |",
                  "| --- |" + " ---: |" * len(lengths)]
        for name, s in systems.items():
            bl = {int(n): v for n, v in s["metrics"]["by_length"].items()}
            lines.append(f"| {name} | " + " | ".join(
                _f(bl[n][f"success@{k}"]) if n in bl else "-" for n in lengths) + " |")
        first = next(iter(systems.values()))
        bl = {int(n): v for n, v in first["metrics"]["by_length"].items()}
        lines += ["", "requests at each length (first system): " + ", ".join(
            f"n={n}: {bl[n]['count']:,}" for n in lengths if n in bl)]
    lines += ["", "Plots: `mrr_by_prefix.png`, `latency_cdf.png`"
              + (", `keystrokes_saved.png`" if typed else "") + "."]
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    """NaN -> None, so the file is strict JSON."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def write_outputs(runs: Sequence[SystemRun], report: dict[str, Any], out: str | os.PathLike[str],
                  plots: bool = True) -> list[Path]:
    """Write ``replay.json``, ``replay.md`` and the PNGs into ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "replay.json", out / "replay.md"]
    tmp = out / ".replay.json.tmp"
    tmp.write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, paths[0])
    paths[1].write_text(markdown(report))
    if plots:
        paths += plot(runs, report, out)
    return paths
