from __future__ import annotations

import gzip
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qac.errors import InputError
from qac.logs import LogEvent, pairs, query_counts, read_log

AOL_HEADER = "AnonID\tSessionID\tQuery\tQueryTime\tClickURLs\n"
AOL_ROWS = [
    "1\t0\tWeather  NYC\t2006-03-01 10:00:00\thttp://a\n",
    "1\t0\tweather nyc\t2006-03-01 10:00:05\thttp://b\n",  # repeat (another click)
    "1\t0\tweather boston\t2006-03-01 10:01:00\t\n",
    "1\t1\tweather boston\t2006-03-02 09:00:00\t\n",  # same query, new session: kept
    "2\t0\t   \t2006-03-01 11:00:00\t\n",  # empty after normalize: dropped
    "2\t0\tpizza\t2006-03-03 12:00:00\thttp://c|http://d\n",
]


def write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", ["log.tsv", "log.tsv.gz"])
def test_aol_format(tmp_path: Path, name: str) -> None:
    events = read_log(write(tmp_path / name, AOL_HEADER + "".join(AOL_ROWS)))
    assert events == [
        LogEvent("1/0", "weather nyc", datetime(2006, 3, 1, 10, 0, 0), "1"),
        LogEvent("1/0", "weather boston", datetime(2006, 3, 1, 10, 1, 0), "1"),
        LogEvent("1/1", "weather boston", datetime(2006, 3, 2, 9, 0, 0), "1"),
        LogEvent("2/0", "pizza", datetime(2006, 3, 3, 12, 0, 0), "2"),
    ]
    assert pairs(events) == [
        (None, "weather nyc"),
        ("weather nyc", "weather boston"),
        (None, "weather boston"),
        (None, "pizza"),
    ]
    assert query_counts(events) == {"weather nyc": 1, "weather boston": 2, "pizza": 1}


def test_since_until(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", AOL_HEADER + "".join(AOL_ROWS))
    got = read_log(path, since=datetime(2006, 3, 1, 10, 1), until=datetime(2006, 3, 3, 12))
    assert [e.query for e in got] == ["weather boston", "weather boston"]
    assert [e.query for e in read_log(path, until=datetime(2006, 3, 1, 10, 1))] == [
        "weather nyc"]
    # the repeat at 10:00:05 is dropped before filtering, even though its original is
    # outside the window
    assert read_log(path, since=datetime(2006, 3, 1, 10, 0, 1),
                    until=datetime(2006, 3, 1, 10, 0, 59)) == []


def test_since_timezone_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", AOL_HEADER + AOL_ROWS[0])
    with pytest.raises(InputError, match="compared"):
        read_log(path, since=datetime(2006, 1, 1, tzinfo=UTC))


def test_since_without_time_column(tmp_path: Path) -> None:
    path = write(tmp_path / "q.txt", "a\nb\n")
    with pytest.raises(InputError, match="no time column"):
        read_log(path, since=datetime(2006, 1, 1))


def test_plain_one_query_per_line(tmp_path: Path) -> None:
    text = "Cheap Flights\ncheap flights\nhotels\n\n\nhotels\r\ncars\n"
    path = write(tmp_path / "q.txt.gz", text)
    events = read_log(path)
    assert [(e.session, e.query) for e in events] == [
        ("0", "cheap flights"), ("0", "hotels"), ("1", "hotels"), ("1", "cars")]
    assert all(e.time is None and e.user is None for e in events)
    assert pairs(events) == [(None, "cheap flights"), ("cheap flights", "hotels"),
                             (None, "hotels"), ("hotels", "cars")]


def test_query_only_header(tmp_path: Path) -> None:
    events = read_log(write(tmp_path / "q.txt", "Query\na\nb\nb\nc\n"))
    assert [(e.session, e.query) for e in events] == [("0", "a"), ("0", "b"), ("0", "c")]


def test_user_time_split_at_30_minutes(tmp_path: Path) -> None:
    text = ("query\ttimestamp\tuser_id\n"
            "a\t2006-03-01 10:00:00\tu\n"
            "x\t2006-03-01 10:10:00\tv\n"
            "b\t2006-03-01 10:30:00\tu\n"   # exactly 30 min: same session
            "c\t2006-03-01 11:00:01\tu\n"   # 30 min 1 s: new session
            "y\t2006-03-01 12:00:00\tv\n")
    events = read_log(write(tmp_path / "log.tsv", text))
    assert [(e.session, e.query) for e in events] == [
        ("u/0", "a"), ("v/0", "x"), ("u/0", "b"), ("u/1", "c"), ("v/1", "y")]
    assert pairs(events)[2] == ("a", "b")


def test_session_column_without_user(tmp_path: Path) -> None:
    text = "Session\tQuery\ns1\ta\ns2\tb\ns1\tc\n"
    assert pairs(read_log(write(tmp_path / "log.tsv", text))) == [
        (None, "a"), (None, "b"), ("a", "c")]


@pytest.mark.parametrize("row, what", [
    ("1\t0\tfoo\t2006-03-01 10:00:00\n", "expected 5"),
    ("1\t0\tfoo\tyesterday\t\n", "bad time"),
    ("1\t0\t" + "x" * 2000 + "\t2006-03-01 10:00:00\t\n", "limit"),
])
def test_malformed_rows(tmp_path: Path, row: str, what: str,
                        caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "log.tsv", AOL_HEADER + AOL_ROWS[0] + row + AOL_ROWS[2])
    with pytest.raises(InputError, match=f"log.tsv:3: .*{what}"):
        read_log(path)
    with caplog.at_level(logging.WARNING, logger="qac.logs"):
        events = read_log(path, errors="skip")
    assert [e.query for e in events] == ["weather nyc", "weather boston"]
    assert "skipped 1 malformed rows" in caplog.text


def test_header_without_query_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="1: .*no query column"):
        read_log(write(tmp_path / "log.tsv", "user\ttime\nu\t2006-03-01 10:00:00\n"))


