"""The fault corpus: bad inputs and faults injected at named points, each asserted to end in a
message naming the file or node, a known exit status, and nothing already written changed.

- bad input: a small file (corrupt, truncated, wrong shape, NaN, unknown labels, duplicate
  ids, unpaired, empty, wrong-backbone checkpoint) or a bad output path, given to the command
  line in-process: exit 1, a line naming the file, no traceback;
- kill: a command SIGKILLed at a named point (``fault_points.py``), then the next command
  recovers: what the killed one had completed is unchanged, the recovery is named;
- site: a fault in a site's reply to the server (NaN, huge, wrong tensors, an error, silence):
  the site is named in the round's failures and left out, the round goes on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.app import Error as FlowerError

from fedfms.cli import main
from fedfms.config import DataConfig, FederationConfig, ModelConfig, RunConfig, TrainConfig, save_config
from fedfms.data import make_synthetic_federation
from fedfms.federated import protocol as P
from fedfms.federated.client_app import app as client_app
from fedfms.federated.protocol import SiteFailure
from fedfms.federated.server import Node, _train_round, rejoin
from fedfms.federated.strategy import make_strategy
from fedfms.federated.wire import record_shapes, to_record
from fedfms.models import build_model, save_checkpoint, trainable_state
from fedfms.run.log import read_rows

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "data"))
sys.path.insert(0, str(HERE / "federated"))
from data_helpers import (  # noqa: E402
    monuseg_root,
    save_nifti,
    save_png,
    volume_pair,
    write_monusac_image,
    write_pannuke_fold,
)
from fake_grid import FakeGrid  # noqa: E402

# --- helpers -----------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (what 'unchanged' compares)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fedfms_out(capsys, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, what it printed on stdout, on stderr)."""
    saved = sys.argv
    sys.argv = ["fedfms", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def fedfms(capsys, *args: str) -> tuple[int, str]:
    """Run the command line in this process: (exit status, what it printed on stderr)."""
    code, _, err = fedfms_out(capsys, *args)
    return code, err


def png_source(root: Path, cases: int = 3, size: int = 32) -> Path:
    """``root/images/c<i>.png`` grey images and ``root/masks/c<i>.png`` binary masks."""
    rng = np.random.default_rng(0)
    for i in range(cases):
        save_png(root / "images" / f"c{i}.png", rng.integers(0, 255, (size, size), dtype=np.uint8))
        mask = np.zeros((size, size), np.uint8)
        mask[8:20, 8:20] = 255
        save_png(root / "masks" / f"c{i}.png", mask)
    return root


PREPARE = ("--image-size", "32", "--mask-size", "8", "--no-progress")


@pytest.fixture
def prepared(tmp_path, capsys) -> Path:
    """A folder of prepared clients already holding ``site-A`` (what must never change)."""
    out = tmp_path / "prepared"
    code, err = fedfms(capsys, "prepare", "images", png_source(tmp_path / "good"), out, "--client", "site-A", *PREPARE)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    """Three tiny prepared sites (4 samples of 64 px each); cases copy it before damaging it."""
    root = tmp_path_factory.mktemp("federation")
    make_synthetic_federation(root, num_clients=3, num_classes=1, image_size=64, mask_size=16,
                              samples_per_client=(4, 4, 4), seed=0)
    return root


def run_config(root: Path, out: Path, rounds: int = 2, **model) -> RunConfig:
    return RunConfig(name="corpus", output_dir=out,
                     model=ModelConfig(**{"backbone": "tiny", "mode": "msa", "num_classes": 1, "image_size": 64, **model}),
                     data=DataConfig(root=root, unseen="site-C"), train=TrainConfig(batch_size=4, lr=1e-3),
                     federation=FederationConfig(rounds=rounds))


def copy_tree(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# --- bad input ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class BadInput:
    """``make(tmp_path, prepared, federation)`` builds the bad input and returns the command's
    arguments and the file or folder the message must name."""

    kind: str
    make: Callable[[Path, Path, Path], tuple[list, Path | str]]


def _prepare_source(damage: Callable[[Path], Path | str], *options: str):
    def make(tmp: Path, prepared: Path, _: Path):
        src = png_source(tmp / "src")
        named = damage(src)
        return ["prepare", "images", src, prepared, "--client", "site-B", *PREPARE, *options], named
    return make


def _corrupt_png(src: Path) -> Path:
    (src / "images" / "c1.png").write_bytes(b"this is not a PNG")
    return src / "images" / "c1.png"


def _truncated_png(src: Path) -> Path:
    path = src / "masks" / "c1.png"
    path.write_bytes(path.read_bytes()[:40])
    return path


def _wrong_shape_mask(src: Path) -> Path:
    save_png(src / "masks" / "c1.png", np.zeros((16, 16), np.uint8))
    return src / "masks" / "c1.png"


def _unknown_label(src: Path) -> Path:
    mask = np.zeros((32, 32), np.uint8)
    mask[2:5, 2:5] = 7
    save_png(src / "masks" / "c1.png", mask)
    return src / "masks" / "c1.png"


def _duplicate_id(src: Path) -> Path:
    (src / "images" / "c1.tif").write_bytes((src / "images" / "c1.png").read_bytes())
    return src / "images" / "c1.tif"


def _unpaired(src: Path) -> Path:
    (src / "masks" / "c2.png").unlink()
    return src / "images" / "c2.png"


def _empty(src: Path) -> Path:
    for path in [*(src / "images").iterdir(), *(src / "masks").iterdir()]:
        path.unlink()
    return src


def _nan_volume(tmp: Path, prepared: Path, _: Path):
    image, _labels = volume_pair(tmp / "nifti", "case1")
    data = nib.load(image).get_fdata().astype(np.float32)
    data[3, 3, 2] = np.nan
    save_nifti(image, data)
    return ["prepare", "nifti", tmp / "nifti", prepared, "--client", "site-B", *PREPARE], image


def _train(damage: Callable[[Path, Path], tuple[dict, Path | str]]):
    """A run on a damaged copy of the federation (``damage(root, tmp)`` returns model settings
    and what the message must name); it must fail in the preflight, before Flower starts."""
    def make(tmp: Path, _: Path, federation: Path):
        root = copy_tree(federation, tmp / "federation")
        model, named = damage(root, tmp)
        config = tmp / "run.yaml"
        save_config(run_config(root, tmp / "run", **model), config)
        return ["train", "--config", config], named
    return make


def _sample(root: Path, kind: str = "images") -> Path:
    return sorted((root / "site-B" / kind).iterdir())[1]


def _corrupt_array(root: Path, tmp: Path):
    _sample(root).write_bytes(b"garbage, not an array")
    return {}, _sample(root)


def _truncated_array(root: Path, tmp: Path):
    path = _sample(root, "masks")
    path.write_bytes(path.read_bytes()[:100])
    return {}, path


def _wrong_shape_array(root: Path, tmp: Path):
    np.save(_sample(root), np.zeros((1, 16, 16), np.uint8))
    return {}, _sample(root)


def _empty_client(root: Path, tmp: Path):
    manifest = root / "site-B" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "samples": []}))
    return {}, root / "site-B"


