"""The ``lbm`` command. Thin: each package owns its subcommands in ``<package>/commands.py``; commands that compose
packages (``quickstart``, ``train`` with in-training evaluation) are top-level modules.

Every command is a frozen dataclass whose fields are the flags (documented by their docstrings) and whose
``run()`` returns the process exit code. ``lbm data <cmd>`` is a nested group.

Errors: a user's mistake (:data:`openlbm.errors.USER_ERRORS`) is printed here, once for every command, as one
line ``error: <message>`` on stderr with exit code 2. ``lbm --debug <cmd> ...`` (or ``LBM_DEBUG=1``) shows the
traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def _data_commands() -> dict[str, type]:
    from openlbm.data.commands import COMMANDS as data
    from openlbm.embed import COMMANDS as embed
    from openlbm.envs.commands import COMMANDS as envs
    from openlbm.label_latent import COMMANDS as latent

    return {**data, **envs, **latent, **embed}


def _study_commands() -> dict[str, type]:
    from openlbm.study.commands import COMMANDS as study

    return study


def _top_commands() -> dict[str, type]:
    from openlbm.eval.commands import COMMANDS as evaluation
    from openlbm.quickstart import COMMANDS as quickstart
    from openlbm.serve.commands import COMMANDS as serve
    from openlbm.train_command import COMMANDS as train

    return {**quickstart, **train, **evaluation, **serve}


def _dispatch(commands: dict[str, type], args: Sequence[str], prog: str) -> int:
    import tyro

    cmd = tyro.extras.subcommand_cli_from_dict(commands, args=list(args), prog=prog)
    code = cmd.run()
    return int(code or 0)


GROUPS: dict[str, str] = {
    "data": "Dataset tools: generate demos, convert, validate, inspect, embed features, label latent actions.",
    "study": "Studies over many training runs (what pretraining buys, measured).",
}
"""Command groups of ``lbm`` and their one-line descriptions (each group lists its own commands)."""


def _summary(cls: type) -> str:
    """The first sentence of a command's docstring: its one-line description."""
    text = " ".join((cls.__doc__ or "").replace("``", "`").split())
    return text.split(". ")[0].rstrip(".") + "." if text else ""


def _print_help(commands: dict[str, type]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None, padding=(0, 2))
    for name, cls in commands.items():
        table.add_row(f"[bold]{name}[/]", _summary(cls))
    for name, text in GROUPS.items():
        table.add_row(f"[bold]{name}[/] ...", text)
    console = Console()
    console.print("usage: lbm [--debug] COMMAND [OPTIONS]   (lbm COMMAND --help for its options)\n")
    console.print(table)
    console.print("\n--debug (or LBM_DEBUG=1) shows tracebacks instead of one-line errors.")


def main(argv: Sequence[str] | None = None) -> int:
    from openlbm.errors import USER_ERRORS, one_line

    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("LBM_DEBUG", "") not in ("", "0")
    if args and args[0] == "--debug":
        debug, args = True, args[1:]
    try:
        return _main(args)
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        # every writer commits atomically, so what was committed is kept; the resumable commands continue from it
        print("interrupted: committed work is kept (run the same command again to resume where it applies)",
              file=sys.stderr)
        return 130


def _main(args: list[str]) -> int:
    if args and args[0] == "data":
        # Imports stay inside the branch so `lbm data ...` never pays for torch-heavy training modules.
        return _dispatch(_data_commands(), args[1:], "lbm data")
    if args and args[0] == "study":
        return _dispatch(_study_commands(), args[1:], "lbm study")
    commands = _top_commands()
    if not args or args[0] in ("-h", "--help"):
        _print_help(commands)
        raise SystemExit(0 if args else 2)
    return _dispatch(commands, args, "lbm")


if __name__ == "__main__":
    sys.exit(main())
