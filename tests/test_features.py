"""qac.features: the C kernel against a plain-Python reference of the spec."""

from __future__ import annotations

import json
import math
import string
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qac import _kernel
from qac.errors import InputError, KernelError, ModelFormatError
from qac.features import BlockConfig, Vectorizer
from qac.features.config import Kind

# ---------------------------------------------------------------- reference

SEPS = set(" \t\n\x0b\x0c\r") | set(string.punctuation)
FNV_OFFSET, FNV_PRIME, MASK = 14695981039346656037, 1099511628211, (1 << 64) - 1


MIX = 0x9E3779B97F4A7C15


def ref_key(block: int, gram: str) -> int:
    h = FNV_OFFSET
    for byte in bytes([block]) + gram.encode():
        h = ((h ^ byte) * FNV_PRIME) & MASK
    return (h * MIX) & MASK


def ref_tokens(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text:
        if ch in SEPS:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def ref_tf(block: BlockConfig, text: str) -> dict[str, float]:
    """N-gram -> tf of one field, straight from the docstring's definitions."""
    lo, hi = block.ngrams
    tf: dict[str, float] = defaultdict(float)
    toks = ref_tokens(text)
    if block.kind == "word":
        for i in range(len(toks)):
            for n in range(lo, hi + 1):
                if i + n <= len(toks):
                    tf[" ".join(toks[i : i + n])] += 1.0
        return tf
    for i, tok in enumerate(toks):
        open_last = block.open_end and i == len(toks) - 1 and text[-1] not in SEPS
        padded = tok if open_last else tok + "#"
        if len(padded) < lo:
            tf[padded] += 1.0
            continue
        for p in range(len(padded)):
            w = (p + 1) ** -block.position_decay if block.kind == "prefix_char" else 1.0
            for n in range(lo, hi + 1):
                if p + n <= len(padded):
                    tf[padded[p : p + n]] += w
    return tf


class RefVectorizer:
    def __init__(self, blocks: list[BlockConfig]) -> None:
        self.blocks = blocks

    def fit(self, rows: list[tuple[str, str]]) -> RefVectorizer:
        n = len(rows)
        self.vocab: list[dict[str, int]] = []
        self.idf: list[dict[str, float]] = []
        self.keys: list[int] = []
        offset = 0
        for b, blk in enumerate(self.blocks):
            df = Counter(g for row in rows for g in set(ref_tf(blk, row[blk.field])))
            grams = [g for g, d in df.items() if d >= blk.min_df]
            if blk.max_features is not None:
                grams = sorted(grams, key=lambda g: (-df[g], ref_key(b, g)))[: blk.max_features]
            grams.sort(key=lambda g: ref_key(b, g))
            self.vocab.append({g: offset + i for i, g in enumerate(grams)})
            self.idf.append({g: math.log((1 + n) / (1 + df[g])) + 1 for g in grams})
            self.keys += [ref_key(b, g) for g in grams]
            offset += len(grams)
        return self

    def row(self, text: str, context: str) -> dict[int, float]:
        out: dict[int, float] = {}
        for b, blk in enumerate(self.blocks):
            field = (text, context)[blk.field]
            vec = {}
            for g, t in ref_tf(blk, field).items():
                if g in self.vocab[b]:
                    if blk.sublinear_tf and t > 1:
                        t = 1 + math.log(t)
                    vec[self.vocab[b][g]] = t * self.idf[b][g]
            norm = math.sqrt(sum(v * v for v in vec.values()))
            if norm > 0:
                out.update({k: v / norm * blk.weight for k, v in vec.items()})
        norm = math.sqrt(sum(v * v for v in out.values()))
        return {k: v / norm for k, v in out.items()}


def assert_row(idx: np.ndarray, val: np.ndarray, want: dict[int, float]) -> None:
    assert idx.dtype == np.int32 and val.dtype == np.float32
    assert list(idx) == sorted(want), (list(idx), sorted(want))
    np.testing.assert_allclose(val, [want[int(i)] for i in idx], rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------- strategies

WORDS = ["echo", "wi", "with", "é", "ß", "中文", "a", "play", "😀x", "it's"]
CHARS = list("abcé中😀 .-#'_/\t") + ["\u0301", "ω"]
text_st = st.one_of(
    st.text(alphabet=st.sampled_from(CHARS), max_size=24),
    st.lists(st.sampled_from(WORDS), max_size=6).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=4).map(lambda ws: " ".join(ws) + " "),
    st.text(max_size=12),
)


@st.composite
def block_st(draw: st.DrawFn) -> BlockConfig:
    kind: Kind = draw(st.sampled_from(["word", "char", "prefix_char"]))
    lo = draw(st.integers(1, 3))
    hi = draw(st.integers(lo, 4))
    return BlockConfig(
        kind=kind,
        ngram_range=(lo, hi),
        field=draw(st.integers(0, 1)),
        weight=draw(st.sampled_from([1.0, 0.5, 2.0])),
        min_df=draw(st.integers(1, 2)),
        max_features=draw(st.one_of(st.none(), st.integers(1, 20))),
        sublinear_tf=draw(st.booleans()),
        position_decay=draw(st.sampled_from([0.0, 0.5, 1.0, 2.0]))
        if kind == "prefix_char" else 1.0,
        open_end=draw(st.booleans()) if kind != "word" else False,
    )


rows_st = st.lists(st.tuples(text_st, st.one_of(st.none(), text_st)), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=st.lists(block_st(), min_size=1, max_size=3), rows=rows_st, extra=rows_st)
def test_kernel_matches_reference(
    blocks: list[BlockConfig],
    rows: list[tuple[str, str | None]],
    extra: list[tuple[str, str | None]],
) -> None:
    v = Vectorizer(blocks).fit([t for t, _ in rows], [c for _, c in rows])
    ref = RefVectorizer(blocks).fit([(t, c or "") for t, c in rows])
    assert v.arrays()["keys"].tolist() == ref.keys
    every = rows + extra
    X = v.transform([t for t, _ in every], [c for _, c in every], threads=2)
    assert X.shape == (len(every), len(ref.keys))
    for r, (t, c) in enumerate(every):
        want = ref.row(t, c or "")
        lo, hi = X.indptr[r], X.indptr[r + 1]
        assert_row(X.indices[lo:hi], X.data[lo:hi], want)
        idx, val = v.transform_one(t, c)
        np.testing.assert_array_equal(idx, X.indices[lo:hi])
        np.testing.assert_array_equal(val, X.data[lo:hi])


# ---------------------------------------------------------------- fixed cases


def extract(block: BlockConfig, texts: list[str], block_index: int = 0) -> list[set[int]]:
    from qac.features.vectorizer import _encode_column, _spec

    buf, offs = _encode_column(texts, "texts", allow_none=False)
    keys, ptr = _kernel.extract_keys(_spec(block, 0), block_index, buf, offs, 2)
    return [set(keys[ptr[i] : ptr[i + 1]].tolist()) for i in range(len(texts))]


def test_echo_with_char_trigrams() -> None:
    (got,) = extract(BlockConfig("char", (3, 3)), ["echo with"])
    assert got == {ref_key(0, g) for g in ["ech", "cho", "ho#", "wit", "ith", "th#"]}
    (got,) = extract(BlockConfig("char", (3, 3)), ["a b"], block_index=2)
    assert got == {ref_key(2, "a#"), ref_key(2, "b#")}  # shorter than n: emitted whole


def test_word_ngrams_and_separators() -> None:
    (got,) = extract(BlockConfig("word", (1, 2)), ["it's  a-b  é中"])
    want = ["it", "s", "a", "b", "é中", "it s", "s a", "a b", "b é中"]
    assert got == {ref_key(0, g) for g in want}


def test_open_end() -> None:
    blk = BlockConfig("char", (3, 3), open_end=True)
    typing, done, punct = extract(blk, ["echo wi", "echo wi ", "echo wi."])
    assert typing == {ref_key(0, g) for g in ["ech", "cho", "ho#", "wi"]}
    assert done == punct == {ref_key(0, g) for g in ["ech", "cho", "ho#", "wi#"]}


def test_prefix_weights() -> None:
    blk = BlockConfig("prefix_char", (1, 2), position_decay=1.0)
    v = Vectorizer([blk]).fit(["abc"])  # one row: every idf is 1
    idx, val = v.transform_one("abc")
    inv = {ref_key(0, g): g for g in ["a", "b", "c", "#", "ab", "bc", "c#"]}
    keys = v.arrays()["keys"]
    got = {inv[int(keys[i])]: float(x) for i, x in zip(idx, val, strict=True)}
    tf = {"a": 1, "ab": 1, "b": 1 / 2, "bc": 1 / 2, "c": 1 / 3, "c#": 1 / 3, "#": 1 / 4}
    norm = math.sqrt(sum(t * t for t in tf.values()))
    assert got == pytest.approx({g: t / norm for g, t in tf.items()}, rel=1e-6)


def test_empty_and_unknown_rows() -> None:
    v = Vectorizer([BlockConfig("char"), BlockConfig("word", field=1)]).fit(["abc"], ["x"])
    X = v.transform(["", "zzz", "abc"], [None, "", "q"])
    assert X.indptr.tolist()[:3] == [0, 0, 0] and X.getrow(2).nnz > 0
    idx, val = v.transform_one("")
    assert idx.size == 0 and val.size == 0


def test_batch_deterministic_across_threads() -> None:
    rng = np.random.default_rng(0)
    words = ["echo", "play", "music", "with", "é", "alexa", "dot", "中", "timer", "x"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 6))) for _ in range(3000)]
    ctx = [None if i % 3 == 0 else texts[i - 1] for i in range(len(texts))]
    blocks = [
        BlockConfig("prefix_char", open_end=True), BlockConfig("char"), BlockConfig("word", field=1)
    ]
    v = Vectorizer(blocks).fit(texts, ctx)
    base = v.transform(texts, ctx, threads=1)
    for threads in (2, 3, 7, 0):
        X = v.transform(texts, ctx, threads=threads)
        for a, b in ((X.indptr, base.indptr), (X.indices, base.indices), (X.data, base.data)):
            np.testing.assert_array_equal(a, b)
    assert base.has_sorted_indices and base.indices.dtype == np.int32
    norms = np.sqrt(base.multiply(base).sum(axis=1)).A1
    np.testing.assert_allclose(norms[base.indptr[1:] > base.indptr[:-1]], 1.0, rtol=1e-5)


