"""Real English sentences, offline, from a corpus that ships inside a PyPI wheel.

Source: the Lee corpus that `gensim` ships as test data (``gensim/test/test_data/lee_background.cor`` and
``lee.cor``): 350 short news articles from the Australian Broadcasting Corporation's news mail service, collected
by Lee, Pincombe & Welsh (2005) for their document-similarity study. It is real, human-written news prose (not
generated), one article per line. We split the articles into sentences with a small rule-based splitter and keep
distinct sentences of 5-60 words: 2,729 of them (343 articles).

A second, larger corpus for unlabeled distillation text (`wiki_sentences`): the shortened English Wikipedia dump the
same wheel ships (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``: the first 206 articles of
a 2017 dump, "Anarchism" to "Alexander the Great"), with the wiki markup stripped by a few rules (templates, tables,
references, links to their text, lists and headings dropped) and split the same way. Other domain than the news
sentences the benchmarks are measured on.

Install (no Hugging Face Hub needed, PyPI only)::

    pip install gensim          # 4.x; only its data files are read, gensim itself is never imported

Usage::

    from text_data import english_sentences, text_splits
    sents = english_sentences()                # all sentences, corpus order
    sents = english_sentences(500, seed=1)     # 500 sentences, random sample
    wiki = wiki_sentences()                    # ~30k Wikipedia sentences, corpus order
    splits = text_splits()                     # {"calibration": [...], "tune": [...], "report": [...]}

`text_splits` splits by *article*, so no article contributes sentences to two splits (sentences of one article
share names and topic, which would otherwise leak between calibration and evaluation).
"""

from __future__ import annotations

import bz2
import html
import importlib.util
import random
import re
from pathlib import Path


PACKAGE = "gensim"
FILES = ("lee_background.cor", "lee.cor")
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_INSTALL = "pip install gensim"

# Split after ., ! or ? (optionally followed by a closing quote/bracket) when the next token starts a sentence.
_SPLIT = re.compile(r"(?<=[.!?])([\"')\]]*)\s+(?=[\"'(\[]?[A-Z0-9])")
# Tokens whose trailing period does not end a sentence.
_ABBREV = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|Sr|Jr|St|Mt|Gen|Col|Lt|Sgt|Capt|Cpl|Rev|Gov|Sen|Rep|Supt|Insp|Det|No|vs|etc|Inc|"
    r"Ltd|Co|Corp|Jan|Feb|Mar|Apr|Aug|Sept|Sep|Oct|Nov|Dec)|\b[A-Z])\.$"
)


def _data_dir(files=FILES) -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"benchmarks/text_data.py reads the Lee news corpus shipped inside the '{PACKAGE}' wheel, which is not "
            f"installed. Install it with:  {_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    missing = [f for f in files if not (path / f).is_file()]
    if missing:
        raise ImportError(
            f"'{PACKAGE}' is installed but its test data lacks {missing} (looked in {path}); "
            f"reinstall it with:  {_INSTALL}"
        )
    return path


def _split_sentences(text: str) -> list[str]:
    parts = _SPLIT.split(text.strip())
    # re.split with one group returns [s0, g0, s1, g1, ...]; glue each closing quote back onto its sentence.
    pieces = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "") for i in range(0, len(parts), 2)]
    out: list[str] = []
    for piece in pieces:
        if out and _ABBREV.search(out[-1]):
            out[-1] = out[-1] + " " + piece
        else:
            out.append(piece)
    return [s.strip() for s in out if s.strip()]


def _keep(sentence: str, min_words: int, max_words: int) -> bool:
    n = len(sentence.split())
    if not (min_words <= n <= max_words):
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters >= 0.6 * len(sentence.replace(" ", ""))


def english_documents(min_words: int = 5, max_words: int = 60) -> list[list[str]]:
    """The corpus as articles, each a list of its kept sentences (duplicates across the corpus dropped)."""
    path = _data_dir()
    seen: set[str] = set()
    docs: list[list[str]] = []
    for name in FILES:
        for line in (path / name).read_text(encoding="utf-8", errors="replace").splitlines():
            line = " ".join(line.split())
            if not line:
                continue
            doc = []
            for s in _split_sentences(line):
                if _keep(s, min_words, max_words) and s not in seen:
                    seen.add(s)
                    doc.append(s)
            if doc:
                docs.append(doc)
    return docs


def english_sentences(n: int | None = None, seed: int = 0) -> list[str]:
    """Distinct natural English sentences (5-60 words). `n=None`: all, in corpus order; else a random sample."""
    sents = [s for doc in english_documents() for s in doc]
    if n is None:
        return sents
    if n > len(sents):
        raise ValueError(f"asked for {n} sentences, the corpus has {len(sents)}")
    return random.Random(seed).sample(sents, n)