def test_bad_errors_option_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="errors"):
        read_log(tmp_path / "x", errors="ignore")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="cannot open"):
        read_log(tmp_path / "missing.tsv")


def test_empty_file(tmp_path: Path) -> None:
    assert read_log(write(tmp_path / "e.txt", "")) == []


# -- issue 15's minor items: a byte order mark, CR-only line endings ---------------

@pytest.mark.parametrize("name", ["log.tsv", "log.tsv.gz"])
@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", ["", "\ufeff"])
def test_a_bom_and_any_line_ending_keep_every_column(tmp_path: Path, name: str, eol: str,
                                                     bom: str) -> None:
    """A UTF-8 BOM must not hide the AnonID column (which merged users' sessions),
    and a file whose lines end in a lone CR is read line by line."""
    text = bom + (AOL_HEADER + "".join(AOL_ROWS)).replace("\n", eol)
    events = read_log(write(tmp_path / name, text))
    assert [(e.session, e.user, e.query) for e in events] == [
        ("1/0", "1", "weather nyc"), ("1/0", "1", "weather boston"),
        ("1/1", "1", "weather boston"), ("2/0", "2", "pizza")]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_plain_lines_with_any_ending_and_a_bom(tmp_path: Path, eol: str) -> None:
    text = "\ufeff" + eol.join(["new york", "new jersey", "", "pizza"]) + eol
    events = read_log(write(tmp_path / "q.txt", text))
    assert [(e.session, e.query) for e in events] == [
        ("0", "new york"), ("0", "new jersey"), ("1", "pizza")]


def test_a_query_only_header_after_a_bom(tmp_path: Path) -> None:
    events = read_log(write(tmp_path / "q.txt", "\ufeffQuery\r\nfoo\r\nbar\r\n"))
    assert [e.query for e in events] == ["foo", "bar"]


def test_a_huge_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "log.tsv", AOL_HEADER + AOL_ROWS[0]
                 + "1\t0\t" + "x" * 10_000_000 + "\t2006-03-01 10:00:00\t\n")
    with pytest.raises(InputError, match=r"log.tsv:3: text is 10000000 characters"):
        read_log(path)
