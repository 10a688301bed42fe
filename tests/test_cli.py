"""The command line, run in-process through qac.cli.main."""

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sessionlog import weeks_log

from qac.cli import build_parser, main

DATA = Path(__file__).resolve().parent.parent / "qac" / "data"


def _sessions(path: Path) -> Path:
    """Three weeks of sessions (enough for ``qac train`` to fit its own ranker on the
    last one), then a test session on 2006-05-20."""
    rows = ["AnonID\tSessionID\tQuery\tQueryTime"]
    for e in weeks_log(3, per_day=25).events:
        assert e.time is not None
        rows.append(f"{e.user}\t{e.session.split('/')[1]}\t{e.query}\t"
                    f"{e.time.isoformat(sep=' ')}")
    rows.append("w1\t0\tplaystation 5\t2006-05-20 10:00:00")
    rows.append("w1\t0\tplant care tips\t2006-05-20 10:01:00")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_completion_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _sessions(tmp_path / "log.tsv")
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "m"), "--until",
                 "2006-05-18", "--quiet", "--trie-depth", "1"]) == 0
    capsys.readouterr()
    assert main(["complete", str(tmp_path / "m"), "pl", "--previous", "rose of jericho",
                 "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got[0]["text"] == "plant care tips"
    assert {"text", "score", "source"} <= set(got[0])
    assert main(["eval", str(tmp_path / "m"), "--log", str(log), "--since", "2006-05-18",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cases"] == 1
    assert {"mpc", "hist+mpc", "m", "m -context", "m -session"} <= set(out["results"])
    assert out["results"]["m"]["metrics"]["overall"]["count"] > 0


def test_retrieval_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs, items = DATA / "sample_pairs.tsv", DATA / "sample_items.tsv"
    assert main(["retrieve", "train", "--pairs", str(pairs), "--items", str(items), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["retrieve", "query", str(tmp_path / "r"), "google", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and "google" in hits[0]["item"]
    assert main(["retrieve", "eval", str(tmp_path / "r"), "--pairs", str(pairs), "--json",
                 "--latency-sample", "50"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision_at_1"] > 0.8


def test_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["complete", str(tmp_path / "missing"), "pl"]) == 2
    assert "model directory not found" in capsys.readouterr().err
    assert main(["retrieve", "train", "--pairs", str(tmp_path / "nope.tsv"), "--out",
                 str(tmp_path / "r")]) == 2
    assert "nope.tsv" in capsys.readouterr().err
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab on this line\n")
    assert main(["retrieve", "train", "--pairs", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "bad.tsv:1" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_trains_once_and_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("QAC_CACHE", str(tmp_path))
    assert main(["demo", "goo", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "completions of 'goo':" in out and "google" in out
    assert (tmp_path / "demo-completer" / "manifest.json").exists()
    stamp = (tmp_path / "demo-completer" / "manifest.json").stat().st_mtime
    assert main(["demo", "--no-serve"]) == 0  # cached: not trained again
    assert (tmp_path / "demo-completer" / "manifest.json").stat().st_mtime == stamp


def test_train_complete_eval_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    log = _sessions(tmp_path / "log.tsv")
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "m"), "--until",
                 "2006-05-18", "--quiet", "--trie-depth", "1"]) == 0
    capsys.readouterr()
    # a query nobody issued, but this user did: the history source offers it
    assert main(["complete", str(tmp_path / "m"), "pla", "--history", "Planet  Earth",
                 "--history", "rose of jericho", "--json"]) == 0
    got = {g["text"]: g["source"] for g in json.loads(capsys.readouterr().out)}
    assert got.get("planet earth") == "history"
    assert main(["eval", str(tmp_path / "m"), "--log", str(log), "--since", "2006-05-18",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    # the baselines first (the personal one also under the model's blocklist), then the
    # model, without any context, and one source off at a time
    assert list(out)[:5] == ["mpc", "hist+mpc", "hist+mpc -blocked", "m", "m -context"]
    assert set(out) == {"mpc", "hist+mpc", "hist+mpc -blocked", "m", "m -context",
                        "m -session", "m -gen history", "m -gen session", "m -gen suffix",
                        "m -gen word"}
    assert all(0.0 <= r["coverage"] <= 1.0 for r in out.values())


# -- a newcomer's first hour: version, help, errors, strict JSON, logging ------------------

def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata

    import qac

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"qac {qac.__version__}"
    assert qac.__version__ == importlib.metadata.version("qac")


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    def walk(name: str, p: argparse.ArgumentParser) -> Iterator[tuple[str, Any]]:
        yield name, p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from walk(f"{name} {sub}", child)
    yield from walk("qac", build_parser())


# qac/replay.py's own arguments (the replay command) that have no help text yet
def test_every_argument_has_help_and_shows_its_default() -> None:
    seen = 0
    for name, parser in _parsers():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction
                          | argparse._SubParsersAction):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            seen += 1
            assert action.help, f"{name} {flag}: no help"
            default = action.default
            if default not in (None, False, [], "") and action.option_strings:
                shown = " ".join(text.split())  # help text is wrapped
                assert f"default: {default}" in shown or f"default {default}" in shown, (
                    f"{name} {flag}: default {default!r} not shown")
    assert seen > 60


def test_eval_on_an_empty_log_fails_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _sessions(tmp_path / "log.tsv")
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "m"), "--quiet",
                 "--trie-depth", "1"]) == 0
    capsys.readouterr()
    for content in ("", "AnonID\tSessionID\tQuery\tQueryTime\n"):
        empty = tmp_path / "empty.tsv"
        empty.write_text(content)
        assert main(["eval", str(tmp_path / "m"), "--log", str(empty), "--json"]) == 2
        got = capsys.readouterr()
        assert got.out == ""
        assert f"{empty}: no queries" in got.err and "empty" in got.err
    # rows, but none to test from that date on
    assert main(["eval", str(tmp_path / "m"), "--log", str(log), "--since", "2007-01-01"]) == 2
    assert f"{log}: no test queries from 2007-01-01 on" in capsys.readouterr().err
    # training on an empty log names it too
    assert main(["train", "--log", str(empty), "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert f"{empty}: no queries to learn from" in capsys.readouterr().err


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from qac.cli import _print_json

    _print_json({"nan": float("nan"), "inf": [float("inf"), -float("inf")], "ok": 0.5,
                 "np": np.float32("nan"), "n": np.int64(3), "t": (1.0, float("nan"))})
    assert _strict(capsys.readouterr().out) == {
        "nan": None, "inf": [None, None], "ok": 0.5, "np": None, "n": 3, "t": [1.0, None]}


def test_eval_and_complete_json_parse_strictly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _sessions(tmp_path / "log.tsv")
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "m"), "--until",
                 "2006-05-18", "--quiet", "--trie-depth", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m"), "--log", str(log), "--since", "2006-05-18",
                 "--json", "--no-ablation"]) == 0
    out = _strict(capsys.readouterr().out)
    assert out["cases"] == 1
    assert main(["complete", str(tmp_path / "m"), "pl", "--json"]) == 0
    got = _strict(capsys.readouterr().out)
    assert got and all(c["text"].startswith("pl") and isinstance(c["score"], float)
                       and c["source"] for c in got)
    assert "playstation" in [c["text"] for c in got]


def test_no_matches_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _sessions(tmp_path / "log.tsv")
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "m"), "--quiet",
                 "--trie-depth", "1"]) == 0
    capsys.readouterr()
    assert main(["complete", str(tmp_path / "m"), "zzz"]) == 0
    got = capsys.readouterr()
    assert got.out == ""
    assert "no completions for 'zzz'" in got.err
    assert main(["complete", str(tmp_path / "m"), "zzz", "--previous", "rose of jericho"]) == 0
    assert "no completions for 'zzz' after 'rose of jericho'" in capsys.readouterr().err
    assert main(["complete", str(tmp_path / "m"), "zzz", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_bad_numbers_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["complete", "m", "pl", "-k", "0"])
    assert exit_.value.code == 2
    assert "-k: must be >= 1, got 0" in capsys.readouterr().err


def test_log_lines_go_through_tqdm(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """While a command runs, the console log handler writes through tqdm.write (so a
    log line never lands inside a progress bar); afterwards it is back."""
    import logging

    import qac.cli

    seen: list[str] = []

    def fake(args: argparse.Namespace) -> int:
        seen.extend(type(h).__name__ for h in logging.getLogger().handlers)
        logging.getLogger("qac.test").info("a line for the log")
        return 0

    monkeypatch.setattr(qac.cli, "cmd_complete", fake)
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh `qac` process
    assert main(["complete", "m", "pl"]) == 0
    assert seen == ["_TqdmLoggingHandler"]
    assert "qac.test: a line for the log" in capsys.readouterr().err
    assert [type(h) for h in logging.getLogger().handlers] == [logging.StreamHandler]
