"""Training-core figures on this machine: synthetic data generation/loading and training throughput.

Usage: python scripts/bench_core.py [--rows 1000000] [--epochs 1] [--batch 1024] [--device auto]
Prints one line per figure; nothing is asserted.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from hpsearch.train import build_train_config, load_dataset, parse_data_config, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")

    data_cfg = parse_data_config({"builtin": "used_cars", "rows": args.rows, "task": "regression"}, seed=0)
    start = time.perf_counter()
    data = load_dataset(data_cfg)
    print(f"used_cars rows={args.rows}: generate + preprocess + split {time.perf_counter() - start:.2f} s "
          f"({data.x_train.shape[0]} train rows x {data.n_features} features)")

    for hidden in ([64, 32], [256, 256]):
        config = build_train_config({"kind": "mlp", "hidden": hidden},
                                    {"epochs": args.epochs, "batch_size": args.batch, "device": args.device},
                                    task="regression", monitor="val_rmse", maximize=False, seed=0)
        result = train(config, data)
        print(f"mlp hidden={hidden} batch={args.batch} device={result.device}: "
              f"{result.samples_per_s:,.0f} samples/s, {result.duration_s:.2f} s for {result.epochs_run} epoch(s), "
              f"val_rmse {result.best_metrics['val_rmse']:.0f}, val_r2 {result.best_metrics['val_r2']:.3f}")


if __name__ == "__main__":
    main()
