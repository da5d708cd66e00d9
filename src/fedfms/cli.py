"""The ``fedfms`` command line. Each command lives beside the code it drives; this module only
wires them together, importing heavy modules (torch, Flower) when a command runs."""

from __future__ import annotations

import os

import typer

from fedfms.benchmarks.efficiency import efficiency_command
from fedfms.benchmarks.step import step_command
from fedfms.data.cli import prepare_app
from fedfms.errors import FedfmsError
from fedfms.export import export_command
from fedfms.experiments.commands import demo_command, experiment_command, report_command, train_command
from fedfms.io import describe
from fedfms.models.cli import models_command
from fedfms.predict import predict_command

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Federated fine-tuning of Segment Anything (FedSAM, FedMSA) on multi-center medical images.")
app.command("models")(models_command)
app.add_typer(prepare_app, name="prepare")
app.command("train")(train_command)
app.command("demo")(demo_command)
app.command("experiment")(experiment_command)
app.command("report")(report_command)
app.command("efficiency")(efficiency_command)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: fedfms' training step against the reference code.")
bench_app.command("step")(step_command)
app.add_typer(bench_app, name="bench")
app.command("predict")(predict_command)
app.command("export")(export_command)


def main() -> None:
    """Console-script entry point. An error about the user's input or files (a config typo,
    corrupt data, a wrong checkpoint, a missing node) or a failed write (a full disk, a
    read-only folder) prints as one line naming the file and exits with 1; ``FEDFMS_DEBUG=1``
    shows its traceback instead. Ctrl-C exits with 130 and says how to resume
    (a simulated run also stops Flower's runtime, see :mod:`fedfms.federated.interrupt`)."""
    try:
        app()
    except KeyboardInterrupt:
        typer.secho("interrupted: completed rounds are on disk; run the same command with --resume to continue",
                    fg=typer.colors.YELLOW, err=True)
        raise SystemExit(130) from None
    except (FedfmsError, OSError) as err:
        if os.environ.get("FEDFMS_DEBUG"):
            raise
        message = err if isinstance(err, FedfmsError) else describe(err)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
