"""The `nija` command: one subcommand per job, each implemented by the module that owns that job."""

from __future__ import annotations

import importlib
import sys

# subcommand → (module, function taking the remaining argv and returning an exit code, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("nija.daemon", "main", "run the daemon (paper mode on the embedded exchange when no keys are set)"),
    "sim": ("nija.exchange.sim", "main", "run the embedded Kraken-compatible exchange on its own"),
    "check": ("nija.accounts", "check_main", "validate the configuration and follower files, then exit"),
    "balances": ("nija.balances", "main", "every account's USD cash and equity, read now from Kraken"),
}


def _usage() -> str:
    lines = ["usage: nija COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", "`nija COMMAND --help` tells more about one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"nija: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"nija: the {name!r} command is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(getattr(module, function_name)(rest) or 0)
    except KeyboardInterrupt:
        return 130
