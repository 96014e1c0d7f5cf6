"""egad cache verify DIR: hash every file of a teacher cache against its manifest and print each one's status.

Always hashes (the stamp that lets runs skip unchanged files is not trusted here, and is refreshed).
Exit 0: intact; 2: damaged, not a complete cache, or a usage error. No torch.
"""

from __future__ import annotations

from pathlib import Path

from egad_cli.errors import UserError
from egad_cli.ui.console import console, err_console

USAGE = "usage: egad cache verify DIR   (hash every file of the teacher cache in DIR against its manifest)"


def verify_main(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    if len(args) != 1:
        err_console.print(f"[bold red]error:[/] egad cache verify takes one directory, got {len(args)} "
                          f"argument(s)\n{USAGE}", soft_wrap=True)
        return 2
    from egad_cli.teacher_cache.integrity import check_files, damage
    from egad_cli.teacher_cache.manifest import open_manifest

    try:
        root, manifest = open_manifest(args[0], key="egad cache verify")
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        return 2
    checks = check_files(Path(root), manifest, use_stamp=False)
    for c in checks:
        console.print(f"[green]ok[/] {c.file}" if c.problem is None else f"[bold red]DAMAGED[/] {c.file}: {damage(c)}",
                      soft_wrap=True)
    bad = [c for c in checks if c.problem]
    if bad:
        err_console.print(f"[bold red]error:[/] {len(bad)} of {len(checks)} file(s) of {root} are damaged; rewrite "
                          f"them (the intact shards are kept): {manifest.get('command', 'egad cache …')}",
                          soft_wrap=True)
        return 2
    seal = "sealed manifest" if "manifest_sha256" in manifest else "manifest written before seals (not checked)"
    console.print(f"{len(checks)} file(s) intact ({seal}): {root}")
    return 0