def _duplicate_manifest_ids(root: Path, tmp: Path):
    manifest = root / "site-B" / "manifest.json"
    content = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**content, "samples": content["samples"] + content["samples"][:1]}))
    return {}, manifest


def _missing_array(root: Path, tmp: Path):
    path = _sample(root, "masks")
    path.unlink()
    return {}, f"masks/{path.name}"


def _wrong_backbone_checkpoint(root: Path, tmp: Path):
    other = ModelConfig(backbone="tiny", mode="msa", num_classes=2, image_size=64)
    save_checkpoint(tmp / "other-model", build_model(other), other, {})
    return {"checkpoint": tmp / "other-model"}, tmp / "other-model"


def _class_mismatch(root: Path, tmp: Path):
    return {"num_classes": 2}, root / "site-A"


def _output_is_a_file(tmp: Path, _: Path, federation: Path):
    (tmp / "taken").write_text("a file where the run folder should go")
    config = tmp / "run.yaml"
    save_config(run_config(federation, tmp / "taken" / "run"), config)
    return ["train", "--config", config], tmp / "taken"


BAD_INPUTS = {
    "corrupt source image": BadInput("prepare", _prepare_source(_corrupt_png)),
    "truncated source mask": BadInput("prepare", _prepare_source(_truncated_png)),
    "wrong-shape source mask": BadInput("prepare", _prepare_source(_wrong_shape_mask)),
    "unknown label value": BadInput("prepare", _prepare_source(_unknown_label, "--encoding", "levels",
                                                               "--levels", "0=,255=disc", "--classes", "disc")),
    "duplicate sample ids": BadInput("prepare", _prepare_source(_duplicate_id)),
    "unpaired image": BadInput("prepare", _prepare_source(_unpaired)),
    "empty source": BadInput("prepare", _prepare_source(_empty)),
    "NaN in a volume": BadInput("prepare", _nan_volume),
    "corrupt sample array": BadInput("train", _train(_corrupt_array)),
    "truncated sample array": BadInput("train", _train(_truncated_array)),
    "wrong-shape sample array": BadInput("train", _train(_wrong_shape_array)),
    "missing sample array": BadInput("train", _train(_missing_array)),
    "empty client": BadInput("train", _train(_empty_client)),
    "duplicate ids in a manifest": BadInput("train", _train(_duplicate_manifest_ids)),
    "classes differ from the model": BadInput("train", _train(_class_mismatch)),
    "wrong-backbone checkpoint": BadInput("train", _train(_wrong_backbone_checkpoint)),
    "output path is a file": BadInput("train", _output_is_a_file),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.replace(" ", "-"))