def test_long_rows_with_many_duplicates_match_reference() -> None:
    """Rows of hundreds of n-grams, mostly repeats: the sort/merge path beyond small rows."""
    rng = np.random.default_rng(1)
    alphabet = list("ab é") + ["中"]
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(100, 1024)))) for _ in range(12)]
    texts += ["ab " * 300, "a" * 1024, "é" * 1000 + " x"]
    blocks = [
        BlockConfig("prefix_char", (1, 5), position_decay=0.5, sublinear_tf=True),
        BlockConfig("char", (2, 4), open_end=True),
        BlockConfig("word", (1, 3), min_df=2),
    ]
    v = Vectorizer(blocks).fit(texts[::2])
    ref = RefVectorizer(blocks).fit([(t, "") for t in texts[::2]])
    X = v.transform(texts)
    for r, t in enumerate(texts):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        assert_row(X.indices[lo:hi], X.data[lo:hi], ref.row(t, ""))


def test_transform_one_is_thread_safe() -> None:
    texts = [f"query {i} with words {i % 7}" for i in range(200)]
    v = Vectorizer([BlockConfig("prefix_char"), BlockConfig("word")]).fit(texts)
    want = [v.transform_one(t) for t in texts]

    def work(k: int) -> bool:
        return all(
            all(np.array_equal(a, b) for a, b in zip(v.transform_one(t), want[i], strict=True))
            for i, t in enumerate(texts)
            for _ in range(k)
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, [3] * 8))


