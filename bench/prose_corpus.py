"""The study's second corpus: English Wikipedia articles as plain-text files, from a package on PyPI.

    pip install --no-deps gensim==4.4.0      # `make study` does this; only a data file of the wheel is read
    python bench/prose_corpus.py data/enwiki  # writes data/enwiki/<nnn>_<title>.txt, one article per file
    egad distill dataset=text dataset.paths='[data/enwiki/*.txt]'

The embedded corpus is Python source; a result should also hold on prose. gensim's wheel carries, as test data,
the first 106 articles of a 2016 English Wikipedia dump (``enwiki-latest-pages-articles1.xml-p000000010p000030302
-shortened.bz2``, 6 MB of wikitext, CC BY-SA): real encyclopaedic prose, 92 articles and ~620k SmolLM2 tokens
once cleaned. The file is read from the installed distribution's file list; gensim itself is never imported (no code that came
with the data runs), so ``--no-deps`` is enough.

The wikitext is reduced to prose by rules, in order: comments, references, templates (innermost first, so nested
ones go too), tables, files and categories are dropped; links keep their shown text; bold/italic quotes, HTML
tags and list markers go; headings stay as lines; the sections from "See also" / "References" / "Notes" /
"External links" / "Further reading" on (lists of citations, not prose) are cut. Redirects, non-article pages
and disambiguation pages are skipped. The result is not perfect (an unbalanced template leaves a residue) but it
is prose: tested on hand-made wikitext (tests/data/test_prose_corpus.py).
"""

from __future__ import annotations

import argparse
import bz2
import html
import re
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for its helpers when run as a script
from wheel_data import wheel_file

DUMP = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_SPEC = "gensim==4.4.0"
#: sections from which an article is lists of sources, not prose
TAIL_SECTIONS = ("see also", "references", "notes", "external links", "further reading", "bibliography",
                 "sources", "footnotes", "citations")
MIN_CHARS = 2000  #: articles shorter than this once cleaned (stubs, lists) are left out


def installed_dump() -> Path:
    """The Wikipedia dump inside the installed gensim distribution (not imported)."""
    return wheel_file("gensim", DUMP, GENSIM_SPEC, "prose corpus", "--dump FILE")


def wiki_pages(xml_text: bytes) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of each article (namespace 0, not a redirect) of a MediaWiki XML export."""
    root = ET.fromstring(xml_text)  # the XML parser decodes &lt; &amp; …: the wikitext as its editors typed it
    for page in root.iter():
        if not page.tag.endswith("}page") and page.tag != "page":
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in page}
        if fields.get("ns") is None or (fields["ns"].text or "").strip() != "0" or "redirect" in fields:
            continue
        text_node = next((n for n in page.iter() if n.tag.rsplit("}", 1)[-1] == "text"), None)
        text = (text_node.text or "") if text_node is not None else ""
        title = fields["title"].text or ""
        if text.lstrip().upper().startswith("#REDIRECT") or "(disambiguation)" in title or _LIST_PAGE.search(text):
            continue  # not prose: a redirect, or a list of meanings
        yield title, text


#: the templates that mark a disambiguation or set-index page (a list of meanings, not prose)
_LIST_PAGE = re.compile(r"\{\{\s*(?:disambig\w*|dab|hndis|geodis|set ?index(?: article)?|sia)\s*[|}]", re.IGNORECASE)


def _drop_nested(text: str, pattern: re.Pattern) -> str:
    """Remove matches of an innermost-only pattern until none is left (templates in templates …)."""
    while True:
        text, n = pattern.subn("", text)
        if not n:
            return text


_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.DOTALL | re.IGNORECASE)
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.DOTALL)
_MEDIA = re.compile(r"\[\[(?:file|image|category|media):[^\[\]]*\]\]", re.IGNORECASE)
_PIPED_LINK = re.compile(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]")
_LINK = re.compile(r"\[\[([^\[\]|]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:)?//[^\s\]]+(?: ([^\]]*))?\]")
_BLOCK_TAGS = re.compile(r"<(gallery|math|timeline|score|syntaxhighlight|source|pre)[^>]*>.*?</\1>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_QUOTES = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")


def plain_text(wikitext: str) -> str:
    """Prose of one article's wikitext (the rules in the module docstring)."""
    text = _COMMENT.sub("", wikitext)
    text = _REF.sub("", text)
    text = _drop_nested(text, _TEMPLATE)
    text = _drop_nested(text, _TABLE)
    text = _BLOCK_TAGS.sub("", text)
    text = _drop_nested(text, _MEDIA)  # a caption's links are innermost: resolve them, then drop the file
    for _ in range(3):
        text = _MEDIA.sub("", _LINK.sub(r"\1", _PIPED_LINK.sub(r"\1", text)))
    text = _EXTERNAL.sub(lambda m: m.group(1) or "", text)
    text = _TAG.sub("", _QUOTES.sub("", text))
    text = html.unescape(text).replace("\u00a0", " ")
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        heading = _HEADING.match(line)
        if heading:
            if heading.group(2).strip().lower() in TAIL_SECTIONS:
                break
            line = heading.group(2)
        elif line.startswith(("|", "!", "{", "}")):  # table or template residue
            continue
        else:
            line = line.lstrip("*#:; ").strip()
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip() + "\n"


def file_name(index: int, title: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_")[:60] or "untitled"
    return f"{index:03d}_{slug}.txt"


def write_corpus(pages: Iterable[tuple[str, str]], out: Path, min_chars: int = MIN_CHARS) -> tuple[int, int]:
    """One .txt per article (``wiki_pages``) of at least ``min_chars`` characters; returns (files, characters)."""
    out.mkdir(parents=True, exist_ok=True)
    files = chars = 0
    for title, wikitext in pages:
        text = plain_text(wikitext)
        if len(text) < min_chars:
            continue
        (out / file_name(files, title)).write_text(text, encoding="utf-8")
        files += 1
        chars += len(text)
    return files, chars


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="directory for the .txt files (created)")
    ap.add_argument("--dump", type=Path, default=None, help="a MediaWiki XML export (.xml or .xml.bz2) "
                    "instead of gensim's")
    ap.add_argument("--min-chars", type=int, default=MIN_CHARS)
    args = ap.parse_args(argv)
    if args.out.is_dir() and any(args.out.glob("*.txt")):
        raise SystemExit(f"error: {args.out} already holds .txt files: remove them or choose another directory")
    dump = args.dump or installed_dump()
    try:
        raw = dump.read_bytes()
        raw = bz2.decompress(raw) if dump.suffix == ".bz2" else raw
        pages = list(wiki_pages(raw))  # the whole export in memory: meant for small exports like gensim's (6 MB)
    except (OSError, ValueError, EOFError, ET.ParseError) as exc:
        raise SystemExit(f"error: --dump {dump}: not a readable MediaWiki XML export (.xml or .xml.bz2): {exc}") from None
    files, chars = write_corpus(pages, args.out, args.min_chars)
    if not files:
        raise SystemExit(f"error: no article of {dump} has {args.min_chars} characters of prose")
    print(f"{files} articles, {chars / 1e6:.2f} M characters of prose -> {args.out}/*.txt", file=sys.stderr)


if __name__ == "__main__":
    main()