def test_bad_input_is_one_line_naming_the_file_and_changes_nothing(case, tmp_path, prepared, federation, capsys):
    args, named = BAD_INPUTS[case].make(tmp_path, prepared, federation)
    before = snapshot(prepared)
    code, err = fedfms(capsys, *args)
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 4, err
    assert [line for line in err.splitlines() if str(named) in line], f"no line names {named}:\n{err}"
    assert snapshot(prepared) == before
    assert not (tmp_path / "run" / "checkpoints").exists()
    print(f"CORPUS | bad input | {case} | {[line for line in err.splitlines() if str(named) in line][-1].strip()} | {code}")


@pytest.mark.parametrize("name", ["../escaped", "/abs/site", "a/b", ".", ".hidden", "x" * 65])
def test_a_client_name_that_is_not_a_plain_folder_name_is_refused(name, tmp_path, prepared, capsys):
    """``--client ../escaped`` wrote outside OUT; an absolute path wrote there (and travelled to
    the server as the client's name); ``a/b`` and ``.`` left ``.tmp-*`` folders behind."""
    before = snapshot(tmp_path)
    code, err = fedfms(capsys, "prepare", "images", png_source(tmp_path / "src"), prepared, "--client", name, *PREPARE)
    assert code == 1 and err.startswith(f"preparation failed, nothing written: --client: client name {name!r}: "
                                        "expected a plain folder name"), err
    assert len(err.strip().splitlines()) == 1
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("src/")} == before
    assert not Path("/abs/site").exists()
    print(f"CORPUS | bad input | --client {name[:12]} | {err.strip()} | {code}")


def test_prepare_synthetic_does_not_replace_a_prepared_client_that_is_not_synthetic(prepared, capsys):
    before = snapshot(prepared)
    code, err = fedfms(capsys, "prepare", "synthetic", prepared, "--clients", "2", "--samples", "2")
    assert code == 1 and f"{prepared / 'site-A'}: holds a prepared client that is not synthetic" in err, err
    assert snapshot(prepared) == before and sorted(p.name for p in prepared.iterdir()) == ["site-A"]  # nor site-B
    code, err = fedfms(capsys, "prepare", "synthetic", prepared, "--clients", "2", "--samples", "2", "--overwrite")
    assert code == 0, err
    code, again = fedfms(capsys, "prepare", "synthetic", prepared, "--clients", "2", "--samples", "3")
    assert code == 0, again  # synthetic clients are simply regenerated
    print(f"CORPUS | data safety | prepare synthetic over a real client | {err.strip()} | 1")


@pytest.mark.parametrize("flag", ["--clients", "--samples"])
def test_prepare_synthetic_with_no_sites_or_samples_is_refused_naming_the_flag(flag, tmp_path, capsys):
    code, err = fedfms(capsys, "prepare", "synthetic", tmp_path / "out", flag, "0")
    assert code == 2 and err.strip() == f"error: Invalid value for '{flag}': 0 is not in the range x>=1.", err
    assert not (tmp_path / "out").exists()


def test_monuseg_with_one_bad_organ_writes_nothing_and_the_rerun_works(tmp_path, capsys):
    """It said "nothing written" but had written the good organ, and the re-run then failed."""
    root = monuseg_root(tmp_path / "MoNuSeg")
    bad = root / "liver" / "TCGA-18-5592" / "images" / "TCGA-18-5592.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not a PNG")
    out = tmp_path / "prepared"
    code, err = fedfms(capsys, "prepare", "monuseg", root, out, "--image-size", "12", "--mask-size", "12", "--no-progress")
    assert code == 1 and "nothing written" in err and str(bad) in err, err
    assert not out.exists() or [p.name for p in out.iterdir() if not p.name.startswith(".fedfms")] == []
    bad.write_bytes(good)
    code, again = fedfms(capsys, "prepare", "monuseg", root, out, "--image-size", "12", "--mask-size", "12", "--no-progress")
    assert code == 0 and sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["breast", "liver"], again
    print(f"CORPUS | data safety | monuseg, one bad organ of two | {err.strip().splitlines()[0]} | 1, then 0")


def _train_set(pair: str):
    def make(tmp: Path, federation: Path) -> list:
        config = tmp / "run.yaml"
        save_config(run_config(federation, tmp / "run"), config)
        return ["train", "--config", config, "--set", pair]
    return make


def _experiment_unseen(tmp: Path, federation: Path) -> list:
    path = tmp / "experiment.yaml"
    path.write_text(json.dumps({
        "name": "toy", "output_dir": str(tmp / "runs"), "models": ["FedMSA-PT"], "unseen": ["site-Z"],
        "backbones": {"base": "tiny", "large": "tiny"},
        "base": {"model": {"num_classes": 1, "image_size": 64}, "data": {"root": str(federation)}}}))
    return ["experiment", "--config", path]


