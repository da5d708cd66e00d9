"""End to end in Flower's simulation runtime (Ray): 3 virtual SuperNodes, tiny SAM."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import psutil
import pytest
import torch
import yaml
from opacus.accountants import RDPAccountant

from fedfms.config import ModelConfig, save_config
from fedfms.data import load_split
from fedfms.federated.server import FederationError
from fedfms.federated.simulation import simulate
from fedfms.federated.wire import to_record
from fedfms.models import build_model, load_checkpoint, trainable_state
from fedfms.privacy.accountant import site_accountant
from fedfms.privacy.dpsgd import case_groups, round_cost
from fedfms.run.log import read_rows
from fedfms.run.state import load_latest
from fedfms.train.sites import SiteError, load_site

pytestmark = pytest.mark.slow


def test_two_rounds_with_three_clients_train_two_and_test_the_unseen(federation, tmp_path, run_config):
    config = run_config(federation, tmp_path / "run", rounds=2)
    results = simulate(config)

    rows = read_rows(config.output_dir)
    assert [r["round"] for r in rows if r["kind"] == "round"] == [1, 2]
    trained = {(r["round"], r["client"]) for r in rows if r["kind"] == "train"}
    assert trained == {(1, "site-A"), (1, "site-B"), (2, "site-A"), (2, "site-B")}  # site-C never trains
    unseen = [r for r in rows if r["kind"] == "eval" and r["client"] == "site-C"]
    assert [r["split"] for r in unseen] == ["test", "test"] and all(r["images"] == 8 for r in unseen)

    torch.manual_seed(config.train.seed)
    initial = trainable_state(build_model(config.model))
    trainable, _, state = load_latest(config.output_dir)
    assert state.round == 2 and set(trainable) == set(initial)
    assert any(not torch.equal(trainable[k], initial[k]) for k in initial), "the global model never changed"
    expected_bytes = to_record(initial).count_bytes()  # the trainable tensors and nothing else
    assert expected_bytes < 4 * sum(p.numel() for p in build_model(config.model).parameters())
    assert {r["bytes_received"] for r in rows if r["kind"] == "train"} == {expected_bytes}

    assert results["best_round"] in (1, 2) and set(results["clients"]) == {"site-A", "site-B", "site-C"}
    assert results["clients"]["site-C"]["role"] == "unseen"
    assert results["clients_info"]["site-C"] == {"role": "unseen", "test": 8, "samples": 8}
    assert results["clients_info"]["site-A"]["role"] == "train" and results["clients_info"]["site-A"]["val"] > 0
    model, model_cfg = load_checkpoint(config.output_dir / "best_model")
    assert model_cfg.model_copy(update={"checkpoint": None}) == config.model
    split = load_split(config.output_dir / "split.json")
    assert split.unseen == "site-C" and len(split.test) == 8
    for client in ("site-A", "site-B"):
        assert not set(split.train[client]) & set(split.val[client])


def _corrupt_samples(client) -> None:
    """Sample arrays of the right shape (the preflight reads only their headers and passes) whose
    values are text, which no model takes (the node fails in training)."""
    for path in (client / "images").iterdir():
        np.save(path, np.full(np.load(path).shape, "x"))


def test_a_failing_client_is_named_and_the_round_goes_on(federation, tmp_path, run_config):
    _corrupt_samples(federation / "site-B")  # site-B's node fails when it reads a sample
    config = run_config(federation, tmp_path / "run", rounds=2)  # default: half the training clients suffice
    results = simulate(config)
    rounds = [r for r in read_rows(config.output_dir) if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(any(f.startswith("site-B") for f in r["failed"]) for r in rounds)
    assert {r["client"] for r in read_rows(config.output_dir) if r["kind"] == "train"} == {"site-A"}
    assert "site-C" in results["clients"]


def test_too_few_answers_stop_the_run_with_the_reason(federation, tmp_path, run_config):
    _corrupt_samples(federation / "site-B")
    config = run_config(federation, tmp_path / "run", rounds=2, min_train_clients=2)
    with pytest.raises(FederationError, match="site-B.*run the same command with --resume"):
        simulate(config)


def _still_running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _after_round_1(config, tmp_path, stderr=subprocess.PIPE) -> tuple[list[str], subprocess.Popen, list]:
    """``fedfms train`` of ``config`` started in a session of its own and waited for until its
    first round is on disk: the command, the process and its helpers (Flower's Ray runtime:
    raylet, GCS, agents, actors)."""
    path = tmp_path / "run.yaml"
    save_config(config, path)
    command = [sys.executable, "-m", "fedfms.cli", "train", "--config", str(path)]
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    latest = config.output_dir / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 180
    while not latest.exists() and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    return command, run, psutil.Process(run.pid).children(recursive=True)


def _site_epsilon_after_a_resume(config, site: str, killed_at: int) -> float:
    """The site's own accountant after the interrupted and the resumed run: every round of the
    run spent, the round in flight when the run was killed possibly twice (its update was
    released, then trained again from the checkpoint), each entry at the site's round cost; a
    site that spent no round twice has the epsilon of an uninterrupted run."""
    accountant = site_accountant(config, site)
    spent = Counter(accountant.rounds)
    assert set(spent) == set(range(1, config.federation.rounds + 1)), accountant.rounds
    assert {r for r, times in spent.items() if times > 1} <= {killed_at + 1}, accountant.rounds
    cost = round_cost(config, len(case_groups([load_site(config.data.root / site, config)])))
    assert accountant.history == [(cost.noise_multiplier, cost.sample_rate, cost.steps)] * len(accountant.rounds)
    uninterrupted = RDPAccountant()
    uninterrupted.history = [(cost.noise_multiplier, cost.sample_rate, cost.steps)] * config.federation.rounds
    if len(accountant.rounds) == config.federation.rounds:
        assert accountant.epsilon() == pytest.approx(uninterrupted.get_epsilon(config.privacy.delta), rel=1e-9)
    else:
        assert accountant.epsilon() > uninterrupted.get_epsilon(config.privacy.delta)
    return accountant.epsilon()


@pytest.mark.timeout(600)
def test_ctrl_c_stops_every_process_says_how_to_resume_and_the_resume_finishes(federation, tmp_path, run_config):
    """With record-level DP on: the sites' epsilon after the kill and the resume is that of an
    uninterrupted run, plus only the round whose update was released before the kill."""
    config = run_config(federation, tmp_path / "run", rounds=4).with_overrides({
        "privacy.level": "record", "privacy.noise_multiplier": 1.0, "train.state_dir": str(tmp_path / "site-state")})
    command, first, helpers = _after_round_1(config, tmp_path)
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130 and "--resume" in stderr and "last complete round on disk is round-" in stderr
    _, alive = psutil.wait_procs(helpers, timeout=20)  # killed by the run's reaper
    assert helpers and not [p for p in alive if _still_running(p)]
    assert (config.output_dir / "checkpoints" / "LATEST").exists(), "the first run never completed a round"
    assert not (config.output_dir / "results.json").exists(), "the run finished before it could be interrupted"
    killed_at = load_latest(config.output_dir)[2].round

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rounds = [r["round"] for r in read_rows(config.output_dir) if r["kind"] == "round"]
    assert rounds == list(range(1, 5)), f"killed after round {killed_at}, log has rounds {rounds}"
    results = json.loads((config.output_dir / "results.json").read_text())
    assert results["rounds"] == 4
    assert yaml.safe_load((config.output_dir / "config.yaml").read_text())["federation"]["rounds"] == 4
    epsilons = [_site_epsilon_after_a_resume(config, site, killed_at) for site in ("site-A", "site-B")]
    assert results["privacy"]["epsilon"] == pytest.approx(max(epsilons), rel=1e-9)
    assert [r["epsilon"] for r in read_rows(config.output_dir) if r["kind"] == "round"][-1] == pytest.approx(max(epsilons))


@pytest.mark.timeout(300)
def test_sigterm_to_the_process_group_stops_as_ctrl_c_does(federation, tmp_path, run_config):
    """What schedulers, systemd and ``timeout`` send, to the run and all its helpers at once:
    Ray's start-up had taken SIGTERM over (a stack dump, exit 134, no word of the saved round)."""
    config = run_config(federation, tmp_path / "run", rounds=20)
    _, run, helpers = _after_round_1(config, tmp_path)
    os.killpg(run.pid, signal.SIGTERM)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 143, stderr[-3000:]
    assert "interrupted (SIGTERM)" in stderr and "last complete round on disk is round-" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr[-3000:]
    _, alive = psutil.wait_procs(helpers, timeout=20)
    assert helpers and not [p for p in alive if _still_running(p)]
    assert not (config.output_dir / "results.json").exists(), "the run finished before it could be stopped"


