"""Retrieval mode end to end: train on the bundled sample, save, load, search, evaluate."""

from pathlib import Path

import numpy as np
import pytest

from qac import ModelFormatError, Retriever
from qac.errors import InputError
from qac.model.train import TrainConfig
from qac.retrieve import default_config, read_tsv

DATA = Path(__file__).resolve().parent.parent / "qac" / "data"


@pytest.fixture(scope="module")
def sample() -> list[tuple[str, str]]:
    return read_tsv(DATA / "sample_pairs.tsv")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, sample: list[tuple[str, str]]) -> Path:
    items = read_tsv(DATA / "sample_items.tsv")
    r = Retriever.train(sample, items, default_config(seed=1))
    return r.save(tmp_path_factory.mktemp("m") / "retriever")


def test_training_queries_retrieve_their_items(model_dir: Path,
                                               sample: list[tuple[str, str]]) -> None:
    r = Retriever.load(model_dir)
    truth: dict[str, set[str]] = {}
    for item, q in sample:
        truth.setdefault(q, set()).add(item)
    queries = sorted(truth)[:300]
    hits = sum(r.search(q, k=1)[0][0] in truth[q] for q in queries)
    assert hits / len(queries) > 0.8
    report = r.evaluate(sample)
    assert report.precision_at_1 > 0.8
    assert report.recall_at_10 >= report.precision_at_1 * 0.5
    assert report.latency_p50_ms > 0


def test_item_titles_make_unqueried_items_retrievable(tmp_path: Path) -> None:
    pairs = [("shoe-1", "red running shoes"), ("shoe-1", "running shoes"),
             ("coat-2", "blue rain jacket"), ("coat-2", "rain coat")]
    items = [("hose-3", "green garden hose"), ("shoe-1", "trail running shoe"),
             ("coat-2", "waterproof rain jacket")]
    r = Retriever.train(pairs, items)
    assert len(r.items) == 3
    assert r.search("garden hose", k=1)[0][0] == "hose-3"
    assert r.search("running shoes", k=1)[0][0] == "shoe-1"


def test_search_results_are_sorted_and_bounded(model_dir: Path) -> None:
    r = Retriever.load(model_dir)
    got = r.search("weather", k=7)
    assert 0 < len(got) <= 7
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)
    assert len({i for i, _ in got}) == len(got)


def test_bad_input(model_dir: Path) -> None:
    r = Retriever.load(model_dir)
    assert r.search("") == []
    assert r.search("   \t ") == []
    assert r.search(b"\xff\xfe") == []  # invalid UTF-8 -> replacement -> nothing left
    # invalid bytes and control characters are spaces, accents fold
    assert r.search(b"weath\xc3\xa9r \xff") == r.search("weather") != []
    assert r.search("wea\x00ther\x1b") == r.search("wea ther")
    with pytest.raises(InputError):
        r.search("x" * 5000)
    with pytest.raises(InputError):
        r.search("weather", k=0)