def test_invalid_utf8_reaches_c_and_raises() -> None:
    v = Vectorizer([BlockConfig("char")]).fit(["abc"])
    for bad in [b"ab\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"]:
        code, _, _ = _kernel.featurize_raw(v.handle, [bad], [len(bad)], 64)
        assert code == _kernel.lib.QAC_E_UTF8
        with pytest.raises(InputError):
            _kernel.check(code, "qac_featurize")
        with pytest.raises(InputError):
            _kernel.featurize_batch(v.handle, [(bad, np.array([0, len(bad)]))], 1, 2)
    code, idx, _ = _kernel.featurize_raw(v.handle, ["é中😀".encode()], [9], 64)
    assert code == 0


def test_text_length_limit() -> None:
    v = Vectorizer([BlockConfig("char"), BlockConfig("word", field=1)]).fit(["abc"])
    v.transform_one("é" * 1024, "a" * 1024)
    with pytest.raises(InputError):
        v.transform_one("é" * 1025)
    with pytest.raises(InputError):
        v.transform_one("a", "a" * 1025)
    with pytest.raises(InputError):
        v.transform(["ok", "b" * 1025])
    with pytest.raises(InputError):
        Vectorizer([BlockConfig("char")]).fit(["x" * 1025])


def test_capacity_contract() -> None:
    lib, ffi = _kernel.lib, _kernel.ffi
    v = Vectorizer([BlockConfig("prefix_char", (1, 4)), BlockConfig("word", (1, 3))])
    text = "a bb ccc dddd a bb"
    v.fit([text])
    lens = ffi.new("size_t[]", [len(text)])
    cap = ffi.new("size_t *")
    assert lib.qac_featurize_capacity(v.handle, lens, 1, cap) == 0
    code, idx, _ = _kernel.featurize_raw(v.handle, [text.encode()], [len(text)], int(cap[0]))
    assert code == 0 and idx.size > 0
    code, _, _ = _kernel.featurize_raw(v.handle, [text.encode()], [len(text)], 3)
    assert code == lib.QAC_E_CAPACITY
    with pytest.raises(KernelError):
        _kernel.check(code, "qac_featurize")
    assert lib.qac_featurize(ffi.NULL, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL, 0, ffi.NULL) == (
        lib.QAC_E_INPUT
    )


