"""The ``fedfms`` command line. Each command lives beside the code it drives; this module only
wires them together, importing heavy modules (torch, Flower) when a command runs."""

from __future__ import annotations

import os
import signal
from types import FrameType

import click
import typer

from fedfms.benchmarks.efficiency import efficiency_command
from fedfms.benchmarks.step import step_command
from fedfms.data.cli import prepare_app
from fedfms.errors import FedfmsError
from fedfms.experiments.commands import (
    demo_command,
    experiment_command,
    paired_command,
    report_command,
    train_command,
)
from fedfms.export import export_command
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
app.command("paired")(paired_command)
app.command("efficiency")(efficiency_command)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: fedfms' training step against the reference code.")
bench_app.command("step")(step_command)
app.add_typer(bench_app, name="bench")
app.command("predict")(predict_command)
app.command("export")(export_command)


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM (sent by schedulers, systemd, ``timeout``). Not an
    ``Exception``, so that nothing on the way swallows it; typer would turn a
    ``KeyboardInterrupt`` into a silent exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def main() -> None:
    """Console-script entry point. A bad option value is one line naming the option (exit 2).
    An error about the user's input or files (a config typo,
    corrupt data, a wrong checkpoint, a missing node) or a failed write (a full disk, a
    read-only folder) prints as one line naming the file and exits with 1; ``FEDFMS_DEBUG=1``
    shows its traceback instead. Ctrl-C and SIGTERM exit with 128 + the signal (130, 143) and
    say how to resume (a simulated run also stops Flower's runtime, see
    :mod:`fedfms.federated.interrupt`)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            raise SystemExit(code)
    except click.exceptions.NoArgsIsHelpError as usage:
        usage.show()
        raise SystemExit(usage.exit_code) from None
    except click.UsageError as usage:  # a bad option value: one line naming the option, not typer's box
        typer.secho(f"error: {usage.format_message()}", fg=typer.colors.RED, err=True)
        raise SystemExit(usage.exit_code) from None
    except click.Abort:
        raise SystemExit(1) from None
    except Interrupted as stop:
        typer.secho(f"interrupted ({signal.Signals(stop.signum).name}); a training run's completed rounds are on "
                    "disk: run the same command with --resume to continue", fg=typer.colors.YELLOW, err=True)
        raise SystemExit(128 + stop.signum) from None
    except (FedfmsError, OSError) as err:
        if os.environ.get("FEDFMS_DEBUG"):
            raise
        message = err if isinstance(err, FedfmsError) else describe(err)
        typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
        raise SystemExit(1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
