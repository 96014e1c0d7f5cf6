"""Corpus builders: each yields documents with a stable key; the key's hash decides the split."""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from egad_cli.config.schema import DatasetConfig
from egad_cli.errors import UserError


@dataclass(frozen=True)
class Document:
    key: str  #: stable identity (relative path, line hash…): decides the split and the order
    text: str  #: plain text, or the response for prompt/response data
    prompt: str = ""  #: tokens that get no loss (jsonl prompts)


def split_of(key: str, val_fraction: float) -> str:
    """Deterministic split by document hash: the same document lands in the same split everywhere."""
    bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if bucket < val_fraction else "train"


def order_key(key: str) -> str:
    """Documents are read in hash order, so a token budget samples the whole corpus, not one corner."""
    return hashlib.sha1(("order|" + key).encode()).hexdigest()


@functools.cache
def stdlib_files() -> tuple[Path, ...]:
    """This Python's standard-library sources. Walked once per process: preflight, the cache key and
    the reader all ask for the list, and the installed stdlib does not change during a run."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "__pycache__", "dist-packages"}
    return tuple(sorted(p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)))


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files matched by the patterns; a pattern matching nothing is an error naming it."""
    files: list[Path] = []
    for pattern in patterns:
        matched = sorted(Path(p) for p in glob.glob(str(Path(pattern).expanduser()), recursive=True))
        matched = [p for p in matched if p.is_file()]
        if not matched:
            raise UserError(f"dataset.paths: {pattern!r} matches no file")
        files.extend(matched)
    return files


def source_files(cfg: DatasetConfig) -> list[Path]:
    """The files a file-based corpus reads (for preflight checks and the cache key)."""
    if cfg.kind == "pystdlib":
        return list(stdlib_files())
    if cfg.kind in ("text", "jsonl"):
        return expand_paths(list(cfg.paths))
    return []


#: share of a user file's bytes that may be undecodable as UTF-8 (replaced) before the file is refused
MAX_UNDECODABLE = 0.01


def sniff_text(path: Path) -> None:
    """Refuse a file that is plainly not text (NUL bytes near its start: an executable, an archive…)."""
    with open(path, "rb") as f:
        head = f.read(8192)
    if b"\x00" in head:
        raise UserError(f"dataset.paths: {path} is not a text file (it holds NUL bytes); narrow the pattern to "
                        f"text files")


def check_sources(cfg: DatasetConfig) -> list[Path]:
    """Preflight: the corpus files exist and the user's files look like text (before any model loads)."""
    files = source_files(cfg)
    if cfg.kind in ("text", "jsonl"):
        for path in files:
            sniff_text(path)
    return files


def _read(path: Path, strict: bool) -> str:
    """The file as text. strict (user corpora): refuse binary files and files that are mostly not UTF-8,
    rather than train on replacement characters; a few stray bytes are replaced."""
    if not strict:
        return path.read_text(encoding="utf-8", errors="replace")
    sniff_text(path)
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - data.decode("utf-8", errors="ignore").count("\ufffd")
    if bad > MAX_UNDECODABLE * max(1, len(data)):
        raise UserError(f"dataset.paths: {path} is not UTF-8 text ({bad} undecodable bytes of {len(data)}); convert "
                        f"it (e.g. iconv -f latin1 -t utf-8) or leave it out")
    return text


def iter_documents(cfg: DatasetConfig) -> Iterator[Document]:
    if cfg.kind in ("pystdlib", "text"):
        root = Path(sysconfig.get_paths()["stdlib"]) if cfg.kind == "pystdlib" else None
        for path in source_files(cfg):
            key = str(path.relative_to(root)) if root else str(path)
            yield Document(key=key, text=_read(path, strict=root is None))
    elif cfg.kind == "jsonl":
        for path in source_files(cfg):
            # JSON Lines ends a record at "\n" only: str.splitlines would also cut at U+2028, U+0085, \x1c … that
            # JSON written with ensure_ascii=False keeps raw inside its strings (a CRLF file's "\r" is dropped)
            for lineno, line in enumerate(_read(path, strict=True).split("\n"), 1):
                line = line.removesuffix("\r")
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    prompt, response = row[cfg.prompt_field], row[cfg.response_field]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise UserError(f"dataset.paths: {path}:{lineno} is not a JSON object with "
                                    f"{cfg.prompt_field!r} and {cfg.response_field!r} ({exc}); set "
                                    f"dataset.prompt_field / dataset.response_field to your field names") from None
                for field, value in ((cfg.prompt_field, prompt), (cfg.response_field, response)):
                    if not isinstance(value, str):
                        raise UserError(f"dataset.paths: {path}:{lineno}: {field!r} is {json.dumps(value)}, not a "
                                        f"string; fix or drop that line")
                yield Document(key=hashlib.sha1(line.encode()).hexdigest(), text=response, prompt=prompt)
    elif cfg.kind == "hf":
        yield from _hf_documents(cfg)


def _hf_documents(cfg: DatasetConfig) -> Iterator[Document]:
    import datasets

    from egad_cli.models.hub import hub_reachable

    local = Path(cfg.hf_name).expanduser()
    try:
        if local.exists():
            ds = datasets.load_from_disk(str(local)) if (local / "dataset_info.json").exists() or \
                (local / "dataset_dict.json").exists() else datasets.load_dataset(str(local), cfg.hf_config)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[cfg.hf_split]
        else:
            ok, why = hub_reachable()
            if not ok:
                raise UserError(f"dataset.hf_name: {cfg.hf_name!r} needs the hub, which is unreachable ({why}). "
                                f"Save it with datasets' save_to_disk on a machine with access and set "
                                f"dataset.hf_name=/that/dir, or use dataset=text / dataset=jsonl with local files.")
            ds = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.hf_split)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        raise UserError(f"dataset.hf_name: could not load {cfg.hf_name!r}: {exc}") from None
    if cfg.text_field not in ds.column_names:
        raise UserError(f"dataset.text_field: {cfg.text_field!r} is not a column of {cfg.hf_name!r}; "
                        f"columns are {', '.join(ds.column_names)}")
    for i, text in enumerate(ds[cfg.text_field]):
        yield Document(key=f"{i}:{hashlib.sha1(str(text).encode()).hexdigest()}", text=str(text))