def test_from_parts_roundtrip_mmap(tmp_path: Path) -> None:
    texts = ["echo with", "play music", "echo dot", "timer", "é中 play"]
    ctx = ["", "echo", None, "play music", "x"]
    blocks = [
        BlockConfig("prefix_char", open_end=True, position_decay=0.5),
        BlockConfig("char", (2, 3), sublinear_tf=True, weight=0.5),
        BlockConfig("word", field=1, max_features=3),
    ]
    v = Vectorizer(blocks).fit(texts, ctx)
    (tmp_path / "features.json").write_text(json.dumps(v.config()))
    for name, arr in v.arrays().items():
        np.save(tmp_path / f"{name}.npy", arr)
    arrays = {n: np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("keys", "idf", "dir")}
    w = Vectorizer.from_parts(json.loads((tmp_path / "features.json").read_text()), arrays)
    assert w.blocks == v.blocks and w.n_features == v.n_features
    assert all(np.shares_memory(w.arrays()[n], arrays[n]) for n in arrays)  # used in place
    a, b = v.transform(texts, ctx), w.transform(texts, ctx)
    assert (a != b).nnz == 0
    for t, c in zip(texts, ctx, strict=True):
        for x, y in zip(v.transform_one(t, c), w.transform_one(t, c), strict=True):
            np.testing.assert_array_equal(x, y)


def test_from_parts_rejects_bad_parts() -> None:
    v = Vectorizer([BlockConfig("char")]).fit(["abc", "abd"])
    cfg, arrs = v.config(), v.arrays()

    def load(**changes: np.ndarray) -> Vectorizer:
        return Vectorizer.from_parts(cfg, {**arrs, **changes})

    with pytest.raises(ModelFormatError):
        Vectorizer.from_parts({**cfg, "format": 99}, arrs)
    with pytest.raises(ModelFormatError, match="older qac: retrain"):
        Vectorizer.from_parts({**cfg, "format": 1}, arrs)
    with pytest.raises(ModelFormatError):
        load(keys=arrs["keys"][:-1])
    with pytest.raises(ModelFormatError):
        load(keys=arrs["keys"].astype(np.int64))
    with pytest.raises(ModelFormatError, match="'dir'"):
        Vectorizer.from_parts(cfg, {"keys": arrs["keys"], "idf": arrs["idf"]})
    with pytest.raises(ModelFormatError, match="'dir'"):
        load(dir=arrs["dir"].astype(np.int64))
    dup = arrs["keys"].copy()
    dup[1] = dup[0]
    with pytest.raises(ModelFormatError):
        load(keys=dup)
    swapped = arrs["keys"][::-1].copy()
    with pytest.raises(ModelFormatError, match="rejected by the kernel"):
        load(keys=swapped)
    for bad in (arrs["dir"][:-1].copy(), np.concatenate([arrs["dir"], [0]]).astype(np.uint32)):
        with pytest.raises(ModelFormatError, match="rejected by the kernel"):
            load(dir=bad)
    moved = arrs["dir"].copy()
    moved[len(moved) // 2] += 1  # a key filed under the wrong bucket
    with pytest.raises(ModelFormatError, match="rejected by the kernel"):
        load(dir=moved)


def test_directory_buckets_keys_by_top_bits() -> None:
    """The directory is a pure function of the keys: bucket i of a block of n keys
    lists the keys whose top b bits are i, b the smallest with 2**(b+1) >= n."""
    texts = [f"{a}{b}{c} {b}{a}" for a in "abcdefgh" for b in "ijklmnop" for c in "qrst"]
    v = Vectorizer([BlockConfig("char"), BlockConfig("word", (1, 1))]).fit(texts)
    arrs = v.arrays()
    at = 0
    for b, n in enumerate(v.config()["block_sizes"]):
        bits = max(0, (n - 1).bit_length() - 1)
        keys = arrs["keys"][sum(v.config()["block_sizes"][:b]):][:n]
        top = keys >> np.uint64(64 - bits) if bits else np.zeros(n, np.uint64)
        want = np.searchsorted(top, np.arange(2**bits + 1, dtype=np.uint64))
        np.testing.assert_array_equal(arrs["dir"][at : at + 2**bits + 1], want)
        at += 2**bits + 1
    assert at == arrs["dir"].size


def test_key_of_another_block_is_rejected() -> None:
    """A corrupt key table (block 0 holding a block-1 key) is refused at load."""
    v = Vectorizer([BlockConfig("char"), BlockConfig("word")]).fit(["abc zz", "abd"])
    cfg, arrs = v.config(), v.arrays()
    keys = arrs["keys"].copy()
    keys[0] = ref_key(1, "qq")  # block 0's first id now answers to block 1's word "qq"
    with pytest.raises(ModelFormatError, match="rejected by the kernel"):
        Vectorizer.from_parts(cfg, {**arrs, "keys": keys})


def test_fit_on_nothing() -> None:
    v = Vectorizer([BlockConfig("char")]).fit([])
    assert v.n_features == 0 and v.transform(["abc"]).shape == (1, 0)
    assert v.transform_one("abc")[0].size == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "bigram"},
        {"kind": "char", "ngram_range": (0, 2)},
        {"kind": "char", "ngram_range": (3, 2)},
        {"kind": "char", "ngram_range": (1, 17)},
        {"kind": "char", "ngram_range": (1.0, 2)},
        {"kind": "char", "field": 2},
        {"kind": "char", "weight": 0.0},
        {"kind": "char", "weight": float("nan")},
        {"kind": "char", "min_df": 0},
        {"kind": "char", "max_features": 0},
        {"kind": "char", "sublinear_tf": 1},
        {"kind": "char", "position_decay": 0.5},
        {"kind": "prefix_char", "position_decay": -1.0},
        {"kind": "word", "open_end": True},
    ],
)
def test_bad_configs(kwargs: dict) -> None:
    with pytest.raises(InputError) as err:
        BlockConfig(**kwargs)
    assert "BlockConfig." in str(err.value)