def _folder(tmp: Path) -> Path:
    (tmp / "folder").mkdir(exist_ok=True)
    return tmp / "folder"


UP_FRONT = {  # case: (arguments (tmp, federation) -> list, what the one line names)
    "lr .inf": (_train_set("train.lr=.inf"), "train.lr: Input should be a finite number"),
    "betas [1.5, -1]": (_train_set("train.betas=[1.5, -1]"), "train.betas.0: Input should be less than 1"),
    "device banana": (_train_set("train.device=banana"), "train.device: Value error, 'banana' is not a device"),
    "device cuda, no GPU": (_train_set("train.device=cuda"), "train.device 'cuda': this machine has no CUDA GPU"),
    "rounds true": (_train_set("federation.rounds=true"), "federation.rounds: Input should be a valid integer"),
    "unseen without a folder": (_train_set("data.unseen=site-Z"), "data.unseen 'site-Z' is not one of the clients"),
    "experiment, unseen without a folder": (_experiment_unseen, "data.unseen 'site-Z' is not one of the clients"),
    "demo --unseen without a folder": (lambda t, f: ["demo", "--data", f, "--unseen", "site-Z", "--out", t / "demo"],
                                       "--unseen 'site-Z': no prepared client of that name"),
    "demo --data empty": (lambda t, f: ["demo", "--data", _folder(t), "--out", t / "demo"],
                          "the demo needs at least 2 prepared clients, found 0"),
    "predict --device cuda": (lambda t, f: ["predict", "--checkpoint", t / "m", "-i", t / "x.png", "-o", t / "o",
                                            "--device", "cuda"], "--device 'cuda': this machine has no CUDA GPU"),
    "predict --clip-percentile 300": (lambda t, f: ["predict", "--checkpoint", t / "m", "-i", t / "x.png", "-o",
                                                    t / "o", "--clip-percentile", "300"], "'--clip-percentile'"),
    "report --paper liver": (lambda t, f: ["report", t, "--paper", "liver"], "Invalid value for --paper: 'liver'"),
    "efficiency --device cuda": (lambda t, f: ["efficiency", "--device", "cuda", "--out", t / "e"],
                                 "--device 'cuda': this machine has no CUDA GPU"),
    "efficiency --precision fp8": (lambda t, f: ["efficiency", "--precision", "fp8", "--out", t / "e"],
                                   "--precision 'fp8': expected auto, fp32, bf16, fp16"),
    "efficiency --image-size 7": (lambda t, f: ["efficiency", "--image-size", "7", "--out", t / "e"], "'--image-size'"),
    "bench step --device cuda": (lambda t, f: ["bench", "step", "--device", "cuda"], "--device 'cuda': this machine"),
    "bench step --image-size 10": (lambda t, f: ["bench", "step", "--image-size", "10"], "'--image-size'"),
    "bench step --out a folder": (lambda t, f: ["bench", "step", "--backbones", "tiny", "--out", _folder(t)],
                                  "Invalid value for --out: "),
    "prepare --tile -5": (lambda t, f: ["prepare", "images", png_source(t / "src"), t / "p", "--tile", "-5"], "'--tile'"),
    "prepare --case-regex '(['": (lambda t, f: ["prepare", "images", png_source(t / "src"), t / "p", "--case-regex",
                                                "(["], "Invalid value for --case-regex: '(['"),
    "prepare --mask-size 100000": (lambda t, f: ["prepare", "images", png_source(t / "src"), t / "p", "--mask-size",
                                                 "100000"], "'--mask-size'"),
    "prepare --limit -1": (lambda t, f: ["prepare", "images", png_source(t / "src"), t / "p", "--limit", "-1"],
                           "'--limit'"),
}


@pytest.mark.parametrize("case", UP_FRONT, ids=lambda c: c.replace(" ", "-"))
def test_a_bad_value_is_refused_up_front_in_one_line_naming_it(case, tmp_path, federation, capsys):
    if "cuda" in case and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    make, named = UP_FRONT[case]
    args = make(tmp_path, federation)
    before = snapshot(tmp_path)
    code, err = fedfms(capsys, *args)
    assert code in (1, 2) and len(err.strip().splitlines()) == 1 and named in err, err
    assert snapshot(tmp_path) == before  # before any work: nothing written, no run folder
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and p.name in ("run", "runs", "demo", "e", "p")]
    print(f"CORPUS | up front | {case} | {err.strip()} | {code}")


