"""Trials per hour, fused against unfused: ``hpsearch run`` end to end, storage and all.

One random stage of TRIALS trials over the quickstart's space (lr, weight decay, dropout and momentum
vary per member; batch size and optimizer are fusion keys, so a pack holds one of their 9
combinations), the quickstart's model, epochs, patience and median pruner (``--no-pruning``: neither,
so every trial trains all its epochs), on the local executor with WORKERS worker processes. Each configuration runs as a fresh process on a fresh SQLite file:
unfused (``fuse: 1``), then fused at each pack size. Trials per hour = trials / wall time, start-up
included. On a GPU machine pass ``--device cuda``.

With ``--core`` it times the training core alone instead, in this process and one thread: the
quickstart's MLP trained one trial at a time (``train``) against packs (``train_pack``) of trials
with different lr, weight decay and dropout, Adam, batch 16, EPOCHS epochs, no pruning.

Usage: python scripts/bench_fused.py [--trials 512] [--unfused-trials 512] [--fuse 16 64 256] [--workers 2]
                                     [--epochs 40] [--device cpu] [--core] [--no-pruning]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPACE = yaml.safe_load((ROOT / "studies" / "car_price.yaml").read_text())["space"]  # the quickstart's


def study_dict(storage: str, trials: int, fuse: int, workers: int, epochs: int, device: str,
               pruning: bool = True) -> dict[str, Any]:
    study = {
        "name": "bench-fused", "storage": storage, "metric": "val_rmse", "seed": 0,
        "data": {"csv": str(ROOT / "studies" / "data" / "cars93.csv"), "target": "Price", "task": "regression",
                 "drop": ["Model", "Make", "Min.Price", "Max.Price"], "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [64, 32]},
        "train": {"epochs": epochs, "patience": 8, "device": device},
        "space": SPACE,
        "stages": [{"name": "random", "sampler": "random", "trials": trials}],
        "pruner": {"kind": "median", "startup_trials": 5, "warmup_epochs": 5},
        "executor": {"kind": "local", "workers": workers, "fuse": fuse},
    }
    if not pruning:  # every trial trains its epochs, unless it diverges
        del study["pruner"]
        study["train"] = {"epochs": epochs, "device": device}
    return study


def run(trials: int, fuse: int, args: argparse.Namespace) -> float:
    """Wall seconds of ``hpsearch run`` of ``trials`` trials with packs of ``fuse``, as a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study_dict(f"sqlite:///{Path(tmp) / 'bench.db'}", trials, fuse, args.workers,
                                                  args.epochs, args.device, not args.no_pruning)))
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=tmp, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        took = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"hpsearch run with fuse {fuse} failed:\n{done.stderr[-2000:]}")
        return took


def core(args: argparse.Namespace) -> None:
    """Seconds per trial of the training core: alone, and in packs of each size."""
    import random

    import torch

    from hpsearch.train import build_train_config, load_dataset, parse_data_config, train
    from hpsearch.train.fused import train_pack

    torch.set_num_threads(1)
    data = load_dataset(parse_data_config(study_dict("", 1, 1, 1, 1, "cpu")["data"], seed=0))
    rng = random.Random(0)

    def config(seed: int) -> Any:
        knobs = {"device": args.device, "optimizer": "adam", "batch_size": 16, "epochs": args.epochs,
                 "lr": 10 ** rng.uniform(-4, -2), "weight_decay": 10 ** rng.uniform(-6, -2), "dropout": rng.uniform(0, 0.5)}
        return build_train_config({"kind": "mlp", "hidden": [64, 32]}, knobs, task="regression", monitor="val_rmse",
                                  maximize=False, seed=seed)

    print(f"training core, {args.device}, 1 thread: MLP [64, 32], cars93, Adam, batch 16, {args.epochs} epochs\n")
    print("| trials at once | seconds per trial | vs alone |")
    print("| --- | --- | --- |")
    alone_n = 8
    start = time.perf_counter()
    for seed in range(alone_n):
        train(config(seed), data)
    alone = (time.perf_counter() - start) / alone_n
    print(f"| 1 (train) | {alone:.3f} | 1.0x |", flush=True)
    for size in args.fuse:
        configs = [config(seed) for seed in range(size)]
        start = time.perf_counter()
        train_pack(configs, data)
        per_trial = (time.perf_counter() - start) / size
        print(f"| {size} (train_pack) | {per_trial:.4f} | {alone / per_trial:.1f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=512, help="trials of each fused run")
    parser.add_argument("--unfused-trials", type=int, default=512, help="trials of the unfused run")
    parser.add_argument("--fuse", type=int, nargs="+", default=[16, 64, 256], help="pack sizes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--core", action="store_true", help="time the training core alone, in this process")
    parser.add_argument("--no-pruning", action="store_true", help="no pruner and no patience: every trial trains all epochs")
    args = parser.parse_args()
    if args.core:
        core(args)
        return
    stopping = "no pruner, no patience" if args.no_pruning else "patience 8, median pruner"
    print(f"random stage, quickstart space and model, {args.epochs} epochs, {stopping}; "
          f"local executor, {args.workers} workers, device {args.device}\n")
    print("| fuse | trials | wall | trials per hour | vs unfused |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for fuse, trials in ((1, args.unfused_trials), *((f, args.trials) for f in args.fuse)):
        took = run(trials, fuse, args)
        per_hour = trials / took * 3600
        base = base or per_hour
        print(f"| {fuse} | {trials} | {took:.1f} s | {per_hour:,.0f} | {per_hour / base:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
