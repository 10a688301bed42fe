"""A copy of a session log with every Latin letter of its queries replaced by a
Cyrillic one, so typo tolerance can be measured on letters of two UTF-8 bytes.

The map is one to one (a-z to 26 Cyrillic letters that normalization leaves alone:
no й or ё, which fold to и and е), so the copy has the same sessions, the same
distinct queries and the same popularity as the original; only the bytes differ.

    python sim/cyrillic_log.py ../shared/data/aol/sessions/aol_top1000_sessions_dev.tsv.gz \\
        /tmp/cyr.tsv.gz
    qac train --log /tmp/cyr.tsv.gz --until 2006-05-11 --out /tmp/m/cyr
    python sim/fuzzy.py --model /tmp/m/cyr --log /tmp/cyr.tsv.gz
"""

from __future__ import annotations

import argparse
import gzip
import string

CYRILLIC = "абвгдежзиклмнопрстуфхцчшщы"
MAP = str.maketrans(string.ascii_lowercase + string.ascii_uppercase,
                    CYRILLIC + CYRILLIC.upper())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("log", help="session log: TSV with a header and a Query column, "
                                "optionally .gz")
    ap.add_argument("out", help="the copy to write (gzipped if it ends in .gz)")
    args = ap.parse_args()
    opener = gzip.open if args.log.endswith(".gz") else open
    writer = gzip.open if args.out.endswith(".gz") else open
    with opener(args.log, "rt", encoding="utf-8", newline="") as f, \
            writer(args.out, "wt", encoding="utf-8", newline="") as g:
        head = f.readline()
        cols = head.rstrip("\r\n").split("\t")
        if "Query" not in cols:
            raise SystemExit(f"{args.log}: no Query column in the header {cols}")
        q = cols.index("Query")
        g.write(head)
        for line in f:
            row = line.split("\t")
            if len(row) > q:
                row[q] = row[q].translate(MAP)
            g.write("\t".join(row))


if __name__ == "__main__":
    main()
