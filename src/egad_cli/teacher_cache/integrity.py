"""Is a teacher cache still what `egad cache` wrote? Every file it holds against the SHA-256 its manifest records.

A cache is copied between machines and kept for months, and a flipped byte in a shard silently changes the
targets a sweep compares. So a run checks every file of the cache before it uses a value:

* **Shards and tokenizer files**: SHA-256 against the manifest. A cache can be hundreds of GB, so a file
  once found intact is remembered in ``verified.json`` beside the manifest, keyed by the file's size and
  mtime and by the digest the manifest expects (the way checkpoints are memoised): the jobs of a sweep
  hash a cache once, and any write to a file (which changes its mtime) gets it hashed again. A cache
  directory that is not writable keeps no stamp and is hashed by every run. A file altered with its
  mtime set back by hand is not caught by the stamp; ``egad cache verify DIR`` always hashes.
* **The manifest itself**: egad seals it with the SHA-256 of its own content (``manifest_sha256``). A
  manifest edited by hand is refused rather than re-verified: the digests it lists are what the shards
  are checked against, so an edited manifest could vouch for edited shards.

Caches written before this check (no seal, no tokenizer digests) have their shards checked.
No torch here: the light entry of a command reads manifests too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from egad_cli.errors import UserError
from egad_cli.hashing import file_sha256

STAMP = "verified.json"
SEAL = "manifest_sha256"


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's content (its canonical JSON, the seal itself left out)."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sealed(manifest: dict) -> dict:
    return {**manifest, SEAL: manifest_digest(manifest)}


def manifest_problem(root: Path, manifest: dict) -> str | None:
    """Why the manifest cannot be trusted (None: sealed and unchanged, or written before seals existed)."""
    if SEAL not in manifest or manifest[SEAL] == manifest_digest(manifest):
        return None
    command = manifest.get("command", "egad cache …")
    return (f"{root / 'manifest.json'} was changed after egad wrote it, so the digests it lists cannot vouch for "
            f"the shards. To re-hash the shards as they are now (accepting any change made to them): "
            f"rm {shlex.quote(str(root / 'manifest.json'))} && {command}; to rebuild from the teacher: "
            f"rm -r {shlex.quote(str(root))} && {command}")


def recorded_files(manifest: dict) -> dict[str, dict]:
    """Every file the manifest vouches for, by path relative to the cache dir: {"bytes", "sha256"}."""
    files = {e["file"]: {"bytes": e["bytes"], "sha256": e["sha256"]}
             for split in manifest["splits"].values() for e in split["shards"]}
    files.update(manifest.get("tokenizer_files", {}))
    if "head" in manifest:  # kind=exact: the output head the states go through
        files[manifest["head"]["file"]] = {"bytes": manifest["head"]["bytes"], "sha256": manifest["head"]["sha256"]}
    return files


@dataclass(frozen=True)
class FileCheck:
    file: str  #: relative to the cache dir
    expected: str  #: the manifest's SHA-256
    found: str | None  #: the file's SHA-256 (None: not hashed: missing, other size, or vouched for by the stamp)
    problem: str | None  #: None: intact
    hashed: bool  #: this check read the file (False: the stamp vouched for it, or it could not be read)


def _load_stamp(root: Path) -> dict:
    try:
        stamp = json.loads((root / STAMP).read_text())
        return stamp["files"] if isinstance(stamp.get("files"), dict) else {}
    except (OSError, ValueError, AttributeError, KeyError):
        return {}


def _save_stamp(root: Path, files: dict) -> None:
    """Atomically, per process (ranks and sweep jobs may write it at once); a read-only cache keeps none."""
    tmp = root / f".{STAMP}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True))
        tmp.replace(root / STAMP)
    except OSError:
        tmp.unlink(missing_ok=True)


def record_files(root: Path, rels: list[str]) -> dict[str, dict]:
    """{rel: {"bytes", "sha256"}} of files just written, for the manifest: each hashed from disk once, and
    stamped as verified with the same reading (the end of `egad cache` need not hash them again)."""
    recorded, stamp = {}, {}
    for rel in rels:
        st = (root / rel).stat()
        digest = file_sha256(root / rel)
        recorded[rel] = {"bytes": st.st_size, "sha256": digest}
        stamp[rel] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _save_stamp(root, {**_load_stamp(root), **stamp})
    return recorded


def check_files(root: Path, manifest: dict, use_stamp: bool = True) -> list[FileCheck]:
    """Every recorded file against its manifest digest; intact files are (re)stamped."""
    stamp = _load_stamp(root) if use_stamp else {}
    fresh, checks = {}, []
    for rel, want in sorted(recorded_files(manifest).items()):
        path = root / rel
        try:
            st = path.stat()
        except OSError:
            checks.append(FileCheck(rel, want["sha256"], None, "missing", False))
            continue
        key = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": want["sha256"]}
        if st.st_size != want["bytes"]:
            checks.append(FileCheck(rel, want["sha256"], None, f"its size is {st.st_size} bytes where the manifest "
                                                              f"records {want['bytes']}", False))
            continue
        if stamp.get(rel) == key:
            fresh[rel] = key
            checks.append(FileCheck(rel, want["sha256"], None, None, False))
            continue
        found = file_sha256(path)
        problem = None if found == want["sha256"] else "its SHA-256 differs from the manifest's"
        if problem is None:
            fresh[rel] = key
        checks.append(FileCheck(rel, want["sha256"], found, problem, True))
    if fresh != stamp:
        _save_stamp(root, fresh)
    return checks


def damage(check: FileCheck) -> str:
    """What is wrong with a damaged file, with the digest expected (and the one found, when it was hashed)."""
    found = f", found {check.found}" if check.found else ""
    return f"{check.problem} (expected {check.expected}{found})"


def describe(check: FileCheck) -> str:
    if check.problem is None:
        return "ok" + (" (hashed)" if check.hashed else " (stamp: unchanged since it was verified)")
    return f"DAMAGED: {damage(check)}"


def require_intact(root: Path, manifest: dict, key: str = "teacher_cache") -> None:
    """Refuse a cache any of whose files is not what the manifest records, naming each with its digests and
    the command that repairs it (`egad cache` rewrites the damaged shards of a cache it finds complete)."""
    bad = [c for c in check_files(root, manifest) if c.problem]
    if bad:
        lines = "\n".join(f"  {root / c.file}: {describe(c)}" for c in bad)
        raise UserError(f"{key}: {len(bad)} file(s) of the teacher cache {root} are not what it recorded when it "
                        f"was written:\n{lines}\nThe targets they hold are not the teacher's. Rewrite them "
                        f"(the other shards are kept): {manifest.get('command', 'egad cache …')}")