def test_silent_acceptances_of_prepare_are_now_said(tmp_path, capsys):
    """A volume at +-3e38 was stored black; a blank image with a labelled mask and a broken
    symbolic link passed without a word; --channels rgb was accepted by prepare, refused by predict."""
    image, _ = volume_pair(tmp_path / "nifti", "case1")
    data = nib.load(image).get_fdata().astype(np.float32)
    save_nifti(image, np.where(data > data.mean(), 3e38, -3e38).astype(np.float32))
    code, err = fedfms(capsys, "prepare", "nifti", tmp_path / "nifti", tmp_path / "out", "--client", "huge", *PREPARE)
    assert code == 0, err
    stored = np.stack([np.load(p) for p in (tmp_path / "out" / "huge" / "images").iterdir()])
    assert stored.max() == 255 and stored.min() == 0  # not all black
    code, err = fedfms(capsys, "prepare", "nifti", tmp_path / "nifti", tmp_path / "out", "--client", "rgb",
                       "--channels", "rgb", *PREPARE)
    assert code == 1 and "--channels 'rgb': expected copy or neighbours" in err, err

    src = png_source(tmp_path / "src")
    save_png(src / "images" / "c1.png", np.zeros((32, 32), np.uint8))
    (src / "images" / "c9.png").symlink_to(tmp_path / "gone.png")
    code, out, err = fedfms_out(capsys, "prepare", "images", src, tmp_path / "out", "--client", "blank", *PREPARE)
    assert code == 0, err
    printed = out + err
    assert "c1.png: blank image (one value everywhere) with a labelled mask" in printed, printed
    assert f"{src / 'images' / 'c9.png'}: broken symbolic link" in printed, printed
    print("CORPUS | silent | +-3e38 volume, blank image, broken link, --channels rgb | said | 0, 1")


def test_nuclei_labels_that_cannot_be_right_are_refused_naming_the_file(tmp_path, capsys):
    """A PanNuke instance id of -3 was read as background; MoNuSAC vertices at -50, 1e300 or
    ``nan`` were drawn clipped to the image."""
    write_pannuke_fold(tmp_path / "pannuke", 1, ["Colon"])
    masks_file = tmp_path / "pannuke" / "Fold 1" / "masks" / "fold1" / "masks.npy"
    masks = np.load(masks_file)
    masks[0, 5, 5, 1] = -3
    np.save(masks_file, masks)
    write_monusac_image(tmp_path / "monusac" / "P1", "P1_1", [[(-50, 2), (6, 2), (6, 6)]])
    said = []
    for kind, named in (("pannuke", "Fold 1/masks/fold1/masks.npy: image 0"), ("monusac", "P1/P1_1.xml: polygon 1")):
        code, err = fedfms(capsys, "prepare", kind, tmp_path / kind, tmp_path / "out", "--image-size", "16",
                           "--mask-size", "16", "--no-progress")
        assert code == 1 and f"{named}: " in err and len(err.strip().splitlines()) <= 3, err
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
        said.append(f"CORPUS | silent | {kind} label out of range | {err.strip().splitlines()[-1].strip()} | {code}")
    print("\n".join(said))


# --- write failures ----------------------------------------------------------------------------

def test_a_full_disk_at_a_checkpoint_keeps_the_last_round(tmp_path, federation, capsys, monkeypatch):
    """Round 2's checkpoint hits a full disk: one line naming the file, round 1 untouched."""
    import fedfms.run.state as state

    config = tmp_path / "run.yaml"
    save_config(run_config(federation, tmp_path / "run"), config)
    real = state.save_file
    calls = []

    def save_file(tensors, path):
        calls.append(path)
        if len(calls) == 5:  # round 1 wrote its folder and best/ (2 files each)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path)

    monkeypatch.setattr(state, "save_file", save_file)
    code, err = fedfms(capsys, "train", "--config", config, "--centralized")
    line = next(line for line in err.splitlines() if line.startswith("error:"))
    assert code == 1 and "round 2" in line and "the disk is full" in line and str(calls[-1]) in line, err
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "round-0001"
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")] == []
    print(f"CORPUS | write | disk full at round 2's checkpoint | {line} | {code}")


