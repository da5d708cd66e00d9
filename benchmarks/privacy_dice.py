"""What differential privacy costs in Dice on real data: the same federated run (one
leave-one-site-out fold) without DP, with record-level DP (DP-SGD per case) at several target
epsilons, and with client-level DP, measured one after the other; a table and a plot of unseen
and mean validation Dice against epsilon.

The noise multiplier of each record-level run is calibrated with Opacus
(``opacus.accountants.utils.get_noise_multiplier``) so that the training site with the largest
epsilon (the fewest cases) ends the run at the target: each site samples one case per step in
expectation, a round is one pass over its cases, ``--rounds`` rounds. Client-level DP uses
``--client-noise`` and reports the epsilon Flower's accountant gives it.

    python benchmarks/privacy_dice.py --config configs/nuclei_litemedsam.yaml --unseen prostate \
        --data data/monuseg --out runs/privacy/monuseg --rounds 10 --epsilons 1,3,8
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

from fedfms.config import RunConfig  # noqa: E402
from fedfms.federated.simulation import simulate  # noqa: E402
from fedfms.privacy.dpsgd import case_groups, round_cost  # noqa: E402
from fedfms.run.log import read_rows  # noqa: E402
from fedfms.train.sites import load_site, ordered_clients  # noqa: E402


def run_settings(args: argparse.Namespace) -> RunConfig:
    """The fold's federated run: the experiment config's ``base`` (or a run config) with the
    unseen site, rounds and output folder of this benchmark."""
    tree = yaml.safe_load(Path(args.config).read_text())
    base = tree.get("base", tree)
    config = RunConfig.model_validate({**base, "name": "privacy-dice", "output_dir": str(args.out)})
    overrides = {"model.mode": args.mode, "data.unseen": args.unseen, "federation.rounds": args.rounds,
                 "train.state_dir": str(Path(args.out) / "site-state")}
    if args.data:
        overrides["data.root"] = str(args.data)
    if args.cache:
        overrides["train.embedding_cache"] = str(args.cache)
    return config.with_overrides(overrides)


def calibrated_noise(config: RunConfig, target: float) -> float:
    """The noise multiplier that brings the most exposed training site to ``target`` epsilon."""
    noises = []
    for folder in ordered_clients(config.data):
        if folder.name == config.data.unseen:
            continue
        cost = round_cost(config, len(case_groups([load_site(folder, config)])))
        noises.append(get_noise_multiplier(target_epsilon=target, target_delta=config.privacy.delta,
                                           sample_rate=cost.sample_rate, steps=cost.steps * config.federation.rounds,
                                           accountant="rdp", epsilon_tolerance=0.01))
    return max(noises)


def measure(config: RunConfig, name: str, out: Path, overrides: dict) -> dict:
    run = config.with_overrides({**overrides, "output_dir": str(out / name), "name": f"privacy-dice-{name}"})
    started = time.perf_counter()
    results = json.loads((out / name / "results.json").read_text()) if (out / name / "results.json").exists() \
        else simulate(run)
    rounds = [r for r in read_rows(out / name) if r["kind"] == "round"]
    unseen = results["clients"][run.data.unseen]["dice"]
    val = [c["dice"] for n, c in results["clients"].items() if n != run.data.unseen]
    return {"name": name, "epsilon": results["privacy"]["epsilon"], "noise": overrides.get("privacy.noise_multiplier"),
            "unseen_dice": unseen, "mean_val_dice": sum(val) / len(val), "best_round": results["best_round"],
            "rounds": len(rounds), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--unseen", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, help="the prepared sites (default: the config's data.root)")
    parser.add_argument("--cache", type=Path, help="the sites' embedding cache (default: the config's)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--mode", default="decoder", help="fine-tuning mode (decoder: FedDecoder on cached embeddings)")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--clip", type=float, default=1.0, help="record level: per-case gradient norm bound")
    parser.add_argument("--client-noise", type=float, default=1.0)
    parser.add_argument("--client-clip", type=float, default=0.5, help="client level: per-site update norm bound")
    args = parser.parse_args()
    config = run_settings(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [measure(config, "no-dp", args.out, {})]
    print(rows[-1], flush=True)
    for target in (float(e) for e in args.epsilons.split(",")):
        noise = calibrated_noise(config.with_overrides({"privacy.level": "record"}), target)
        rows.append(measure(config, f"record-eps{target:g}", args.out, {
            "privacy.level": "record", "privacy.noise_multiplier": noise, "privacy.max_grad_norm": args.clip}))
        print(rows[-1], flush=True)
    rows.append(measure(config, "client", args.out, {
        "privacy.level": "client", "privacy.noise_multiplier": args.client_noise,
        "privacy.max_grad_norm": args.client_clip}))
    print(rows[-1], flush=True)

    table = ["| run | privacy | noise multiplier | epsilon (delta 1e-5) | unseen Dice % | mean val Dice % | best round |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        level = "none" if r["name"] == "no-dp" else ("client" if r["name"] == "client" else "record (per case)")
        eps = "–" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        noise = "–" if r["noise"] is None else f"{r['noise']:.3f}"
        table.append(f"| {r['name']} | {level} | {noise} | {eps} | {100 * r['unseen_dice']:.2f} | "
                     f"{100 * r['mean_val_dice']:.2f} | {r['best_round']} |")
    (args.out / "privacy_dice.md").write_text("\n".join(table) + "\n")
    (args.out / "privacy_dice.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(table))

    record = [r for r in rows if r["name"].startswith("record")]
    figure, axis = plt.subplots(figsize=(8.5, 3.6))
    for key, label, marker in (("unseen_dice", f"unseen ({args.unseen})", "o"), ("mean_val_dice", "mean validation", "s")):
        axis.plot([r["epsilon"] for r in record], [100 * r[key] for r in record], marker=marker, label=f"record-level DP, {label}")
        axis.axhline(100 * rows[0][key], linestyle="--", linewidth=1, color=axis.lines[-1].get_color(),
                     label=f"no DP, {label}")
    client = rows[-1]
    if client["epsilon"] is not None and math.isfinite(client["epsilon"]):
        axis.scatter([client["epsilon"]], [100 * client["unseen_dice"]], marker="x", color="k",
                     label=f"client-level DP, unseen (epsilon {client['epsilon']:.1f})")
    axis.set_xscale("log")
    axis.set_xlabel("epsilon after the run (delta 1e-5; record level: per case)")
    axis.set_ylabel("Dice %")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    axis.set_title(f"{config.model.backbone} {config.model.mode}, {args.rounds} rounds, {args.unseen} unseen", fontsize=9)
    figure.tight_layout()
    figure.savefig(args.out / "dice_vs_epsilon.png", dpi=130)


if __name__ == "__main__":
    main()