@pytest.mark.timeout(600)
def test_a_killed_run_leaves_no_process_behind(federation, tmp_path, run_config):
    """SIGKILL gives the run no chance to clean up; Ray's agents (children of the raylet) used to
    survive it. The reaper's watchdog ends every process the run started."""
    config = run_config(federation, tmp_path / "run", rounds=20)
    _, run, helpers = _after_round_1(config, tmp_path, stderr=subprocess.DEVNULL)
    names = " ".join(" ".join(p.cmdline()) for p in helpers if _still_running(p))
    assert "DashboardAgent" in names and "RuntimeEnvAgent" in names, names
    run.kill()
    run.wait()
    _, alive = psutil.wait_procs(helpers, timeout=20)
    survivors = [p for p in alive if _still_running(p)]
    assert not survivors, [" ".join(p.cmdline()) for p in survivors]


def test_fednnunet_plans_from_merged_fingerprints_and_trains_nnunets_recipe(federation, tmp_path, run_config):
    base = run_config(federation, tmp_path / "run", rounds=2)
    nnunet = {"recipe": "nnunet", "iterations_per_round": 2, "gpu_memory_gb": 0.05}
    config = base.model_copy(update={
        "model": ModelConfig(arch="nnunet", num_classes=1, image_size=64, nnunet=nnunet),
        "train": base.train.model_copy(update={"state_dir": tmp_path / "site-state"})})
    results = simulate(config)
    plan = results["model"]["nnunet"]["plan"]
    split = load_split(config.output_dir / "split.json")
    assert plan["dataset"]["numTraining"] == sum(len(ids) for ids in split.train.values())
    assert plan["plans"]["configurations"]["2d"]["patch_size"] == [64, 64]
    train_rows = [r for r in read_rows(config.output_dir) if r["kind"] == "train"]
    assert [r["round"] for r in train_rows] == [1, 1, 2, 2]  # two sites, two rounds
    assert all(len(r["loss_per_epoch"]) == 1 and r["loss"] == r["loss"] for r in train_rows)
    assert results["rounds"] == 2 and 0.0 <= results["clients"]["site-C"]["dice"] <= 1.0
    model, model_cfg = load_checkpoint(config.output_dir / "best_model")
    assert model_cfg.nnunet.plan == plan and model_cfg.nnunet.recipe == "nnunet"


