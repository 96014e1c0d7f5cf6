"""bench/prose_corpus.py (the study's second corpus): wikitext reduced to prose, articles to files, on hand-made
MediaWiki exports (the real dump needs gensim's wheel, which the tests do not install)."""

from __future__ import annotations

import bz2
import importlib.util
from importlib import metadata
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def prose():
    spec = importlib.util.spec_from_file_location("prose_corpus", BENCH / "prose_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WIKITEXT = """{{Infobox person
| name = Ada {{nowrap|Lovelace}}
| image = Ada.jpg
}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref name="a">{{cite book|title=X}}</ref> She \
wrote the first [[Algorithm|algorithm]]<ref name=b/> for the [[Analytical Engine]]&nbsp;of [[Charles Babbage]].
[[File:Ada.jpg|thumb|Ada, by [[Alfred Edward Chalon|Chalon]]]]
<!-- a note to editors -->
{| class="wikitable"
| cell || {{flag|UK}}
|}

== Early life ==
* She was born in [[London]] in 1815.
# Her mother was ''Anne Isabella Milbanke''.
See [http://example.org the archive] and [http://example.org/bare].
Her notes &amp; letters use <math>x^2</math> rarely.

== References ==
{{reflist}}
* Some book, 1990.
[[Category:Mathematicians]]
"""


def test_wikitext_becomes_prose(prose):
    text = prose.plain_text(WIKITEXT)
    assert text == ("Ada Lovelace was an English mathematician. She wrote the first algorithm for the Analytical "
                    "Engine of Charles Babbage.\n\n"
                    "Early life\nShe was born in London in 1815.\nHer mother was Anne Isabella Milbanke.\n"
                    "See the archive and .\nHer notes & letters use  rarely.\n")


def export(pages: list[tuple[str, int, str]], namespace: bool = True) -> bytes:
    ns = ' xmlns="http://www.mediawiki.org/xml/export-0.10/"' if namespace else ""
    body = "".join(f"<page><title>{t}</title><ns>{n}</ns><revision><text xml:space=\"preserve\">"
                   f"{x.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')}</text></revision></page>"
                   for t, n, x in pages)
    return f"<mediawiki{ns}>{body}</mediawiki>".encode()


@pytest.mark.parametrize("namespace", [True, False])
def test_only_articles_are_kept_and_written_one_per_file(prose, tmp_path, namespace):
    long_prose = "Plain words of an article. " * 100
    xml = export([("Ada Lovelace", 0, long_prose + "\n" + WIKITEXT), ("AdaL", 0, "#REDIRECT [[Ada Lovelace]]"),
                  ("Talk:Ada", 1, long_prose), ("Stub", 0, "A stub."), ("Ada (disambiguation)", 0, long_prose),
                  ("Alien", 0, "{{Disambiguation|geo}}\n" + long_prose), ("Set", 0, "{{set index article}}\n" + long_prose), ("Ada/Notes?", 0, long_prose)], namespace)
    assert [t for t, _ in prose.wiki_pages(xml)] == ["Ada Lovelace", "Stub", "Ada/Notes?"]
    files, chars = prose.write_corpus(prose.wiki_pages(xml), tmp_path / "out", min_chars=2000)
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert (files, written) == (2, ["000_Ada_Lovelace.txt", "001_Ada_Notes.txt"])  # the stub is left out
    assert chars == sum(len(p.read_text()) for p in (tmp_path / "out").iterdir())
    assert "&lt;" not in (tmp_path / "out" / "000_Ada_Lovelace.txt").read_text()


def test_the_command_reads_a_bz2_dump_and_refuses_to_mix_into_a_filled_dir(prose, tmp_path, capsys):
    dump = tmp_path / "dump.xml.bz2"
    dump.write_bytes(bz2.compress(export([("Prose", 0, "Words of an article. " * 200)])))
    prose.main([str(tmp_path / "out"), "--dump", str(dump)])
    assert "1 articles" in capsys.readouterr().err and (tmp_path / "out" / "000_Prose.txt").is_file()
    with pytest.raises(SystemExit, match="already holds .txt files"):
        prose.main([str(tmp_path / "out"), "--dump", str(dump)])
    with pytest.raises(SystemExit, match="no article"):
        prose.main([str(tmp_path / "empty"), "--dump", str(dump), "--min-chars", "100000"])
    for bad in (tmp_path / "missing.xml.bz2", tmp_path / "d.txt"):
        if bad.suffix == ".txt":
            bad.write_text("<mediawiki><page>")  # cut off
        with pytest.raises(SystemExit, match=r"not a readable MediaWiki XML export"):
            prose.main([str(tmp_path / "other"), "--dump", str(bad)])


def test_without_gensim_the_error_says_what_to_install(prose, monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)  # what bench/wheel_data.py asks
    with pytest.raises(SystemExit, match=r"pip install --no-deps gensim==4\.4\.0"):
        prose.installed_dump()
