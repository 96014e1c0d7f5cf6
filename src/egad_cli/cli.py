"""egad: a thin dispatcher. It takes the subcommand off argv and hands the rest to that
subcommand's @hydra.main, so every Hydra feature (overrides, -m, --cfg, --help) works unchanged."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "distill": ("egad_cli.commands.distill", "train a student from a teacher (EGAD or a baseline method)"),
    "eval": ("egad_cli.commands.evaluate", "measure a student against its teacher on held-out data"),
    "inspect-entropy": ("egad_cli.commands.inspect_entropy", "show the teacher's token-entropy distribution"),
    "report": ("egad_cli.commands.report", "gather the runs of a multirun sweep into one table"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: egad <command> [hydra overrides…]", "", "Entropy-Guided Adaptive Distillation of LLMs.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Each command is a Hydra app: `egad distill --help` lists its config groups,",
              "`egad distill --cfg job` prints the composed config, `-m` runs a sweep."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"egad {version('egad-cli')}")
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        print(f"egad: unknown command {name!r}; valid commands: {', '.join(SUBCOMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    from egad_cli.commands.common import failed_jobs, reset_task_started, task_started

    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"egad {name}", *argv[1:]]
    reset_task_started()
    try:
        result = module.main()
    except SystemExit as exc:
        # Hydra exits 1 on its own usage errors (unknown group choice or key, wrong type), before the
        # command runs; egad's usage errors exit 2: make them one family.
        if exc.code == 1 and not task_started():
            raise SystemExit(2) from None
        raise
    if failed_jobs():
        listed = "\n  ".join(failed_jobs())
        print(f"egad: {len(failed_jobs())} job(s) of the sweep failed (the others ran):\n  {listed}", file=sys.stderr)
        return 2
    return 0 if result is None or not isinstance(result, int) else result


if __name__ == "__main__":
    sys.exit(main())
