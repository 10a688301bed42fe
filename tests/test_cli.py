"""The command line, run in-process through qac.cli.main."""

import json
from pathlib import Path

import pytest

from qac.cli import main

DATA = Path(__file__).resolve().parent.parent / "qac" / "data"


def _sessions(path: Path) -> Path:
    rows = ["AnonID\tSessionID\tQuery\tQueryTime"]
    t = 0
    for i in range(8):
        for q in ("rose of jericho", "plant care tips"):
            t += 1
            rows.append(f"u{i}\t0\t{q}\t2006-03-01 10:{t // 60:02d}:{t % 60:02d}")
    for i in range(12):
        t += 1
        rows.append(f"v{i}\t0\tplaystation\t2006-03-02 10:{t // 60:02d}:{t % 60:02d}")
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
    assert set(out["results"]) == {"mpc", "m", "m -session"}
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


def test_long_tail_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _sessions(tmp_path / "log.tsv")
    assert main(["train", "--log", str(log), "--out", str(tmp_path / "lt"), "--until",
                 "2006-05-18", "--quiet", "--trie-depth", "1", "--longtail"]) == 0
    capsys.readouterr()
    # a query nobody issued, but this user did: the history generator offers it
    assert main(["complete", str(tmp_path / "lt"), "pla", "--history", "Planet  Earth",
                 "--history", "rose of jericho", "--json"]) == 0
    got = {g["text"]: g["source"] for g in json.loads(capsys.readouterr().out)}
    assert got.get("planet earth") == "history"
    assert main(["eval", str(tmp_path / "lt"), "--log", str(log), "--since", "2006-05-18",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    # with and without the long-tail pool in one run, then one generator off at a time
    assert list(out)[:3] == ["mpc", "lt", "lt -longtail"]
    assert set(out) == {"mpc", "lt -longtail", "lt", "lt -session", "lt -gen word",
                        "lt -gen suffix", "lt -gen session", "lt -gen history"}
    assert all(0.0 <= r["coverage"] <= 1.0 for r in out.values())
