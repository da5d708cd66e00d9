"""``fedfms train``, ``demo``, ``experiment``, ``report`` and ``paired``: thin wrappers that read
options and call the runners."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
import yaml

from fedfms.config import Backbone, FineTuneMode, load_config
from fedfms.run.log import console_logging


def _overrides(pairs: list[str]) -> dict[str, object]:
    """``["federation.rounds=5"]`` -> ``{"federation.rounds": 5}`` (values parsed as YAML)."""
    parsed = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"--set {pair!r}: expected KEY=VALUE, e.g. federation.rounds=5")
        parsed[key] = yaml.safe_load(value)
    return parsed


_RESUME_HELP = "Extend finished runs to more rounds (only --rounds / federation.rounds may have grown)."
_RERUN_HELP = "Run again from scratch the runs whose settings changed (their folders are replaced)."


def _one_way(resume: bool, rerun: bool) -> None:
    if resume and rerun:
        raise typer.BadParameter("--resume extends finished runs, --rerun replaces them: give one of them")


def train_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run configuration (YAML).")],
    centralized: Annotated[bool, typer.Option(help="Train on the pooled data instead of federating.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in output_dir from its last complete round.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: KEY=VALUE (dotted key).")] = None,
) -> None:
    """Train one leave-one-client-out fold: federated in Flower's simulation runtime (one virtual
    SuperNode per client folder), or centralized with --centralized."""
    console_logging()
    run = load_config(config)
    if set_:
        run = run.with_overrides(_overrides(set_))
    if centralized:
        from fedfms.train.centralized import train_centralized

        results = train_centralized(run, resume=resume)
    else:
        from fedfms.federated.simulation import simulate

        results = simulate(run, resume=resume)
    typer.echo(f"best round {results['best_round']}; results in {run.output_dir / 'results.json'}")


def demo_command(
    out: Annotated[Path, typer.Option(help="Output folder (data, runs, report).")] = Path("runs/demo"),
    data: Annotated[Path | None, typer.Option(help="Prepared client folders to use instead of the synthetic federation.")] = None,
    unseen: Annotated[str | None, typer.Option(help="Unseen (test) client; default: the last one.")] = None,
    backbone: Annotated[str, typer.Option(help="litemedsam (pretrained, default) | tiny | vit_b | vit_l | vit_h.")] = "litemedsam",
    mode: Annotated[str | None, typer.Option(help="Fine-tuning mode of a pretrained model: decoder (default) | msa | lora | sam.")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Federated rounds (= centralized epochs); default 12 (tiny: 30).")] = None,
    image_size: Annotated[int | None, typer.Option(min=32, help="Input side of the tiny SAM; default 128.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Pretrained weights of a SAM backbone (litemedsam: default the bundled ones).")] = None,
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP)] = False,
    rerun: Annotated[bool, typer.Option(help=_RERUN_HELP)] = False,
) -> None:
    """Fine-tune pretrained LiteMedSAM across a synthetic 4-site federation, one site unseen:
    federated, centralized and federated from random initialisation; then write a per-client
    Dice/IoU table, results.json, report.md and PNG plots. Runs finished in OUT with the same
    settings are reused; with other settings the demo stops and says which differ."""
    _one_way(resume, rerun)
    if backbone not in get_args(Backbone):
        raise typer.BadParameter(f"--backbone {backbone!r}: expected one of {', '.join(get_args(Backbone))}")
    if mode is not None and mode not in get_args(FineTuneMode):
        raise typer.BadParameter(f"--mode {mode!r}: expected one of {', '.join(get_args(FineTuneMode))}")
    console_logging()
    from fedfms.experiments.demo import demo_settings, run_demo

    chosen = {k: v for k, v in (("rounds", rounds), ("image_size", image_size), ("mode", mode)) if v is not None}
    run_demo(out, data_root=data, unseen=unseen, checkpoint=checkpoint, settings=demo_settings(backbone, **chosen),
             resume=resume, rerun=rerun)
    typer.echo(f"report: {out / 'report.md'}")


def experiment_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Experiment configuration (YAML, see configs/).")],
    resume: Annotated[bool, typer.Option(help=_RESUME_HELP)] = False,
    rerun: Annotated[bool, typer.Option(help=_RERUN_HELP)] = False,
    rows: Annotated[list[str] | None, typer.Option(
        "--rows", help="Run only these rows of the configuration's models (repeat the option); the report "
                       "still shows every finished row in OUTPUT_DIR.")] = None,
) -> None:
    """Run a dataset's matrix of models x unseen clients (the paper's Table 1); finished cells
    are skipped, interrupted ones resumed, and a finished cell whose settings changed is refused
    (--resume, --rerun); then write the report into OUTPUT_DIR/report."""
    _one_way(resume, rerun)
    console_logging()
    from fedfms.config import load_experiment
    from fedfms.experiments.matrix import only_rows, run_matrix
    from fedfms.experiments.report import write_loco_report

    experiment = load_experiment(config)
    if rows:
        experiment = only_rows(experiment, rows)
    run_matrix(experiment, resume=resume, rerun=rerun)
    typer.echo(write_loco_report([experiment.output_dir], experiment.output_dir / "report", experiment.paper))


def report_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding runs.")],
    out: Annotated[Path | None, typer.Option(help="Where to write the report (default: the first RUN_DIR/report).")] = None,
    paper: Annotated[str | None, typer.Option(help="Show the paper's Table 1 rows of: prostate, brain_tumour, fundus, nuclei.")] = None,
) -> None:
    """Table 1 (Markdown + CSV) and plots from finished runs: test Dice/IoU of each unseen client
    per model, with the paper's figures beside ours (--paper)."""
    from fedfms.experiments.report import paper_table1, write_loco_report

    if paper is not None and paper not in paper_table1():
        raise typer.BadParameter(f"{paper!r}: expected one of {', '.join(paper_table1())}", param_hint="--paper")
    typer.echo(write_loco_report(run_dirs, out or run_dirs[0] / "report", paper))


def paired_command(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders, or folders holding runs (as for fedfms report).")],
    pair: Annotated[list[str], typer.Option(help="Two row names to compare, FIRST:SECOND (repeat the option).")],
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown table to this file.")] = None,
) -> None:
    """Paired per-case comparisons of rows on their unseen clients: every run's best model is
    scored again case by case (patient by patient), and each pair's cases go through the
    Wilcoxon signed-rank test."""
    from fedfms.experiments.paired import compare_rows, paired_table
    from fedfms.io import atomic_write_text

    pairs = []
    for text in pair:
        first, sep, second = text.partition(":")
        if not sep or not first or not second or first == second:
            raise typer.BadParameter(f"{text!r}: expected two different row names, FIRST:SECOND (e.g. FedDecoder:Decoder)",
                                     param_hint="--pair")
        pairs.append((first, second))
    console_logging()
    table = paired_table(compare_rows(run_dirs, pairs))
    if out is not None:
        atomic_write_text(out, table + "\n")
    typer.echo(table)
