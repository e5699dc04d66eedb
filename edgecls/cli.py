"""``edgecls COMMAND``: the table of every command; each is imported only when chosen."""

from __future__ import annotations

from collections.abc import Sequence

from edge_app import cli

COMMANDS = {
    "train": cli.Command("trainer.cli", "train a MobileNet transfer-learning classifier on a folder of images"),
    "convert": cli.Command("converter.cli", "convert a trained model to TFLite/LiteRT and prove each variant"),
    **cli.EDGE_COMMANDS,
    "bench": cli.Command("benchmarks.cli", "measure models and the camera pipeline on this machine"),
    "demo": cli.Command("edgecls.demo", "the whole flow on the bundled sample data, offline, in minutes"),
    "report": cli.Command("edgecls.report", "(re)write the self-contained RUN/report.html"),
}


def main(argv: Sequence[str] | None = None) -> int:
    return cli.main(COMMANDS, argv)