def test_corrupt_model_is_named(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    victim = next(bad.glob("layer1.ent_val.npy"))
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(ModelFormatError, match="layer1.ent_val.npy"):
        Retriever.load(bad)


def test_read_tsv_reports_the_bad_line(tmp_path: Path) -> None:
    f = tmp_path / "p.tsv"
    f.write_bytes(b"# comment\nitem\tgood query\nno tab here\n")
    with pytest.raises(InputError, match=r"p.tsv:3"):
        read_tsv(f)
    f.write_bytes(b"item\tcaf\xff query\n")
    assert read_tsv(f) == [("item", "caf\ufffd query")]


def test_a_refused_huge_k_leaves_search_safe(model_dir: Path) -> None:
    """Issue 15 D1: k=2**62 used to record a buffer size it never allocated, so the
    next big k overflowed the old buffer in C (a segfault at gc time)."""
    import gc

    r = Retriever.load(model_dir)
    before = r.search("goo", k=10)
    assert len(before) == 10
    with pytest.raises(InputError, match="2\\*\\*24"):
        r.search("goo", k=2**62)
    got = r.search("g", k=5000)
    gc.collect()
    assert 0 < len(got) <= 5000
    assert len({i for i, _ in got}) == len(got)
    assert r.search("goo", k=10) == before


def test_saved_retriever_keeps_its_search_settings(model_dir: Path) -> None:
    r = Retriever.load(model_dir)
    cfg = r.engine.config
    assert (cfg.beam, cfg.label_power, cfg.train.Cp, cfg.train.values) == (15, 2.0, 2.0,
                                                                          "float16")
    assert all(lw.ent_val.dtype == np.float16 for lw in r.engine.layers)
    assert default_config(beam=7).beam == 7 and default_config(threads=1).train.threads == 1


def test_default_config_takes_any_field() -> None:
    from qac.features import BlockConfig

    chars = (BlockConfig(kind="char", ngram_range=(2, 4)),)
    cfg = default_config(blocks=chars, threads=1)
    assert cfg.blocks == chars and cfg.train.threads == 1 and cfg.beam == 15


def test_a_format_1_directory_says_retrain(model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ModelFormatError, match="older qac: retrain"):
        Retriever.load(old)


def test_read_tsv_names_file_and_line_of_a_huge_line(tmp_path: Path) -> None:
    """Issue 15: a 10 MB line used to fail training with no file:line."""
    path = tmp_path / "pairs.tsv"
    path.write_text("a\tred shoes\nb\t" + "x" * 10_000_000 + "\nc\tblue\n")
    with pytest.raises(InputError, match=r"pairs.tsv:2: the text is 10000000 characters"):
        read_tsv(path)
    path.write_text("a\tred shoes\n" + "i" * 10_000 + "\tblue\n")
    with pytest.raises(InputError, match=r"pairs.tsv:2: the id is 10000 characters"):
        read_tsv(path)


def test_retrieve_train_cli_names_file_and_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from qac.cli import main

    path = tmp_path / "pairs.tsv"
    path.write_text("a\tred shoes\nb\t" + "x" * 10_000_000 + "\n")
    assert main(["retrieve", "train", "--pairs", str(path), "--out",
                 str(tmp_path / "m")]) != 0
    assert f"{path}:2: the text is 10000000 characters long" in capsys.readouterr().err


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_read_tsv_drops_a_bom_and_reads_any_line_ending(tmp_path: Path, eol: str) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_bytes(("\ufeffa\tred shoes" + eol + "b\tblue" + eol).encode("utf-8"))
    assert read_tsv(path) == [("a", "red shoes"), ("b", "blue")]


def test_an_item_id_with_a_newline_is_refused_at_training() -> None:
    with pytest.raises(InputError, match="without a newline"):
        Retriever.train([("a\nb", "red shoes")])


@pytest.mark.parametrize("clicked", ["shoe-a", "shoe-b"])
def test_a_pair_listed_more_often_ranks_its_item_higher(clicked: str) -> None:
    """A pair given N times is N clicks: of a query's two items, the one clicked four
    times comes first, whichever of the two it is (TrainConfig.relevance="log")."""
    other = "shoe-b" if clicked == "shoe-a" else "shoe-a"
    pairs = ([(clicked, "running shoes")] * 4 + [(other, "running shoes")]
             + [("shoe-a", "trail shoes"), ("shoe-b", "road shoes"),
                ("coat-c", "rain coat"), ("coat-c", "blue rain jacket"),
                ("hose-d", "garden hose")])
    got = Retriever.train(pairs, config=default_config(seed=1)).search("running shoes", k=2)
    assert [i for i, _ in got] == [clicked, other]
    assert got[0][1] > got[1][1]
    # without click costs the two are a near tie, and the more-clicked one loses its lead
    flat = Retriever.train(pairs, config=default_config(seed=1, train=TrainConfig(
        Cp=2.0, relevance="off"))).search("running shoes", k=2)
    assert {i for i, _ in flat} == {clicked, other}
    lead = dict(got)[clicked] - dict(got)[other]
    assert dict(flat)[clicked] - dict(flat)[other] < lead / 2


def test_retrieve_train_cli_trains_the_retrieval_defaults(tmp_path: Path) -> None:
    """`qac retrieve train` trains what default_config says (Cp 2, click costs, beam 15);
    its --beam and --seed replace only those fields."""
    from qac.cli import main

    path = tmp_path / "pairs.tsv"
    path.write_text("a\tred shoes\na\tred shoes\nb\tblue coat\nc\tgreen hose\n")
    assert main(["retrieve", "train", "--quiet", "--pairs", str(path), "--out",
                 str(tmp_path / "m")]) == 0
    assert Retriever.load(tmp_path / "m").engine.config == default_config()
    assert main(["retrieve", "train", "--quiet", "--pairs", str(path), "--out",
                 str(tmp_path / "m2"), "--beam", "7", "--seed", "3"]) == 0
    got = Retriever.load(tmp_path / "m2").engine.config
    assert got == default_config(beam=7, seed=3, train=TrainConfig(Cp=2.0, relevance="log",
                                                                   seed=3))
    assert main(["retrieve", "train", "--quiet", "--pairs", str(path), "--out",
                 str(tmp_path / "m3"), "--relevance", "off"]) == 0
    got = Retriever.load(tmp_path / "m3").engine.config
    assert got == default_config(train=TrainConfig(Cp=2.0, relevance="off"))


# -- known variants: a near-duplicate of a training text gets that text's items first --

VARIANT_PAIRS = [("ebay-1", "ebay"), ("ebay-1", "ebay"), ("ebay-1", "ebay motors"),
                 ("groups-2", "yahoo groups"), ("groups-2", "yahoo groups"),
                 ("groups-2", "yahoo groups"), ("group-3", "yahoo group"),
                 ("mail-4", "yahoo mail"), ("zoo-5", "travel zoo"), ("zoo-5", "zoo tickets")]


@pytest.fixture(scope="module")
def variant_model() -> Retriever:
    return Retriever.train(VARIANT_PAIRS, [("hose-6", "garden hose")], default_config(seed=1))


@pytest.mark.parametrize(("query", "first"), [("www.ebay.com", "ebay-1"),
                                              ("Ebay . COM", "ebay-1"),
                                              ("travelzoo", "zoo-5"),
                                              ("garden-hoses", "hose-6")])
def test_a_near_duplicate_of_a_training_text_gets_its_items_first(
        variant_model: Retriever, query: str, first: str) -> None:
    got = variant_model.search(query, k=3)
    assert got[0] == (first, pytest.approx(2.0, abs=1e-3))  # 1 + its share of the clicks
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True) and len({i for i, _ in got}) == len(got)