def test_config_dict_roundtrip_and_defaults() -> None:
    cases: list[tuple[Kind, tuple[int, int]]] = [
        ("word", (1, 2)), ("char", (3, 3)), ("prefix_char", (1, 3))
    ]
    for kind, rng in cases:
        b = BlockConfig(kind)
        assert b.ngram_range == rng
        assert BlockConfig.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    with pytest.raises(InputError):
        BlockConfig.from_dict({"kind": "char", "bogus": 1})
    with pytest.raises(InputError):
        Vectorizer([])
    with pytest.raises(InputError):
        Vectorizer([BlockConfig("char")]).transform(["a"])
    v = Vectorizer([BlockConfig("char")]).fit(["a"])
    with pytest.raises(InputError):
        v.transform("abc")  # a str is a Sequence[str]: rejected at runtime
    with pytest.raises(InputError):
        v.transform(["a"], ["b", "c"])


def test_batch_outputs_are_checked_against_their_capacity() -> None:
    """Every C entry point takes its output buffers' capacity: an indptr or row-pointer
    buffer one entry short is refused (QAC_E_CAPACITY), never overrun."""
    ffi, lib = _kernel.ffi, _kernel.lib
    v = Vectorizer([BlockConfig("char")]).fit(["abc", "abd", "xyz"])
    buf, offs = b"abcabd", np.array([0, 3, 6], np.int64)
    bufs = ffi.new("char *[]", [ffi.cast("char *", ffi.from_buffer(buf))])
    offp = ffi.new("int64_t *[]", [_kernel.ptr(offs, "int64_t *")])
    indptr = np.zeros(3, np.int64)
    for cap, want in ((2, lib.QAC_E_CAPACITY), (3, lib.QAC_OK)):
        rc = lib.qac_featurize_batch_count(v.handle, bufs, offp, 1, 2, 1,
                                           _kernel.ptr(indptr, "int64_t *"), cap)
        assert rc == want
    from qac.features.vectorizer import _spec

    spec = _kernel._feat_specs([_spec(BlockConfig("char"), 0)])
    keys = np.zeros(64, np.uint64)
    row_ptr = np.zeros(3, np.int64)
    for cap, want in ((2, lib.QAC_E_CAPACITY), (3, lib.QAC_OK)):
        rc = lib.qac_extract_keys(spec, 0, ffi.cast("char *", ffi.from_buffer(buf)),
                                  _kernel.ptr(offs, "int64_t *"), 2, 1,
                                  _kernel.ptr(keys, "uint64_t *"), keys.size,
                                  _kernel.ptr(row_ptr, "int64_t *"), cap)
        assert rc == want
    assert row_ptr[-1] > 0
