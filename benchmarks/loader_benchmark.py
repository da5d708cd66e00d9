"""Throughput of the training data loader: samples/s of a torch DataLoader over ClientDataset.

Prepares a synthetic client at the given stored sizes in a temporary folder, then times full
passes of ``DataLoader(ClientDataset(...), batch_size=6, shuffle=True)`` and, for comparison,
decoding the same images from PNG (what a loader reading source files would pay).

    python benchmarks/loader_benchmark.py                       # 1024/256, as SAM trains
    python benchmarks/loader_benchmark.py --image-size 256 --mask-size 64
    python benchmarks/loader_benchmark.py --load-size 256 --load-mask-size 64   # resize on load
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fedfms.data import ClientDataset, make_synthetic_federation
from fedfms.data.manifest import IMAGES_DIR


def time_loader(loader: DataLoader, epochs: int) -> float:
    """Seconds per sample over ``epochs`` full passes (after one warm-up pass)."""
    for _ in loader:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for batch in loader:
            count += batch["image"].shape[0]
    return (time.perf_counter() - start) / count


def time_png_decode(client: Path, tmp: Path) -> float:
    """Seconds per sample to decode the same images from PNG files."""
    paths = []
    for npy in sorted((client / IMAGES_DIR).glob("*.npy")):
        path = tmp / f"{npy.stem}.png"
        Image.fromarray(np.load(npy).transpose(1, 2, 0)).save(path)
        paths.append(path)
    start = time.perf_counter()
    for path in paths:
        torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1).float().div(255)
    return (time.perf_counter() - start) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--mask-size", type=int, default=256)
    parser.add_argument("--load-size", type=int, default=None, help="image side asked on load (resize)")
    parser.add_argument("--load-mask-size", type=int, default=None)
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        (client,) = make_synthetic_federation(
            Path(tmp) / "clients", 1, args.classes, args.image_size, args.mask_size, [args.samples], seed=0
        )
        write_ms = (time.perf_counter() - start) / args.samples * 1e3
        dataset = ClientDataset(client, image_size=args.load_size, mask_size=args.load_mask_size)
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
        per_sample = time_loader(loader, args.epochs)
        png = time_png_decode(client, Path(tmp))
        disk = sum(p.stat().st_size for p in client.rglob("*.npy")) / args.samples / 2**20
        item = dataset[0]
    print(f"stored {args.image_size}/{args.mask_size}, loaded image {tuple(item['image'].shape)} mask "
          f"{tuple(item['mask'].shape)}, batch {args.batch_size}, workers {args.workers}")
    print(f"loader: {1 / per_sample:8.1f} samples/s  {per_sample * 1e3:7.2f} ms/sample")
    print(f"PNG decode of the same images: {png * 1e3:7.2f} ms/sample (for comparison)")
    print(f"synthetic generation + write: {write_ms:7.2f} ms/sample; disk {disk:.2f} MiB/sample")


if __name__ == "__main__":
    main()
