"""What SecAgg+ costs: seconds and bytes per round, and the unseen site's Dice, of the same run
with plain FedAvg and with ``federation.secure_aggregation: true``, measured one after the other
in one invocation.

Tiny SAM at 64 px on a synthetic federation, ``decoder`` and ``msa`` modes, 3 and 6 sites in
Flower's simulation runtime, and 3 sites in a loopback deployment (SuperLink and SuperNodes over
TLS, the harness of ``tests/federated/deployment.py``). Seconds: median of rounds 2..N (round 1
includes start-up). Bytes: what one training site sends per round, as the server received it
(plain: the update's tensors; SecAgg+: its keys, key shares and masked update).

    python benchmarks/secagg_overhead.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deployment_round import deploy, run_config  # noqa: E402

from fedfms.config import DataConfig  # noqa: E402
from fedfms.data import make_synthetic_federation  # noqa: E402
from fedfms.federated.simulation import simulate  # noqa: E402
from fedfms.run.log import read_rows  # noqa: E402


def figures(run_dir: Path) -> tuple[float, float, float]:
    """(median seconds of rounds 2.., bytes one site sent per round (median), final unseen Dice)."""
    rows = read_rows(run_dir)
    seconds = [r["seconds"] for r in rows if r["kind"] == "round"]
    sent = [r["bytes_received"] for r in rows if r["kind"] == "train"]
    unseen = [r["unseen_dice"] for r in rows if r["kind"] == "round"]
    return statistics.median(seconds[1:] or seconds), statistics.median(sent), unseen[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--no-deployment", action="store_true", help="simulation only")
    args = parser.parse_args()
    args.image_size, args.epochs = 64, 1
    lines = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedfms-secagg-bench-") as folder:
        work = Path(folder)
        for sites in (3, 6):
            root = work / f"data{sites}"
            make_synthetic_federation(root, num_clients=sites, num_classes=1, image_size=64, mask_size=16,
                                      samples_per_client=(args.samples,) * sites, seed=0)
            names = sorted(p.name for p in root.iterdir() if p.is_dir())
            runtimes = [("simulation", None)] + ([("deployment", True)] if sites == 3 and not args.no_deployment else [])
            for mode in ("decoder", "msa"):
                for runtime, _ in runtimes:
                    measured = {}
                    for secure in (False, True):
                        overrides = {"model.mode": mode, "federation.secure_aggregation": secure}
                        out = work / f"{runtime}-{sites}-{mode}-{secure}"
                        if runtime == "simulation":
                            config = run_config(args, out / "run", DataConfig(root=root, unseen=names[-1]))
                            simulate(config.with_overrides(overrides))
                        else:
                            deploy(args, root, names, out, True, overrides)
                        measured[secure] = figures(out / "run")
                    (plain_s, plain_b, plain_d), (sec_s, sec_b, sec_d) = measured[False], measured[True]
                    lines.append(f"| {mode} | {sites} | {runtime} | {plain_s:.1f} | {sec_s:.1f} | {sec_s / plain_s:.2f} | "
                                 f"{plain_b / 2**20:.3f} | {sec_b / 2**20:.3f} | {sec_b / plain_b:.2f} | "
                                 f"{100 * plain_d:.2f} | {100 * sec_d:.2f} |")
                    print(lines[-1], flush=True)
    print(f"\ntiny SAM, 64 px, {args.samples} images per site, {args.rounds} rounds; {time.perf_counter() - started:.0f} s in all\n")
    print("| mode | sites | runtime | plain s/round | SecAgg+ s/round | ratio | plain MiB/site/round | "
          "SecAgg+ MiB/site/round | ratio | plain unseen Dice | SecAgg+ unseen Dice |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
