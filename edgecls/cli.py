"""``edgecls COMMAND``: the table of every command and the dispatcher shared by ``edgecls`` and ``python -m <package>``.

Each command lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``. Only the chosen command's module is imported, so
``edgecls classify`` starts without TensorFlow and ``edgecls --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edge_app.runtime.errors import EdgeclsError, Interrupted

log = logging.getLogger("edgecls")


@dataclass(frozen=True)
class Command:
    module: str
    help: str


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (not the empty ones) and keeps the hand-formatted examples in epilogs."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (what was wrong, then where the help is), not a usage block."""

    def error(self, message: str):
        found = re.match(r"argument (\S+): (.*)", message, re.S)
        if found:
            flag, rest = found.group(1).split("/")[-1], found.group(2)
            # Our own argparse types already name the flag ("--threads must be 1 or more ...").
            message = rest if rest.startswith(flag) else f"{flag}: {rest}"
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _raise_interrupted(signum, frame):
    raise Interrupted()


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level)


def main(argv: Sequence[str] | None = None, commands: Mapping[str, Command] | None = None,
         prog: str = "edgecls") -> int:
    """Parse ``argv``, run the chosen command and turn errors into exit codes (0 ok, 1 check failed, 2 bad input)."""
    commands = COMMANDS if commands is None else commands
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(commands) == 1:
        # `python -m trainer DATA --out RUN`: a one-command package needs no command name.
        (only,) = commands
        if argv[:1] != [only] and not set(argv) & {"--version"}:
            argv.insert(0, only)
    from edge_app import __version__

    top = ArgumentParser(
        prog=prog,
        formatter_class=HelpFormatter,
        description="Train, quantize, prove and run image classifiers on edge devices.",
        epilog=f"Run '{prog} COMMAND --help' for a command's options and examples.",
    )
    top.add_argument("--version", action="version", version=f"edgecls {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, command in commands.items():
        parser = sub.add_parser(name, help=command.help, description=command.help, formatter_class=HelpFormatter)
        if name != chosen:
            continue
        module = importlib.import_module(command.module)
        verbosity = parser.add_mutually_exclusive_group()
        verbosity.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr")
        verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
        module.add_arguments(parser)
        parser.set_defaults(_main=module.main)

    args = top.parse_args(argv)
    if getattr(args, "_main", None) is None:
        top.print_help(sys.stderr)
        return 2
    _configure_logging(-1 if args.quiet else args.verbose)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    where = f"{prog} {args.command}"
    try:
        return int(args._main(args) or 0)
    except EdgeclsError as e:
        print(f"{where}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Interrupted:
        print(f"{where}: stopped (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `edgecls classify ... | head`: the reader left; not an error of ours.
        sys.stderr.close()
        return 0


EDGE_COMMANDS = {
    "classify": Command("edge_app.classify", "classify image files with a .tflite model"),
    "run": Command("edge_app.live.app", "live classification from a camera, video, stream or folder"),
    "learn": Command("edge_app.learn.cli", "teach a .tflite classifier new classes from photos, on the device"),
    "eval": Command("edge_app.evaluate", "accuracy on a labelled folder of lab or field photos, on this machine"),
    "meta": Command("edge_app.meta", "show what a .tflite model carries (metadata, class cards); set its class cards"),
}

COMMANDS = {
    "train": Command("trainer.cli", "train a MobileNet transfer-learning classifier on a folder of images"),
    "convert": Command("converter.cli", "convert a trained model to TFLite/LiteRT and prove each variant"),
    **EDGE_COMMANDS,
    "bench": Command("benchmarks.cli", "measure models and the camera pipeline on this machine"),
    "demo": Command("edgecls.demo", "the whole flow on the bundled sample data, offline, in minutes"),
    "report": Command("edgecls.report", "(re)write the self-contained RUN/report.html"),
    "fleet": Command("fleet.cli", "devices over an MQTT broker: status, signed model deploys, benchmarks"),
}
