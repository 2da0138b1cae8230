"""Checks the Ray executor on a machine with a GPU; prints what it saw and exits 1 if a check failed.

1. A study on the embedded Ray with 8 workers of gpus_per_trial 0.25 and a user model that holds
   HOG GiB of GPU memory (searched 0..3) and, at HOG 3, asks for far more than any GPU has:
   every trial records the GPU it was given (gpus, CUDA_VISIBLE_DEVICES, device), trials share
   the GPU at once, no trial starts with CUDA memory allocated or reserved (nothing inherited, an
   out-of-memory trial's included), the HOG-3 trials fail with "out of memory" and the stage still
   completes its budget.
2. The same study with gpus_per_trial 0: trials see no GPU and train on the CPU.
3. ``hpsearch run studies/car_price.yaml --set executor.kind=ray --set executor.gpus_per_trial=0.25
   --set executor.workers=8`` from the repository root completes.

Usage (repository root): python scripts/gpu_check.py [--out DIR]   (logs and a JSON summary go to DIR)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
HOG = '''
import torch
from torch import nn

GIB = 1 << 30


class Hog(nn.Module):
    """An MLP holding HOG GiB of GPU memory as a buffer; at HOG 3 its forward asks for 4 TiB."""

    def __init__(self, n_features, n_outputs, hog):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, n_outputs))
        self.hog = hog
        self.register_buffer("ballast", torch.zeros(hog * GIB // 4 if hog else 1))

    def forward(self, x):
        if self.hog >= 3 and x.is_cuda:
            torch.empty(4096 * GIB, dtype=torch.uint8, device=x.device)
        return self.net(x)


def build(inputs, hog=0):
    return Hog(inputs.n_features, inputs.n_outputs, hog)
'''


def study(workers: int, gpus: float, trials: int, storage: str) -> dict[str, Any]:
    return {
        "name": "gpu-check", "storage": f"sqlite:///{storage}", "metric": "val_rmse", "seed": 0,
        "data": {"builtin": "used_cars", "rows": 20000, "task": "regression"},
        "model": {"python": "gpu_hog:build", "hog": 0},
        "train": {"epochs": 15, "batch_size": 256, "device": "auto"},
        "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                  "hog": {"type": "int", "low": 0, "high": 3}},
        "stages": [{"name": "main", "sampler": "random", "trials": trials, "max_failures": trials}],
        "executor": {"kind": "ray", "workers": workers, "gpus_per_trial": gpus},
    }


def run(args: list[str], cwd: Path, log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("w") as out:
        return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT).returncode


def trials(storage: str, name: str) -> list[dict[str, Any]]:
    import optuna

    try:
        found = optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # the run ended before it created the study
        return []
    rows = []
    for t in found:
        rows.append({"number": t.number, "state": t.state.name, "params": t.params,
                     "start": t.datetime_start.timestamp() if t.datetime_start else None,
                     "end": t.datetime_complete.timestamp() if t.datetime_complete else None,
                     **{k: t.user_attrs.get(k) for k in ("worker_pid", "node_id", "gpus", "cuda_visible_devices",
                                                          "device", "cuda_memory_at_start", "cuda_reserved_at_start",
                                                          "fail_reason", "duration_s")}})
    return rows


def most_at_once(rows: list[dict[str, Any]]) -> int:
    """The most trials that ran at the same time."""
    edges = sorted([(r["start"], 1) for r in rows if r["start"] and r["end"]]
                   + [(r["end"], -1) for r in rows if r["start"] and r["end"]])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checks: dict[str, bool] = {}
    summary: dict[str, Any] = {}

    import torch

    summary["torch"] = torch.__version__
    summary["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None

    work = Path(tempfile.mkdtemp(prefix="gpucheck"))
    (work / "gpu_hog.py").write_text(HOG)
    path = work / "study.yaml"

    # 1. eight workers asked for, a quarter GPU each
    path.write_text(yaml.safe_dump(study(workers=8, gpus=0.25, trials=24, storage="shared.db")))
    code = run(["run", str(path)], work, args.out / "gpu_shared.log")
    rows = trials(f"sqlite:///{work}/shared.db", "gpu-check/main")
    oom = [r for r in rows if r["params"].get("hog") == 3]
    rest = [r for r in rows if r["params"].get("hog") != 3]
    summary["shared"] = {"exit": code, "trials": rows, "most_at_once": most_at_once(rows),
                         "workers": len({r["worker_pid"] for r in rows})}
    checks["shared: run exits 0"] = code == 0
    checks["shared: every trial was given GPU 0 (gpus, CUDA_VISIBLE_DEVICES)"] = bool(rows) and all(
        r["gpus"] == ["0"] and r["cuda_visible_devices"] == "0" for r in rows)
    checks["shared: finished trials trained on cuda:0"] = bool(rest) and all(r["device"] == "cuda:0" for r in rest)
    checks["shared: trials shared the GPU at once (>= 2)"] = summary["shared"]["most_at_once"] >= 2
    checks["shared: no trial started with CUDA memory allocated or reserved"] = bool(rows) and all(
        r["cuda_memory_at_start"] == 0 and r["cuda_reserved_at_start"] == 0 for r in rows)
    checks["shared: the HOG-3 trials failed with 'out of memory'"] = bool(oom) and all(
        r["state"] == "FAIL" and "out of memory" in (r["fail_reason"] or "") for r in oom)
    checks["shared: the other trials finished and the budget (24) was met"] = (
        all(r["state"] in ("COMPLETE", "PRUNED") for r in rest) and len(rest) == 24)
    after_oom = [r for r in rows if any(o["worker_pid"] == r["worker_pid"] and o["end"] and r["start"]
                                        and r["start"] >= o["end"] for o in oom)]
    summary["shared"]["trials_after_an_oom_on_the_same_worker"] = len(after_oom)
    checks["shared: a trial ran after an OOM on the same worker, starting at 0 bytes"] = bool(after_oom) and all(
        r["cuda_memory_at_start"] == 0 for r in after_oom)

    # 2. no GPU share: no GPU visible
    path.write_text(yaml.safe_dump({**study(workers=2, gpus=0, trials=4, storage="none.db"),
                                    "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}))
    code = run(["run", str(path)], work, args.out / "gpu_none.log")
    rows = trials(f"sqlite:///{work}/none.db", "gpu-check/main")
    summary["no_gpu"] = {"exit": code, "trials": rows}
    checks["no share: run exits 0, trials on the CPU with CUDA_VISIBLE_DEVICES empty"] = code == 0 and len(rows) == 4 and all(
        r["device"] == "cpu" and r["cuda_visible_devices"] == "" and r["gpus"] == [] for r in rows)

    # 3. the quickstart study on Ray with quarter GPUs, from the repository root
    code = run(["run", "studies/car_price.yaml", "--set", "executor.kind=ray", "--set", "executor.gpus_per_trial=0.25",
                "--set", "executor.workers=8", "--set", f"storage=sqlite:///{work}/car-price.db"],
               ROOT, args.out / "car_price.log")
    summary["car_price"] = {"exit": code}
    checks["car_price: hpsearch run ... executor.kind=ray gpus_per_trial=0.25 workers=8 exits 0"] = code == 0

    (args.out / "summary.json").write_text(json.dumps({"checks": checks, **summary}, indent=1, default=str))
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    shared = summary["shared"]
    print("shared run, by start: trial state hog worker_pid gpus CUDA_VISIBLE_DEVICES device allocated/reserved at start")
    for r in sorted(shared["trials"], key=lambda r: r["start"] or 0):
        print(f"  {r['number']:>3} {r['state']:<8} {r['params'].get('hog')} {r['worker_pid']} {r['gpus']} "
              f"{r['cuda_visible_devices']} {r['device']} {r['cuda_memory_at_start']}/{r['cuda_reserved_at_start']} "
              f"{(r['fail_reason'] or '').splitlines()[0][:60] if r['fail_reason'] else ''}")
    print(f"gpu {summary['gpu']}, torch {summary['torch']}; shared run: {len(shared['trials'])} trials on "
          f"{shared['workers']} workers, at most {shared['most_at_once']} at once")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
