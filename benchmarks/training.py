"""Training figures (issue 16 items 2 and 5), on this machine's CPU:

- throughput: the built-in loop fine-tuning resnet20 on an ImageFolder (the digits set written as 32x32 PNGs to
  a temporary folder, augmented), images/s with 0, 1 and 2 DataLoader workers;
- augmentation: resnet20 trained on that ImageFolder, pruned (uniform, l1, ratio 0.5), BN recalibrated and
  fine-tuned, with --augment none / crop / standard; top-1 accuracy on the held-out split (the ImageFolder's
  20% validation split, never trained on);
- ddp: the same `edgeprune build` (digits at 16x16, resnet20 trained 10 epochs, one pruning attempt at ratio
  0.4, fine-tuned 5 epochs) in one process and under `torchrun --nproc-per-node 2` (gloo): the base training and
  the fine-tuning both run under DDP there; accuracy of the shipped ONNX on the digits validation split.

    .venv/bin/python benchmarks/training.py [--parts throughput augment ddp] [--seeds 0]
        [--augment-epochs TRAIN FINETUNE] [--augments none crop standard]

Each part rewrites its own key of benchmarks/results/training.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgeprune.data import load_data
from edgeprune.models import load_model
from edgeprune.pruning.prune import prune_model
from edgeprune.pruning.recover import recalibrate_bn
from edgeprune.training import TrainOptions, accuracy_torch, fit

RESULT = Path(__file__).parent / "results" / "training.json"
SHAPE = (1, 32, 32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", nargs="+", default=["throughput", "augment", "ddp"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--augment-epochs", nargs=2, type=int, default=[6, 3], metavar=("TRAIN", "FINETUNE"))
    parser.add_argument("--augments", nargs="+", default=["none", "crop", "standard"])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the augment part")
    args = parser.parse_args()
    # One intra-op thread: on a shared 2-core machine OpenMP's spinning threads slow small convolutions many-fold
    # whenever the other core is busy; DataLoader workers then have the other core
    torch.set_num_threads(args.threads)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    result["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                         "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    with tempfile.TemporaryDirectory() as tmp:
        folder = digits_folder(Path(tmp) / "digits")
        if "throughput" in args.parts:  # the load average says how busy the shared cores were meanwhile
            result["throughput"] = {"load_average_before": os.getloadavg()[0], "rows": throughput(folder),
                                    "load_average_after": os.getloadavg()[0]}
        if "augment" in args.parts:  # rows of other settings (epochs) stay
            rows = augmentation(folder, args.seeds, *args.augment_epochs, augments=args.augments,
                                workers=args.workers)
            new = {_setting(r) for r in rows}
            result["augment"] = [r for r in result.get("augment", []) if _setting(r) not in new] + rows
    if "ddp" in args.parts:
        result["ddp"] = ddp(args.seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


def digits_folder(root: Path) -> Path:
    """scikit-learn's 1,797 digits as 32x32 grayscale PNGs in class sub-folders (an ImageFolder)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 15.9).astype("uint8")).resize((32, 32), Image.BILINEAR).save(
            root / str(label) / f"{i:04d}.png")
    return root


def throughput(folder: Path, epochs: int = 1) -> list[dict]:
    data = load_data(f"imagefolder:{folder}", SHAPE, seed=0)
    rows = []
    for workers in (0, 1, 2):
        torch.manual_seed(0)
        model = load_model("resnet20", input_shape=SHAPE, num_classes=10).module
        seen = []
        t0 = time.perf_counter()
        fit(model, data, epochs, TrainOptions(device="cpu", workers=workers, augment="standard"), lr=0.03,
            progress=seen.append)
        wall = time.perf_counter() - t0
        rows.append({"workers": workers, "epochs": epochs, "images": epochs * len(data.train),
                     "images_per_s": round(epochs * len(data.train) / wall, 1),
                     "images_per_s_reported": round(seen[-1].images_per_s, 1)})
        print(f"throughput  workers {workers}: {rows[-1]['images_per_s']:8.1f} images/s "
              f"(progress said {rows[-1]['images_per_s_reported']:.1f})", flush=True)
    return rows


def _setting(row: dict) -> tuple:
    return row["seed"], row["augment"], row["train_epochs"], row["finetune_epochs"], row.get("workers", 0)


def augmentation(folder: Path, seeds: list[int], train_epochs: int = 6, finetune_epochs: int = 3,
                 ratio: float = 0.5, augments: tuple[str, ...] = ("none", "crop", "standard"),
                 workers: int = 0) -> list[dict]:
    rows = []
    for seed in seeds:
        data = load_data(f"imagefolder:{folder}", SHAPE, seed=seed)
        for augment in augments:
            options = TrainOptions(device="cpu", augment=augment, workers=workers)
            torch.manual_seed(seed)
            model = load_model("resnet20", input_shape=SHAPE, num_classes=10).module
            fit(model, data, train_epochs, options, seed=seed)
            base = accuracy_torch(model, data)
            pruned = prune_model(model, torch.zeros(1, *SHAPE), ratio, 1, "l1").model
            recalibrate_bn(pruned, data.calibration_batches())
            fit(pruned, data, finetune_epochs, options, lr=0.03, seed=seed + 1)
            rows.append({"seed": seed, "augment": augment, "workers": workers, "train_epochs": train_epochs,
                         "finetune_epochs": finetune_epochs, "ratio": ratio, "held_out": len(data.val),
                         "accuracy_unpruned": round(base, 2), "accuracy_pruned": round(accuracy_torch(pruned, data), 2)})
            print(f"augment {augment:8s} seed {seed}: unpruned {base:6.2f}%  pruned+fine-tuned "
                  f"{rows[-1]['accuracy_pruned']:6.2f}%  ({len(data.val)} held-out images)", flush=True)
    return rows


def ddp(seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        for nproc in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out"
                cmd = ["-m", "edgeprune", "build", "--input-shape", "1,16,16", "--max-accuracy-drop", "50",
                       "--max-iterations", "1",
                       "--finetune-epochs", "5", "--train-device", "cpu", "--seed", str(seed), "--measure-blocks",
                       "2", "--measure-iters", "50", "--quiet", "--out", str(out)]
                launcher = [sys.executable] if nproc == 1 else \
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
                # trained in this run; one OpenMP thread per process in both (torchrun's default), as on 2 cores
                env = {**os.environ, "EDGEPRUNE_CACHE": str(Path(tmp) / "cache"), "OMP_NUM_THREADS": "1"}
                t0 = time.perf_counter()
                done = subprocess.run([*launcher, *cmd], env=env, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if done.returncode != 0:
                    raise SystemExit(f"build with {nproc} process(es) failed: {done.stderr[-1500:]}")
                report = json.loads((out / "report.json").read_text())
            it = report["iterations"][1]
            rows.append({"seed": seed, "processes": nproc, "ratio": it["ratio"],
                         "accuracy_unpruned": round(report["iterations"][0]["accuracy"], 2),
                         "accuracy_finetuned": round(it["accuracy"], 2),
                         "distributed": report["model"]["training"]["recovery"]["distributed"],
                         "wall_s": round(wall, 1)})
            print(f"ddp seed {seed} processes {nproc}: unpruned {rows[-1]['accuracy_unpruned']:6.2f}%  ratio "
                  f"{it['ratio']} fine-tuned {rows[-1]['accuracy_finetuned']:6.2f}%  ({wall:.0f} s)", flush=True)
    return rows


if __name__ == "__main__":
    main()