def test_the_key_s_items_come_most_clicked_first(variant_model: Retriever) -> None:
    # "yahoo groups" (3 clicks on groups-2) and "yahoo group" (1 on group-3) share a key
    got = variant_model.search("yahoo-groups", k=3)
    assert [i for i, _ in got[:2]] == ["groups-2", "group-3"]
    assert got[0][1] == pytest.approx(1.75, abs=1e-3) and got[1][1] == pytest.approx(1.25,
                                                                                     abs=1e-3)
    assert got[2][1] <= 1.0  # then the engine's answers


def test_a_text_seen_in_training_gets_the_engine_s_answer(variant_model: Retriever) -> None:
    v = variant_model.variants
    assert v.lookup("yahoo group") is None and v.lookup("garden hose") is None
    assert v.lookup("nothing like it") is None and v.lookup("www com") is None
    q = "yahoo group"
    want = variant_model.engine.search(q, k=4)
    assert variant_model.search(q, k=4) == [(variant_model.items.restore_key(i), s)
                                             for i, s in zip(*want, strict=True)]


def test_known_variants_survive_save_and_load(variant_model: Retriever, tmp_path: Path) -> None:
    back = Retriever.load(variant_model.save(tmp_path / "r"))
    for name, arr in variant_model.variants.arrays().items():
        np.testing.assert_array_equal(getattr(back.variants, name), arr)
    assert back.search("www.ebay.com", k=3) == variant_model.search("www.ebay.com", k=3)


@pytest.mark.parametrize("damage", ["unsorted keys", "item out of range", "short starts",
                                    "share above 1", "wrong dtype", "missing"])
def test_corrupt_known_variants_are_refused(variant_model: Retriever, damage: str) -> None:
    from qac.retrieve import KnownVariants

    a = {k: np.array(v) for k, v in variant_model.variants.arrays().items()}
    n = variant_model.engine.n_labels
    if damage == "unsorted keys":
        a["keys"] = a["keys"][::-1].copy()
    elif damage == "item out of range":
        a["items"][0] = n
    elif damage == "short starts":
        a["starts"] = a["starts"][:-1]
    elif damage == "share above 1":
        a["shares"][0] = 1.5
    elif damage == "wrong dtype":
        a["items"] = a["items"].astype(np.int64)
    else:
        del a["seen"]
    with pytest.raises(ModelFormatError, match="variants"):
        KnownVariants.from_arrays(a, n)
    KnownVariants.from_arrays({k: np.array(v) for k, v in
                               variant_model.variants.arrays().items()}, n)  # intact: fine


def test_merge_batch_is_merge_row_by_row(variant_model: Retriever) -> None:
    texts = ["www.ebay.com", "yahoo group", "yahoo-groups", "zzz", "travelzoo"]
    ids, scores = variant_model.engine.search_batch(texts, k=4)
    got_ids, got_scores = variant_model.variants.merge_batch(texts, ids, scores)
    assert got_ids.shape == ids.shape and got_scores.shape == ids.shape
    changed = 0
    for r, text in enumerate(texts):
        ok = ids[r] >= 0
        want_ids, want_scores = variant_model.variants.merge(
            text, ids[r][ok].tolist(), scores[r][ok].tolist(), 4)
        n = len(want_ids)
        assert got_ids[r, :n].tolist() == want_ids and (got_ids[r, n:] == -1).all()
        np.testing.assert_allclose(got_scores[r, :n], want_scores)
        changed += bool(got_scores[r, 0] > 1.0)
    assert changed == 3  # the three texts with a known variant, not the seen or unknown
