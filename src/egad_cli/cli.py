"""egad: a thin dispatcher. It takes the subcommand off argv and hands the rest to that
subcommand's @hydra.main, so every Hydra feature (overrides, -m, --cfg, --help) works unchanged."""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Iterator

SUBCOMMANDS = {
    "distill": ("egad_cli.commands.distill", "train a student from a teacher (EGAD or a baseline method)"),
    "eval": ("egad_cli.commands.evaluate", "measure a student against its teacher on held-out data"),
    "inspect-entropy": ("egad_cli.commands.inspect_entropy", "show the teacher's token-entropy distribution"),
    "report": ("egad_cli.commands.report", "gather the runs of a multirun sweep into one table"),
    "cache": ("egad_cli.commands.cache", ("run the teacher once and store what distillation reads from it "
                                          "(egad cache verify DIR: check one)")),
}
#: each subcommand's primary config in conf/
CONFIG_NAMES = {"distill": "distill", "eval": "eval", "inspect-entropy": "inspect_entropy", "report": "report",
                "cache": "cache"}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: egad <command> [hydra overrides…]", "", "Entropy-Guided Adaptive Distillation of LLMs.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "Each command is a Hydra app: `egad distill --help` lists its config groups,",
              "`egad distill --cfg job` prints the composed config, `-m` runs a sweep."]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """`egad <command> --help`: the command's header, its config groups with every option, the footer.

    Written here rather than left to Hydra, whose help rebuilds its config repository once per group
    (3+ s on a small CPU); the options come from the same places Hydra reads: conf/<group>/*.yaml and
    the policy registries. `--hydra-help` still shows Hydra's own flags."""
    from omegaconf import OmegaConf

    from egad_cli.config import conf_dir
    from egad_cli.config.policies import POLICY_REGISTRIES

    registries = {r.group: r for r in POLICY_REGISTRIES}
    primary = OmegaConf.load(conf_dir() / f"{CONFIG_NAMES[name]}.yaml")
    groups = []
    for entry in primary.get("defaults", []):
        key = next(iter(entry)) if not isinstance(entry, str) else None
        if key is not None and not key.startswith(("override ", "optional ")):
            groups.append(key)
    lines = [str(OmegaConf.select(primary, "hydra.help.header", default=f"egad {name}")).rstrip(), "",
             "== Configuration groups ==", "Compose your configuration from those groups (group=option)", ""]
    for group in groups:
        options = registries[group].names() if group in registries else \
            sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
        lines.append(f"{group}: {', '.join(options)}")
    lines += ["", "== Config ==", "Override anything in the config (key=value); print the composed config with",
              f"  egad {name} [overrides…] --cfg job", "Hydra's own flags (-m, --config-dir, …): --hydra-help", "",
              str(OmegaConf.select(primary, "hydra.help.footer", default="")).rstrip()]
    return "\n".join(lines).rstrip() + "\n"


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
    if name == "cache" and argv[1:2] == ["verify"]:  # not a Hydra app: one directory in, a status per file out
        from egad_cli.commands.cache_verify import verify_main

        return verify_main(argv[2:])
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(command_help(name), end="")
        return 0
    from egad_cli.commands.common import failed_jobs, reset_task_started, task_started

    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"egad {name}", *argv[1:]]
    reset_task_started()
    try:
        with policy_key_hints():
            result = module.main()
    except SystemExit as exc:
        # Hydra exits 1 on its own usage errors (unknown group choice or key, wrong type), before the
        # command runs; egad's usage errors exit 2: make them one family.
        if exc.code == 1 and not task_started():
            raise SystemExit(2) from None
        if exc.code == 1 and failed_jobs():  # a sweeper gave up after failed jobs (optuna: none completed)
            listed = "\n  ".join(failed_jobs())
            print(f"egad: the sweep stopped; {len(failed_jobs())} job(s) failed:\n  {listed}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    finally:
        close_process_group()
    if failed_jobs():
        listed = "\n  ".join(failed_jobs())
        print(f"egad: {len(failed_jobs())} job(s) of the sweep failed (any other jobs ran):\n  {listed}",
              file=sys.stderr)
        return 2
    return 0 if result is None or not isinstance(result, int) else result


@contextlib.contextmanager
def policy_key_hints() -> Iterator[None]:
    """While a Hydra app runs: its "Could not override 'temperature.kappa'. To append to your config use
    +temperature.kappa=…" about a policy group's key becomes egad's message naming the option(s) that own
    the key (egad_cli.config.override_hints); every other error is left as it is.

    Why a hook in Hydra: the error is raised while Hydra composes the config, before egad's task function
    runs, and Hydra prints it and exits 1 in ``hydra._internal.utils.run_and_report``, which runs every
    composing step of ``_run_hydra`` (run, multirun, --cfg, shell completion) and looks itself up as a module
    global at each call. Wrapping the function it is given translates the exception before Hydra formats it,
    so the printing, HYDRA_FULL_ERROR and the exit status stay Hydra's. It is a private name: where it is
    missing (another Hydra), nothing is wrapped and Hydra's own message is printed."""
    try:
        from hydra._internal import utils as hydra_utils

        original = hydra_utils.run_and_report
    except (ImportError, AttributeError):
        original = None
    if not callable(original):
        yield
        return
    from egad_cli.config.override_hints import policy_key_error

    def translated(func):
        try:
            return func()
        except Exception as ex:
            hinted = policy_key_error(ex)
            if hinted is None:
                raise
            raise hinted from None  # from None: Hydra prints a cause too, and OmegaConf's repeats Hydra's advice

    def run_and_report(func):  # a partial, not a lambda: one frame more in the tracebacks Hydra trims
        return original(functools.partial(translated, func))

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def close_process_group() -> None:
    """Under torchrun: tear the process group down before the interpreter exits. Left to the exit, gloo's
    threads can be destroyed while joinable ("terminate called without an active exception", SIGABRT)."""
    dist = sys.modules.get("torch.distributed")  # never imported here: only if the command did
    if dist is not None and dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:  # a normal end: every rank is here, so leave together (no rank tears its
            dist.barrier()  # connections down while another still writes: rank 0 writes the files)
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