@pytest.mark.parametrize("number", [errno.EROFS, errno.EACCES], ids=["read-only", "no-permission"])
def test_an_unwritable_output_folder_is_refused_before_work_starts(number, tmp_path, federation, capsys, monkeypatch):
    """A read-only or forbidden run folder (injected: the tests may run as root, whom
    permissions do not stop) fails in the output check, before any work."""
    import tempfile

    config = tmp_path / "run.yaml"
    save_config(run_config(federation, tmp_path / "run"), config)
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path / "run":
            raise OSError(number, os.strerror(number), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    code, err = fedfms(capsys, "train", "--config", config)
    assert code == 1 and err.startswith(f"error: cannot write the output folder: {tmp_path / 'run'}: "), err
    assert len(err.strip().splitlines()) == 1
    print(f"CORPUS | write | {errno.errorcode[number]} output folder | {err.strip()} | {code}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [[], ["--centralized"]], ids=["federated", "centralized"])
def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(mode, tmp_path, federation, capsys):
    """Two runs into one folder interleaved their rounds, scores and checkpoints, both exit 0."""
    config = tmp_path / "run.yaml"
    save_config(run_config(federation, tmp_path / "run"), config)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from fedfms.run.lock import run_lock\n"
                               f"with run_lock({str(tmp_path / 'run')!r}):\n print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = snapshot(tmp_path / "run")
        code, err = fedfms(capsys, "train", "--config", config, *mode)
        assert code == 1 and err.strip() == f"error: {tmp_path / 'run'}: another run is writing into this folder " \
                                            f"(pid {holder.pid}); wait for it to end or choose another output folder", err
        assert snapshot(tmp_path / "run") == before  # nothing written
    finally:
        holder.communicate("")
    print(f"CORPUS | run folder | a second run while one holds it | {err.strip()} | {code}")


def test_the_run_lock_is_released_when_its_holder_is_killed(tmp_path):
    from fedfms.run.lock import run_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys; from fedfms.run.lock import run_lock\n"
                               f"with run_lock({str(tmp_path)!r}):\n print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    with run_lock(tmp_path):  # the stale file does not block
        assert (tmp_path / ".fedfms.lock").read_text() == f"{os.getpid()}\n"


# --- damaged weights ---------------------------------------------------------------------------

def damage(path: Path, size: int = 200_000) -> None:
    """Overwrite the end of ``path`` (tensor data, not the header) with 0xFF bytes, in place."""
    data = bytearray(path.read_bytes())
    size = min(size, len(data) // 2)
    data[-size:] = b"\xff" * size
    path.write_bytes(bytes(data))


def test_a_damaged_model_checkpoint_is_refused_naming_the_file(tmp_path, capsys):
    """0xFF over a best model's tensors predicted all-background masks with exit 0."""
    cfg = ModelConfig(backbone="tiny", mode="msa", num_classes=1, image_size=64, pretrained=False)
    save_checkpoint(tmp_path / "best_model", build_model(cfg), cfg, {})
    damage(tmp_path / "best_model" / "model.safetensors")
    save_png(tmp_path / "scan.png", np.full((64, 64), 90, np.uint8))
    code, err = fedfms(capsys, "predict", "--checkpoint", tmp_path / "best_model", "--input", tmp_path / "scan.png",
                       "--output", tmp_path / "masks", "--device", "cpu", "--no-progress")
    line = f"{tmp_path / 'best_model' / 'model.safetensors'}: the file is damaged"
    assert code == 1 and line in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "masks").exists() or not any((tmp_path / "masks").iterdir())
    print(f"CORPUS | damaged weights | 0xFF over best_model's tensors, predict | {err.strip()} | {code}")


def test_resume_from_a_damaged_round_falls_back_to_the_best_one_naming_it(tmp_path, federation, capsys, caplog):
    """A damaged round was loaded on --resume and failed with 284 lines of 'loss became nan'."""
    config = tmp_path / "run.yaml"
    save_config(run_config(federation, tmp_path / "run", rounds=2), config)
    code, err = fedfms(capsys, "train", "--config", config, "--centralized")
    assert code == 0, err
    checkpoints = tmp_path / "run" / "checkpoints"
    damaged = checkpoints / "round-0002" / "trainable.safetensors"
    damage(damaged)
    code, err = fedfms(capsys, "train", "--config", config, "--centralized", "--resume", "--set", "federation.rounds=3")
    assert code == 0, err
    assert [r["round"] for r in read_rows(tmp_path / "run") if r["kind"] == "round"] == [1, 2, 3]
    line = next(m for m in caplog.messages if "damaged" in m)
    assert str(damaged) in line and "resuming from the best round" in line, line
    assert "nan" not in err.lower()
    print(f"CORPUS | damaged weights | 0xFF over the last round, --resume | {line} | 0")


# --- kills at named points ---------------------------------------------------------------------

def killed(point: str, *args) -> subprocess.CompletedProcess:
    """Run ``fedfms args`` in a new process that SIGKILLs itself at ``point``."""
    done = subprocess.run([sys.executable, str(HERE / "fault_points.py"), point, *map(str, args)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, f"{point} was never reached ({done.returncode}):\n{done.stderr[-2000:]}"
    return done


def test_kill_during_prepare_leaves_nothing_the_next_prepare_does_not_clean(tmp_path, prepared, capsys, caplog):
    before = snapshot(prepared)
    killed("prepare-second-sample", "prepare", "images", png_source(tmp_path / "src"), prepared,
           "--client", "site-B", *PREPARE)
    leftovers = [p.name for p in prepared.iterdir() if p.name.startswith(".site-B.tmp-")]
    assert leftovers and snapshot(prepared / "site-A") == {k[7:]: v for k, v in before.items()}
    code, err = fedfms(capsys, "prepare", "images", tmp_path / "src", prepared, "--client", "site-B", *PREPARE)
    assert code == 0, err
    assert sorted(p.name for p in prepared.iterdir()) == ["site-A", "site-B"]
    line = next(line for line in caplog.messages if leftovers[0] in line)
    print(f"CORPUS | kill | prepare, at the second sample | {line.strip()} | -9, then 0")


def test_kill_during_prepare_append_leaves_no_stray_sample(tmp_path, prepared, capsys, caplog):
    manifest = json.loads((prepared / "site-A" / "manifest.json").read_text())
    more = png_source(tmp_path / "more", cases=3)
    for path in [*(more / "images").iterdir(), *(more / "masks").iterdir()]:
        path.rename(path.with_name("extra-" + path.name))
    killed("prepare-second-sample", "prepare", "images", more, prepared, "--client", "site-A", "--append", *PREPARE)
    strays = sorted(p.name for p in (prepared / "site-A" / "images").iterdir())
    assert len(strays) == len(manifest["samples"]) + 1  # the first new sample, not in the manifest
    assert json.loads((prepared / "site-A" / "manifest.json").read_text()) == manifest
    code, err = fedfms(capsys, "prepare", "images", more, prepared, "--client", "site-A", "--append", *PREPARE)
    assert code == 0, err
    ids = [s["id"] for s in json.loads((prepared / "site-A" / "manifest.json").read_text())["samples"]]
    assert len(ids) == len(manifest["samples"]) + 3
    assert sorted(p.stem for p in (prepared / "site-A" / "images").iterdir()) == sorted(ids)
    line = next(line for line in caplog.messages if "does not list" in line)
    print(f"CORPUS | kill | prepare --append, at the second sample | {line.strip()} | -9, then 0")


def test_kill_between_the_renames_of_a_replaced_client_restores_it(tmp_path, prepared, capsys, caplog):
    before = snapshot(prepared / "site-A")
    killed("prepare-between-replace-renames", "prepare", "images", png_source(tmp_path / "src", cases=2),
           prepared, "--client", "site-A", "--overwrite", *PREPARE)
    assert not (prepared / "site-A").exists(), "the kill did not land between the two renames"
    code, err = fedfms(capsys, "prepare", "images", tmp_path / "src", prepared, "--client", "site-B", *PREPARE)
    assert code == 0, err
    assert snapshot(prepared / "site-A") == before
    line = next(line for line in caplog.messages if "restored" in line)
    print(f"CORPUS | kill | prepare --overwrite, between its two renames | {line.strip()} | -9, then 0")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", ["train-round-2", "checkpoint-round-2", "best-swap"])
def test_kill_during_training_resumes_from_the_last_complete_round(point, tmp_path, federation, capsys, caplog):
    config = tmp_path / "run.yaml"
    save_config(run_config(federation, tmp_path / "run", rounds=3), config)
    killed(point, "train", "--config", config, "--centralized")
    checkpoints = tmp_path / "run" / "checkpoints"
    last = (checkpoints / "LATEST").read_text()
    kept = snapshot(checkpoints / last)
    code, err = fedfms(capsys, "train", "--config", config, "--centralized")  # forgetting --resume
    assert code == 1 and "--resume" in err and str(tmp_path / "run") in err, err
    assert (checkpoints / "LATEST").read_text() == last and snapshot(checkpoints / last) == kept  # refused: untouched
    code, err = fedfms(capsys, "train", "--config", config, "--centralized", "--resume")
    assert code == 0, err
    assert [r["round"] for r in read_rows(tmp_path / "run") if r["kind"] == "round"] == [1, 2, 3]
    line = next(line for line in [*err.splitlines(), *caplog.messages] if "resuming" in line)  # console or log
    print(f"CORPUS | kill | {point} | {line.strip()} | -9, then 0")


@pytest.mark.timeout(120)
def test_sigterm_during_centralized_training_stops_as_ctrl_c_does(tmp_path, federation, capsys, monkeypatch):
    """SIGTERM (schedulers, systemd, ``timeout``) once round 1 is on disk: exit 143, the resume
    line, the round kept (the simulated run's case is in tests/federated/test_simulation.py)."""
    import fedfms.run.tracker as tracker

    config = tmp_path / "run.yaml"
    save_config(run_config(federation, tmp_path / "run", rounds=3), config)
    real = tracker.save_round

    def save_round(*args, **kwargs):
        real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(tracker, "save_round", save_round)
    code, err = fedfms(capsys, "train", "--config", config, "--centralized")
    assert code == 143 and err.strip().splitlines()[-1].startswith("interrupted (SIGTERM)") and "--resume" in err, err
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "round-0001"
    assert not (tmp_path / "run" / "results.json").exists()
    print(f"CORPUS | signal | SIGTERM after round 1 | {err.strip().splitlines()[-1]} | {code}")


# --- faulty sites ------------------------------------------------------------------------------

def _update(state: dict[str, torch.Tensor]) -> RecordDict:
    return RecordDict({P.ARRAYS: to_record(state), P.METRICS: MetricRecord(
        {P.NUM_EXAMPLES: 4, "train-loss": 0.5, "train-loss-per-epoch": [0.5], "train-seconds": 0.1})})


SITE_FAULTS = {
    "NaN update": (lambda w: _update({"w": torch.full_like(w, float("nan"))}), "NaN or Inf"),
    "huge update": (lambda w: _update({"w": torch.full_like(w, 3e37)}), "max_update_ratio"),
    "wrong tensors": (lambda w: _update({"v": w}), "missing ['w']"),
    "error reply": (lambda w: FlowerError(code=0, reason="site-D: ValueError while handling train"), "ValueError"),
    "no reply": (None, "no reply before the timeout"),
    "offline": (None, "not connected"),  # nothing waits for it (Flower's sampling would, forever)
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", SITE_FAULTS, ids=lambda c: c.replace(" ", "-"))
def test_a_faulty_site_is_named_and_left_out_of_the_round(case, task_identity):
    make, reason = SITE_FAULTS[case]
    arrays = to_record({"w": torch.zeros(4)})
    nodes = [Node(i + 1, name, 4, 1, 5, ["x"]) for i, name in enumerate(["site-A", "site-B", "site-C", "site-D"])]
    answers = {n.node_id: _update({"w": torch.full((4,), 0.1 * n.node_id)}) for n in nodes[:3]}
    if make is not None:
        answers[4] = make(torch.zeros(4))
    grid = FakeGrid([n.node_id for n in nodes if case != "offline" or n.client != "site-D"], answers)
    config = RunConfig(data=DataConfig(clients=[n.client for n in nodes]), federation=FederationConfig(round_timeout_s=1))
    strategy = make_strategy(config.federation, min_train_nodes=2)
    valid, rows, failed, silent = _train_round(grid, strategy, nodes, {n.node_id: n for n in nodes}, arrays,
                                               record_shapes(arrays), config, 1, 2, "run the same command with --resume")
    assert sorted(n.client for n, _ in valid) == ["site-A", "site-B", "site-C"]
    assert silent == ({4} if case in ("no reply", "offline") else set())  # not asked to evaluate in this round
    assert len(failed) == 1 and failed[0].startswith("site-D (train)") and reason in failed[0], failed
    print(f"CORPUS | site | {case} | {failed[0]} | round goes on")


# --- trust: what leaves a site, who may serve it ------------------------------------------------

def test_a_site_failure_reaches_the_coordinator_without_paths_or_case_names(tmp_path, federation, task_identity):
    site = copy_tree(federation / "site-A", tmp_path / "site-A")
    manifest = json.loads((site / "manifest.json").read_text())
    first = manifest["samples"][0]["id"]
    (site / "masks" / f"{first}.npy").rename(site / "masks" / "MRN4714-WEBER-EVA_s0.npy")
    config = run_config(federation, tmp_path / "run")
    content = RecordDict({P.CONFIG: ConfigRecord({P.RUN_CONFIG: config.model_dump_json(), "server-round": 1}),
                          P.ARRAYS: to_record(trainable_state(build_model(config.model, seed=0)))})
    context = Context(run_id=1, node_id=5, node_config={"data-dir": str(site), "site-worker": False},
                      state=RecordDict(), run_config={})
    with pytest.raises(SiteFailure) as failure:
        client_app(Message(content, dst_node_id=5, message_type=MessageType.TRAIN), context)
    reason = str(failure.value)
    assert reason.startswith("site-A: ") and "(details in the site's log)" in reason
    assert "MRN4714" not in reason and str(tmp_path) not in reason and "/" not in reason, reason
    print(f"CORPUS | trust | site failure | {reason} | no path or case name")


def test_a_second_node_claiming_a_live_site_is_refused(caplog, task_identity):
    info = RecordDict({P.INFO: ConfigRecord({"client": "site-B", "num-train": 4, "num-val": 1, "num-samples": 5,
                                             "class-names": '["x"]', P.FROZEN_DIGEST: "d"})})
    nodes = [Node(1, "site-A", 4, 1, 5, ["x"], "d"), Node(2, "site-B", 4, 1, 5, ["x"], "d")]
    grid = FakeGrid([1, 2, 66], {66: info})
    config = RunConfig(data=DataConfig(clients=["site-A", "site-B"]))
    after = rejoin(grid, nodes, config, timeout=1.0, ignored=set(), pinned={})
    assert after == nodes, "the impostor took the place of the live site-B"
    assert "node 66 claims client 'site-B': refused" in caplog.text
    print("CORPUS | trust | impostor | node 66 claims client 'site-B': refused | site-B keeps its place")