def text_splits(
    seed: int = 0, n_calibration: int = 128, n_tune: int = 200, n_report: int = 400
) -> dict[str, list[str]]:
    """Disjoint calibration / tune / report sentence sets, split by article (no article feeds two splits).

    Articles are shuffled with `seed` and dealt out, in turn, to whichever split still needs sentences; within a
    split, sentences are then sampled to the requested size.
    """
    docs = english_documents()
    random.Random(seed).shuffle(docs)
    wanted = {"calibration": n_calibration, "tune": n_tune, "report": n_report}
    pools: dict[str, list[str]] = {k: [] for k in wanted}
    # Give each split articles until it has at least 1.5x what it needs (so sampling within it is not one article).
    order = list(wanted)
    i = 0
    for doc in docs:
        open_splits = [k for k in order if len(pools[k]) < 1.5 * wanted[k]]
        if not open_splits:
            break
        k = open_splits[i % len(open_splits)]
        pools[k].extend(doc)
        i += 1
    rng = random.Random(seed + 1)
    out = {}
    for k, n in wanted.items():
        if len(pools[k]) < n:
            raise ValueError(f"not enough sentences for split {k!r}: {len(pools[k])} < {n}")
        out[k] = rng.sample(pools[k], n)
    return out


_TEXT = re.compile(r"<text[^>]*>(.*?)</text>", re.S)
_REFS = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_COMMENTS = re.compile(r"<!--.*?-->", re.S)
_TAGS = re.compile(r"<[^>]+>")
_FILE_LINKS = re.compile(
    r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I
)
_LINKS = re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]")
_EXTERNAL = re.compile(r"\[https?://\S+(?: ([^\]]*))?\]")
_TEMPLATES = re.compile(r"\{\{[^{}]*\}\}")
_TABLES = re.compile(r"\{\|.*?\|\}", re.S)


def _strip_wiki(text: str) -> list[str]:
    """Paragraphs of plain prose from one article's wikitext."""
    text = html.unescape(text)
    text = _COMMENTS.sub("", text)
    text = _REFS.sub("", text)
    for _ in range(5):  # nested templates, innermost first
        text, n = _TEMPLATES.subn("", text)
        if not n:
            break
    text = _TABLES.sub("", text)
    text = _FILE_LINKS.sub("", text)
    text = _LINKS.sub(r"\1", text)
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _TAGS.sub("", text).replace("'''", "").replace("''", "")
    paragraphs = []
    for line in text.splitlines():
        line = " ".join(line.split())
        # headings, lists, indents, tables and leftovers of templates are not prose
        if not line or line[0] in "=*#:;|!{}[" or line.startswith(("}}", "__")):
            continue
        paragraphs.append(line)
    return paragraphs


def wiki_sentences(min_words: int = 5, max_words: int = 60) -> list[str]:
    """Distinct English sentences (5-60 words) of the Wikipedia articles in the gensim wheel's shortened dump, in
    corpus order, none of them also in the Lee corpus."""
    path = _data_dir((WIKI_FILE,)) / WIKI_FILE
    lee = {s for doc in english_documents(min_words, max_words) for s in doc}
    seen: set[str] = set()
    out = []
    with bz2.open(path, "rt", encoding="utf-8", errors="replace") as f:
        dump = f.read()
    for match in _TEXT.finditer(dump):
        if match.group(1).lstrip().lower().startswith("#redirect"):
            continue
        for paragraph in _strip_wiki(match.group(1)):
            for sentence in _split_sentences(paragraph):
                if (
                    _keep(sentence, min_words, max_words)
                    and sentence not in seen
                    and sentence not in lee
                    and not any(c in sentence for c in "{}[]|=<>")
                ):
                    seen.add(sentence)
                    out.append(sentence)
    return out


if __name__ == "__main__":
    sents = english_sentences()
    docs = english_documents()
    print(f"{len(docs)} articles, {len(sents)} distinct sentences")
    lengths = sorted(len(s.split()) for s in sents)
    print(f"words per sentence: min {lengths[0]}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}")
    for s in english_sentences(8, seed=0):
        print(" -", s)
    sp = text_splits()
    print({k: len(v) for k, v in sp.items()})
    assert not (set(sp["calibration"]) & set(sp["tune"])) and not (set(sp["tune"]) & set(sp["report"]))
    assert not (set(sp["calibration"]) & set(sp["report"]))
    wiki = wiki_sentences()
    print(f"wikipedia: {len(wiki)} distinct sentences")
    for s in random.Random(0).sample(wiki, 8):
        print(" -", s)
