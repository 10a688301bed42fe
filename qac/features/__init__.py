"""TF-IDF features for query autocomplete: n-gram extraction and transform in C.

Inputs are already-normalized strings (:func:`qac.text.normalize`). A row has two
fields: field 0 = the main text (query or typed prefix), field 1 = a context string
(the user's previous query; ``None`` reads as empty). Each block reads one field.
These definitions are the spec; ``native/features.c`` implements them and
``tests/test_features.py`` holds a plain-Python reference of them.

Tokens
    Maximal runs of characters that are neither ASCII whitespace (space, \\t, \\n,
    \\v, \\f, \\r) nor ASCII punctuation (``string.punctuation``). Every other code
    point, including any non-ASCII one, is a word character.

Word n-grams (kind ``word``)
    n consecutive tokens joined by one space, for n in ``ngram_range``.

Char n-grams (kind ``char``)
    Each token gets the word-end mark ``#`` appended, then every run of n code
    points of the marked token, n in ``ngram_range``: "echo with" with (3, 3)
    gives ech cho ho# wit ith th#. A marked token shorter than the smallest n is
    emitted whole, once. N-grams never cross tokens.

Prefix-weighted char n-grams (kind ``prefix_char``)
    The char n-grams, but the one starting at code point p of its token
    (0-based) counts (p+1) ** -position_decay instead of 1, so n-grams near the
    start of a word weigh more (the session-aware QAC paper's prefix weighting).

Open end (``open_end=True``, char kinds)
    The last token of the field gets no ``#`` when it runs to the end of the
    field, i.e. unless the field ends with a separator (for normalized text: a
    space): the user is still typing that word.

Keys
    FNV-1a 64 of one byte (the block index) followed by the UTF-8 bytes of the
    n-gram, times 0x9E3779B97F4A7C15 mod 2**64 (a bijection: it only spreads the
    hash over the top bits the lookup directory reads); the same n-gram in two
    blocks has two keys. Two different n-grams
    with the same key are one feature: among 10**7 keys the chance of any such
    collision is about 10**14 / 2**65 ~ 3e-6, so it is ignored (keys are made
    unique with np.unique; a cross-block collision keeps the earlier block).

Weights
    tf = summed (weighted) occurrences in the row; ``sublinear_tf``: tf -> 1 + ln(tf)
    for tf > 1 (tf <= 1, possible with prefix weights, is kept as is: the two
    agree at 1 and this never goes negative). idf = ln((1+N)/(1+df)) + 1 with N
    the number of fitted rows and df the number of rows containing the n-gram.
    Block vector = tf * idf over the block's known n-grams (unknown ones are
    ignored), L2-normalized, times the block weight; the row (blocks stacked in
    order) is then L2-normalized. A row with no known n-gram is empty.

Vocabulary
    Per block: n-grams with df >= min_df, then the ``max_features`` with the
    highest df (ties: smaller key). Block b owns a contiguous range of feature
    ids, blocks in the given order; within a block, ids follow ascending key.
    The keys, their idf and a directory of each block's keys by their top bits
    are arrays built once by ``fit`` and saved with the model; the C featurizer
    reads them in place (a memory-mapped model is shared by every process).

Limits
    At most 1024 code points per field (longer: InputError; normalize enforces
    the same limit), n <= 16, at most 16 blocks.
"""

from qac.features.config import DEFAULT_NGRAM_RANGE, BlockConfig
from qac.features.vectorizer import Vectorizer, idf_of

__all__ = ["DEFAULT_NGRAM_RANGE", "BlockConfig", "Vectorizer", "idf_of"]