def test_delta_fp16_uploads_half_the_bytes_and_trains_like_float32(federation, tmp_path, run_config):
    full = run_config(federation, tmp_path / "full", rounds=1)
    delta = run_config(federation, tmp_path / "delta", rounds=1, update_encoding="delta-fp16")
    simulate(full)
    simulate(delta)
    received = {c.output_dir.name: [r["bytes_received"] for r in read_rows(c.output_dir) if r["kind"] == "train"]
                for c in (full, delta)}
    # half the tensor bytes; the tiny model's 154 small tensors keep ~180 bytes of header each
    assert all(d < 0.6 * f for d, f in zip(received["delta"], received["full"], strict=True))
    after_full, _, _ = load_latest(full.output_dir)
    after_delta, _, _ = load_latest(delta.output_dir)
    for name, tensor in after_full.items():
        torch.testing.assert_close(after_delta[name], tensor, rtol=0, atol=1e-5)


def test_settings_and_folders_are_checked_before_the_engine_starts(federation, tmp_path, run_config):
    """Errors that need no training come from the preflight, as one clear error naming the
    folder, not as a client failure once the simulation runtime is up."""
    wrong_classes = run_config(federation, tmp_path / "a").with_overrides({"model.num_classes": 2})
    with pytest.raises(SiteError, match="site-A.*1 classes.*the model has 2"):
        simulate(wrong_classes)
    sample = sorted((federation / "site-B" / "masks").iterdir())[0]
    sample.unlink()
    with pytest.raises(SiteError, match=f"site-B: 1 sample file.*masks/{sample.stem}.npy"):
        simulate(run_config(federation, tmp_path / "b"))
    assert not (tmp_path / "a" / "checkpoints").exists() and not (tmp_path / "b" / "split.json").exists()
