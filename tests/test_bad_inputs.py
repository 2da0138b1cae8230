"""Bad input of every kind, table-driven: one line naming the field, exit 2, no traceback, nothing created.

Each case edits a small valid study (or writes the study file, the data file or a user module
itself), runs the real CLI in a fresh working directory, and checks what a user sees: exit status 2,
exactly one line on stderr that names the field, no traceback, and not a file or folder more than
before (no ``runs/`` database, no half-written output).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tests.helpers import base_study, cli, write_study

Edit = Callable[[dict[str, Any]], None]
Setup = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    field: str  # the text the one line must hold: the field's path, or the file's name
    edit: Edit | None = None  # changes the study dict before it is written
    text: str | bytes | None = None  # the study file as written, instead of the dict
    setup: Setup | None = None  # writes data or modules into the working directory
    command: str = "validate"
    args: tuple[str, ...] = ()


def put(path: str, value: Any) -> Edit:
    """Set ``value`` at the dotted ``path`` (list indices as numbers), creating mappings on the way."""
    def edit(study: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = study
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def drop(path: str) -> Edit:
    def edit(study: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = study
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[int(last) if isinstance(node, list) else last]
    return edit


def both(*edits: Edit) -> Edit:
    def edit(study: dict[str, Any]) -> None:
        for e in edits:
            e(study)
    return edit


def two_stages(second: dict[str, Any]) -> Edit:
    return put("stages", [{"name": "coarse", "sampler": "random", "trials": 2},
                          {"name": "fine", "sampler": "tpe", "trials": 2, **second}])


def study_text(replace: tuple[str, str] = ("", ""), append: str = "") -> str:
    """The base study as YAML, with one text replacement (for keys YAML reads as non-strings) and more lines."""
    import yaml

    text = yaml.safe_dump(base_study(), sort_keys=False)
    if replace[0]:
        assert replace[0] in text
        text = text.replace(replace[0], replace[1], 1)
    return text + append


def csv_edit(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Setup:
    def setup(workdir: Path) -> None:
        path = workdir / "data" / "cars93.csv"
        change(pd.read_csv(path)).to_csv(path, index=False)
    return setup


def with_column(name: str, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[name] = value
        return frame
    return change


def set_at(column: str, row: int, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(float)
        frame.loc[row, column] = value
        return frame
    return change


def module(name: str, source: str) -> Setup:
    def setup(workdir: Path) -> None:
        (workdir / f"{name}.py").write_text(source)
    return setup


def classify(target: str) -> Edit:
    return both(put("data.target", target), put("data.task", "classification"), put("metric", "val_accuracy"))


def user_data(path: str) -> Edit:
    return put("data", {"python": path, "task": "regression"})


_LOADER = "import numpy as np\n\ndef load(seed):\n    x = np.random.default_rng(0).normal(size=(40, 3)).astype('float32')\n    y = x.sum(axis=1)\n"


CASES: list[Case] = [
    # --- the study file itself
    Case("file latin-1", "study.yaml", text="# caf\xe9\n".encode("latin-1") + study_text().encode()),
    Case("file binary", "study.yaml", text=bytes(range(256)) * 4),
    Case("file utf-16", "study.yaml", text=study_text().encode("utf-16")),
    Case("file empty", "study.yaml", text=""),
    Case("file a list", "study.yaml", text="- name: cars\n"),
    Case("file a scalar", "study.yaml", text="cars\n"),
    Case("file bad YAML", "study.yaml", text="name: [cars\n"),
    Case("file tab indent", "study.yaml", text="name: cars\ndata:\n\tcsv: data/cars93.csv\n"),
    Case("file duplicate top key", "'name' is given twice", text=study_text(append="name: other\n")),
    Case("file duplicate nested key", "'kind' is given twice", text=study_text(("model:\n", "model:\n  kind: mlp\n"))),
    Case("file duplicate in flow mapping", "'kind' is given twice", text=study_text(append="pruner: {kind: median, kind: none}\n")),
    Case("file missing", "does not exist", setup=lambda d: (d / "study.yaml").unlink()),
    Case("file is a folder", "study.yaml", setup=lambda d: ((d / "study.yaml").unlink(), (d / "study.yaml").mkdir())),
    # --- keys YAML reads as something other than text
    Case("space key a number", "space.7", text=study_text(("  lr:\n", "  7:\n"))),
    Case("space key null", "space.null", text=study_text(("  lr:\n", "  null:\n"))),
    Case("space key a boolean", "space.true", text=study_text(("  lr:\n", "  yes:\n"))),
    Case("space key a float", "space.1.5", text=study_text(("  lr:\n", "  1.5:\n"))),
    Case("top key a number", "7", text=study_text(append="7: x\n")),
    Case("data key null", "data.null", text=study_text(("  target: Price\n", "  target: Price\n  null: 1\n"))),
    Case("when key a number", "space.momentum.when.1", edit=put("space.momentum.when", {1: ["momentum"]})),
    Case("space key a date", "space.2024-01-01", text=study_text(("  lr:\n", "  2024-01-01:\n"))),
    # --- top level
    Case("name missing", "name", edit=drop("name")),
    Case("name a list", "name", edit=put("name", ["cars"])),
    Case("name a number", "name", edit=put("name", 7)),
    Case("name trailing newline", "name", edit=put("name", "cars\n")),
    Case("name with a space", "name", edit=put("name", "my cars")),
    Case("name with a slash", "name", edit=put("name", "a/b")),
    Case("name starts with a dash", "name", edit=put("name", "-cars")),
    Case("name too long", "name", edit=put("name", "c" * 600)),
    Case("unknown top key", "exeutor", edit=lambda s: s.update(exeutor=s.pop("executor"))),
    Case("metric a list", "metric", edit=put("metric", ["val_rmse"])),
    Case("metric a mapping", "metric", edit=put("metric", {"name": "val_rmse"})),
    Case("metric unknown", "metric", edit=put("metric", "val_rsme")),
    Case("metric of another task", "metric", edit=put("metric", "val_accuracy")),
    Case("direction against the metric", "direction", edit=put("direction", "maximize")),
    Case("direction a list", "direction", edit=put("direction", ["minimize"])),
    Case("direction unknown", "direction", edit=put("direction", "down")),
    Case("seed negative", "seed", edit=put("seed", -1)),
    Case("seed 2**32", "seed", edit=put("seed", 2**32), command="run"),
    Case("seed huge", "seed", edit=put("seed", 10**30), command="run"),
    Case("seed a fraction", "seed", edit=put("seed", 1.5)),
    Case("seed a word", "seed", edit=put("seed", "abc")),
    Case("seed a boolean", "seed", edit=put("seed", True)),
    Case("seed a list", "seed", edit=put("seed", [1])),
    # --- storage (status reads only: it must not create the database either)
    Case("storage a list", "storage", edit=put("storage", ["sqlite:///a.db"])),
    Case("storage empty", "storage", edit=put("storage", "")),
    Case("storage not a URL", "storage", edit=put("storage", "not a url")),
    Case("storage port not a number", "storage", edit=put("storage", "postgresql://u@127.0.0.1:abc/db")),
    Case("storage port not a number, run", "storage", edit=put("storage", "postgresql://u@127.0.0.1:abc/db"),
         command="run"),
    Case("storage port out of range", "storage", edit=put("storage", "postgresql://u@127.0.0.1:99999/db"),
         command="status"),
    Case("storage in memory", "storage", edit=put("storage", "sqlite://"), command="run"),
    Case("storage :memory:", "storage", edit=put("storage", "sqlite:///:memory:"), command="run"),
    Case("storage memory URI", "storage", edit=put("storage", "sqlite:///file::memory:?cache=shared"), command="run"),
    Case("storage unknown driver", "storage", edit=put("storage", "postgresql+nodriver://u@127.0.0.1/db"),
         command="status"),
    Case("storage bad driver argument", "storage", edit=put("storage", "sqlite:///runs/cars.db?timeout=abc"),
         command="run"),
    Case("storage an empty SQLite file", "storage", edit=put("storage", "sqlite:///runs/empty.db"), command="status",
         setup=lambda d: ((d / "runs").mkdir(), (d / "runs" / "empty.db").write_bytes(b""))),
    Case("storage a folder", "storage", edit=put("storage", "sqlite:///runs"), command="status",
         setup=lambda d: (d / "runs").mkdir()),
    Case("storage a text file", "storage", edit=put("storage", "sqlite:///data/cars93.csv"), command="status"),
    Case("storage a text file, run", "storage", edit=put("storage", "sqlite:///data/cars93.csv"), command="run"),
    Case("storage a folder, run", "storage", edit=put("storage", "sqlite:///data"), command="run"),
    Case("storage newline", "storage", edit=put("storage", "sqlite:///runs/cars.db\n")),
    Case("storage newline, run", "storage", edit=put("storage", "sqlite:///runs/cars.db\n"), command="run"),
    # --- data section
    Case("data missing", "data", edit=drop("data")),
    Case("data a list", "data", edit=put("data", ["data/cars93.csv"])),
    Case("data no source", "data", edit=drop("data.csv")),
    Case("data two sources", "data", edit=put("data.builtin", "cars93")),
    Case("data key misspelt", "data.traget", edit=lambda s: s["data"].update(traget=s["data"].pop("target"))),
    Case("data.csv a list", "data.csv", edit=put("data.csv", ["data/cars93.csv"])),
    Case("data.csv missing file", "data.csv", edit=put("data.csv", "data/nope.csv")),
    Case("data.csv a folder", "data.csv", edit=put("data.csv", "data")),
    Case("data.csv not a CSV", "data.csv", edit=put("data.csv", "data/garbage.csv"),
         setup=lambda d: (d / "data" / "garbage.csv").write_bytes(b"\x00\x01\x02" * 50)),
    Case("data.parquet a CSV", "data.parquet", edit=both(drop("data.csv"), put("data.parquet", "data/cars93.csv"))),
    Case("data.target missing", "data.target", edit=drop("data.target")),
    Case("data.target a list", "data.target", edit=put("data.target", ["Price"])),
    Case("data.target not a column", "data.target", edit=put("data.target", "Prise")),
    Case("data.target also dropped", "data.drop", edit=put("data.drop", ["Model", "Price"])),
    Case("data.task unknown", "data.task", edit=put("data.task", "regresion")),
    Case("data.task a list", "data.task", edit=put("data.task", ["regression"])),
    Case("data.task missing", "data.task: is required", edit=drop("data.task")),
    Case("choices 16 and 16.0", "space.batch_size.choices", edit=put("space.batch_size.choices", [16, 16.0])),
    Case("data.drop a number", "data.drop", edit=put("data.drop", 7)),
    Case("data.drop not a column", "data.drop", edit=put("data.drop", ["Nope"])),
    Case("data.val_fraction 0", "data.val_fraction", edit=put("data.val_fraction", 0)),
    Case("data.val_fraction 1.5", "data.val_fraction", edit=put("data.val_fraction", 1.5)),
    Case("data.val_fraction a word", "data.val_fraction", edit=put("data.val_fraction", "a fifth")),
    Case("data.builtin unknown", "data.builtin", edit=put("data", {"builtin": "carz"})),
    Case("data.python not a path", "data.python", edit=user_data("not a path")),
    Case("data.python no module", "data.python", edit=user_data("nomodule_xyz:load")),
    Case("data.python no function", "data.python", edit=user_data("bi_nofn:load"), setup=module("bi_nofn", "x = 1\n")),
    Case("data.python exits at import", "data.python", edit=user_data("bi_exit0:load"), command="run",
         setup=module("bi_exit0", "import sys\nsys.exit(0)\n")),
    Case("data.python exits 3 at import", "data.python", edit=user_data("bi_exit3:load"),
         setup=module("bi_exit3", "raise SystemExit(3)\n")),
    Case("data.python raises at import", "data.python", edit=user_data("bi_raise:load"),
         setup=module("bi_raise", "raise RuntimeError('boom')\n")),
    Case("data.python exits when called", "sys.exit", edit=user_data("bi_exitcall:load"), command="run",
         setup=module("bi_exitcall", "import sys\n\ndef load(seed):\n    sys.exit(0)\n")),
    Case("data.python returns NaN targets", "y", edit=user_data("bi_nan:load"), command="run",
         setup=module("bi_nan", _LOADER + "    y[3] = float('nan')\n    return x, y\n")),
    Case("data.python returns inf features", "x", edit=user_data("bi_inf:load"), command="run",
         setup=module("bi_inf", _LOADER + "    x[2, 1] = float('inf')\n    return x, y\n")),
    Case("data.python returns one class", "y", command="run",
         edit=put("data", {"python": "bi_onecls:load", "task": "classification"}),
         setup=module("bi_onecls", _LOADER + "    return x, np.zeros(40, dtype='int64')\n")),
    # --- the data file's contents
    Case("target holds inf", "data.target", command="run", setup=csv_edit(set_at("Price", 3, float("inf")))),
    Case("target holds -inf", "data.target", command="run", setup=csv_edit(set_at("Price", 0, float("-inf")))),
    Case("feature holds inf", "'Horsepower'", command="run", setup=csv_edit(set_at("Horsepower", 5, float("inf")))),
    Case("one class", "data.target", command="run", edit=classify("Cls"), setup=csv_edit(with_column("Cls", "a"))),
    Case("one class besides missing", "data.target", command="run", edit=classify("Cls"),
         setup=csv_edit(lambda f: f.assign(Cls=["a" if i % 2 else None for i in range(len(f))]))),
    Case("target not numeric", "'Price' must be numeric", command="run",
         setup=csv_edit(lambda f: f.assign(Price="about " + f["Price"].astype(str)))),
    Case("no rows", "0 rows", command="run", setup=csv_edit(lambda f: f.iloc[:0])),
    Case("target all missing", "0 rows", command="run", setup=csv_edit(lambda f: f.assign(Price=None))),
    # --- model
    Case("model a list", "model", edit=put("model", ["mlp"])),
    Case("model.kind a list", "model.kind", edit=put("model.kind", ["mlp"])),
    Case("model.kind a mapping", "model.kind", edit=put("model.kind", {"name": "mlp"})),
    Case("model.kind unknown", "model.kind", edit=put("model.kind", "mpl")),
    Case("model.kind null", "model.kind", edit=put("model.kind", None)),
    Case("model key unknown", "model.hiden", edit=put("model.hiden", [16])),
    Case("model.hidden a word", "hidden", edit=put("model.hidden", "wide")),
    Case("model.hidden negative", "hidden", edit=put("model.hidden", [-4])),
    Case("model.dropout above 1", "dropout", edit=put("model.dropout", 1.5)),
    Case("model cannot read the data", "model.kind", edit=put("model", {"kind": "cnn"})),
    Case("knob in model and space", "space.dropout",
         edit=both(put("model.dropout", 0.1), put("space.dropout", {"type": "float", "low": 0.0, "high": 0.5}))),
    Case("knob in model and train", "train.dropout", edit=both(put("model.dropout", 0.1), put("train.dropout", 0.2))),
    # --- train
    Case("train a list", "train", edit=put("train", ["epochs"])),
    Case("train knob unknown", "train.epoch", edit=put("train.epoch", 3)),
    Case("train.epochs 0", "train.epochs", edit=put("train.epochs", 0)),
    Case("train.epochs a word", "train.epochs", edit=put("train.epochs", "ten")),
    Case("train.device unknown", "train.device", edit=put("train.device", "gpu")),
    Case("train.device a list", "train.device", edit=put("train.device", ["cpu"])),
    Case("train.device cuda:7", "train.device", edit=put("train.device", "cuda:7"), command="run"),
    Case("train.lr negative", "train.lr", edit=both(drop("space.lr"), put("train.lr", -0.1))),
    Case("train.optimizer unknown", "train.optimizer", edit=both(drop("space.optimizer"), drop("space.momentum"),
                                                                put("train.optimizer", "adamm"))),
    Case("train.batch_size 0", "train.batch_size", edit=both(drop("space.batch_size"), put("train.batch_size", 0))),
    Case("knob in train and space", "space.lr", edit=put("train.lr", 0.01)),
    # --- space
    Case("space a list", "space", edit=put("space", ["lr"])),
    Case("param not a mapping", "space.lr", edit=put("space.lr", 0.01)),
    Case("param type missing", "space.lr.type", edit=drop("space.lr.type")),
    Case("param type unknown", "space.lr.type", edit=put("space.lr.type", "double")),
    Case("param type a list", "space.lr.type", edit=put("space.lr.type", ["float"])),
    Case("param key unknown", "space.lr.hgih", edit=put("space.lr.hgih", 1)),
    Case("param low missing", "space.lr.low", edit=drop("space.lr.low")),
    Case("param low a word", "space.lr.low", edit=put("space.lr.low", "small")),
    Case("param low a list", "space.lr.low", edit=put("space.lr.low", [0.1])),
    Case("param low inf", "space.lr.low", text=study_text(("    low: 0.0001\n", "    low: -.inf\n"))),
    Case("param high nan", "space.lr.high", text=study_text(("    high: 0.1\n", "    high: .nan\n"))),
    Case("param low above high", "space.lr", edit=put("space.lr.low", 0.5)),
    Case("param log not a boolean", "space.lr.log", edit=put("space.lr.log", "yes please")),
    Case("param log with low 0", "space.lr.low", edit=put("space.lr.low", 0)),
    Case("param step with log", "space.lr.step", edit=put("space.lr.step", 0.01)),
    Case("param step 0", "space.momentum.step", edit=put("space.momentum.step", 0)),
    Case("param float step does not divide", "space.momentum.step",
         edit=put("space.momentum", {"type": "float", "low": 0.0, "high": 0.5, "step": 0.3, "when": {"optimizer": ["momentum"]}})),
    Case("param float step wider than range", "space.momentum.step", edit=put("space.momentum.step", 1.0)),
    Case("param int step does not fit", "space.batch_size.step",
         edit=put("space.batch_size", {"type": "int", "low": 16, "high": 40, "step": 16})),
    Case("param int step a fraction", "space.batch_size.step",
         edit=put("space.batch_size", {"type": "int", "low": 16, "high": 64, "step": 1.5})),
    Case("choices empty", "space.optimizer.choices", edit=put("space.optimizer.choices", [])),
    Case("choices not a list", "space.optimizer.choices", edit=put("space.optimizer.choices", "sgd")),
    Case("choices hold a mapping", "space.batch_size.choices.1", edit=put("space.batch_size.choices", [16, {"a": 1}])),
    Case("choices duplicated", "space.batch_size.choices", edit=put("space.batch_size.choices", [16, 16])),
    Case("choice unknown to the core", "optimizer", edit=put("space.optimizer.choices", ["sgd", "momentum", "adamm"])),
    Case("choice with a newline", "optimizer", edit=put("space.optimizer.choices", ["sgd", "momentum", "ad\nam"])),
    Case("when names no parameter", "space.momentum.when.optimiser", edit=put("space.momentum.when", {"optimiser": ["momentum"]})),
    Case("when value not a choice", "space.momentum.when.optimizer", edit=put("space.momentum.when", {"optimizer": ["nag"]})),
    Case("when a list", "space.momentum.when", edit=put("space.momentum.when", ["optimizer"])),
    Case("space knob unknown", "space.lrate", edit=lambda s: s["space"].update(lrate=s["space"].pop("lr"))),
    # --- stages
    Case("stages empty", "stages", edit=put("stages", [])),
    Case("stages a mapping", "stages", edit=put("stages", {"name": "coarse"})),
    Case("stage a word", "stages.0", edit=put("stages", ["coarse"])),
    Case("stage key unknown", "stages.0.trails", edit=put("stages.0.trails", 3)),
    Case("stage name missing", "stages.0.name", edit=drop("stages.0.name")),
    Case("stage name trailing newline", "stages.0.name", edit=put("stages.0.name", "coarse\n")),
    Case("stage names repeated", "stages.1.name", edit=two_stages({"name": "coarse"})),
    Case("sampler missing", "stages.0.sampler", edit=drop("stages.0.sampler")),
    Case("sampler unknown", "stages.0.sampler", edit=put("stages.0.sampler", "bayes")),
    Case("sampler a list", "stages.0.sampler", edit=put("stages.0.sampler", ["tpe"])),
    Case("trials missing", "stages.0.trials", edit=drop("stages.0.trials")),
    Case("trials 0", "stages.0.trials", edit=put("stages.0.trials", 0)),
    Case("trials 1e30", "stages.0.trials", edit=put("stages.0.trials", 1e30), command="run"),
    Case("trials above the cap", "at most 1000000", edit=put("stages.0.trials", 1_000_001)),
    Case("trials a fraction", "stages.0.trials", edit=put("stages.0.trials", 2.5)),
    Case("trials a list", "stages.0.trials", edit=put("stages.0.trials", [4])),
    Case("max_failures 0", "stages.0.max_failures", edit=put("stages.0.max_failures", 0)),
    Case("max_failures 1e12", "stages.0.max_failures", edit=put("stages.0.max_failures", 10**12)),
    Case("timeout negative", "stages.0.timeout", edit=put("stages.0.timeout", -5)),
    Case("timeout 1e30", "stages.0.timeout", edit=put("stages.0.timeout", 1e30)),
    Case("timeout a word", "stages.0.timeout", edit=put("stages.0.timeout", "an hour")),
    Case("narrow on the first stage", "stages.0.narrow", edit=put("stages.0.narrow", {"top": 0.5})),
    Case("narrow.top missing", "stages.1.narrow.top", edit=two_stages({"narrow": {"margin": 0.1}})),
    Case("narrow.top 1.5", "stages.1.narrow.top", edit=two_stages({"narrow": {"top": 1.5}})),
    Case("narrow.top a list", "stages.1.narrow.top", edit=two_stages({"narrow": {"top": [0.5]}})),
    Case("narrow.margin negative", "stages.1.narrow.margin", edit=two_stages({"narrow": {"top": 0.5, "margin": -1}})),
    Case("freeze unknown", "stages.1.freeze.0", edit=two_stages({"freeze": ["lrr"]})),
    Case("freeze a mapping", "stages.1.freeze", edit=two_stages({"freeze": [{"lr": 1}]})),
    Case("warm_start negative", "stages.1.warm_start", edit=two_stages({"warm_start": -1})),
    Case("warm_start 1e12", "stages.1.warm_start", edit=two_stages({"warm_start": 10**12})),
    Case("history.recent 0", "stages.0.history.recent", edit=put("stages.0.history", {"recent": 0})),
    Case("history.best 1e12", "stages.0.history.best", edit=put("stages.0.history", {"best": 10**12})),
    Case("history key unknown", "stages.0.history.latest", edit=put("stages.0.history", {"latest": 5})),
    Case("grid for random", "stages.0.grid", edit=put("stages.0.grid", {"lr": 3})),
    Case("grid points missing", "stages.0.grid.momentum",
         edit=both(put("stages.0.sampler", "grid"), put("stages.0.grid", {"lr": 3}))),
    Case("grid points 1e30", "stages.0.grid.lr",
         edit=both(put("stages.0.sampler", "grid"), put("stages.0.grid", {"lr": 1e30, "momentum": 2}))),
    Case("grid too many configurations", "stages.0.grid",
         edit=both(put("stages.0.sampler", "grid"), put("stages.0.grid", {"lr": 10**6, "momentum": 10**6}))),
    Case("shorthand beside stages", "sampler", edit=put("sampler", "random")),
    Case("no stages", "stages", edit=drop("stages")),
    # --- pruner
    Case("pruner unknown", "pruner.kind", edit=put("pruner", "medain")),
    Case("pruner kind a list", "pruner.kind", edit=put("pruner", {"kind": ["median"]})),
    Case("pruner key unknown", "pruner.n_startup", edit=put("pruner", {"kind": "median", "n_startup": 3})),
    Case("pruner min_delta without patient", "pruner.min_delta", edit=put("pruner", {"kind": "median", "min_delta": 0.1})),
    Case("pruner percentile 200", "pruner.percentile", edit=put("pruner", {"kind": "percentile", "percentile": 200})),
    Case("pruner a list", "pruner", edit=put("pruner", ["median"])),
    # --- executor
    Case("executor a list", "executor", edit=put("executor", ["local"])),
    Case("executor kind unknown", "executor.kind", edit=put("executor.kind", "slurmm")),
    Case("executor kind a list", "executor.kind", edit=put("executor.kind", ["local"])),
    Case("workers 0", "executor.workers", edit=put("executor.workers", 0)),
    Case("workers absurd", "executor.workers", edit=put("executor.workers", 10**9), command="run"),
    Case("workers above the cap", "at most 1024", edit=put("executor.workers", 1025)),
    Case("fuse 0", "executor.fuse", edit=put("executor.fuse", 0)),
    Case("fuse absurd", "executor.fuse", edit=put("executor.fuse", 10**6)),
    Case("ray key on local", "executor.address", edit=put("executor.address", "auto")),
    Case("ray address malformed", "executor.address", edit=put("executor", {"kind": "ray", "address": "head:port"})),
    Case("ray gpus negative", "executor.gpus_per_trial", edit=put("executor", {"kind": "ray", "gpus_per_trial": -1})),
    Case("ray cpus 0", "executor.cpus_per_trial", edit=put("executor", {"kind": "ray", "cpus_per_trial": 0})),
    Case("ray dashboard a word", "executor.dashboard", edit=put("executor", {"kind": "ray", "dashboard": "yes"})),
    Case("ray cuda without GPUs per trial", "train.device",
         edit=both(put("executor", {"kind": "ray"}), put("train.device", "cuda"))),
    # --- --set
    Case("--set without =", "--set", args=("--set", "stages.0.trials")),
    Case("--set empty key", "--set", args=("--set", "=5")),
    Case("--set index out of range", "--set stages.4.trials", args=("--set", "stages.4.trials=2")),
    Case("--set into a value", "--set name.x", args=("--set", "name.x=1")),
    Case("--set bad YAML", "--set stages.0.trials", args=("--set", "stages.0.trials=[1")),
    Case("--set duplicate key", "given twice", args=("--set", "executor={kind: local, kind: ray}")),
    Case("--set key a number", "space.7", args=("--set", "space={7: {type: float, low: 0, high: 1}}")),
    Case("--set seed negative", "seed", args=("--set", "seed=-1")),
    Case("--set trials 1e30", "stages.0.trials", args=("--set", "stages.0.trials=1e30"), command="run"),
    Case("--set name newline", "name", args=("--set", 'name="cars\\n"')),
    Case("--set storage in memory", "storage", args=("--set", "storage=sqlite://"), command="run"),
    Case("--set step that does not divide", "space.lr.step",
         args=("--set", "space.lr={type: float, low: 0.0, high: 0.5, step: 0.3}")),
    Case("--set unknown top key", "epochs", args=("--set", "epochs=3")),
    # --- found after the first table: each the sample of a class (a null, a nan, an order, a size, a self-reference)
    Case("narrow.top nan", "stages.1.narrow.top", edit=two_stages({"narrow": {"top": float("nan")}}), command="run"),
    Case("narrow.top huge", "stages.1.narrow.top", edit=two_stages({"narrow": {"top": 10**30}})),
    Case("pruner percentile null", "pruner.percentile", edit=put("pruner", {"kind": "percentile", "percentile": None})),
    Case("pruner startup_trials null", "pruner.startup_trials",
         edit=put("pruner", {"kind": "median", "startup_trials": None}), command="run"),
    Case("pruner threshold lower above upper", "pruner.lower",
         edit=put("pruner", {"kind": "threshold", "lower": 5, "upper": 1}), command="run"),
    Case("pruner hyperband min above max", "pruner.min_resource",
         edit=put("pruner", {"kind": "hyperband", "min_resource": 10, "max_resource": 2}), command="run"),
    Case("storage mysql without a database", "storage", edit=put("storage", "mysql://root@127.0.0.1:3306/"),
         command="status"),
    Case("storage sqlite unknown option", "storage", edit=put("storage", "sqlite:///runs/cars.db?mode=ro"), command="run"),
    Case("file recursive alias", "study.yaml", text=study_text(append="artifacts: &a [*a]\n")),
    Case("--set recursive alias", "--set keep", args=("--set", "keep=&a [*a]")),
    Case("file nested too deep", "study.yaml", text=study_text(append="keep: " + "[" * 5000 + "]" * 5000 + "\n")),
    Case("data duplicate column", "'Price' appears more than once", command="run",
         setup=lambda d: (d / "data" / "cars93.csv").write_text(
             (d / "data" / "cars93.csv").read_text().replace("Max.Price", "Price", 1))),
    Case("when lists no value", "space.momentum.when.optimizer", edit=put("space.momentum.when", {"optimizer": []})),
    Case("train.epochs absurd", "train.epochs", edit=put("train.epochs", 10**12)),
    Case("train.batch_size absurd", "train.batch_size: must be at most", command="run",
         edit=both(drop("space.batch_size"), put("train.batch_size", 10**12))),
    Case("model layers absurd", "model.layers", edit=put("model", {"kind": "mlp", "layers": 10**9, "width": 1})),
    Case("model hidden absurd", "model.hidden", edit=put("model.hidden", [16] * 5000)),
    Case("model.python output of the wrong shape", "model.python", command="run",
         edit=put("model", {"python": "bi_wide:build"}),
         setup=module("bi_wide", "import torch\n\ndef build(inputs):\n"
                                 "    return torch.nn.Linear(inputs.input_shape[0], 5)\n")),
    Case("model.python output not a tensor", "model.python",
         edit=put("model", {"python": "bi_tuple:build"}),
         setup=module("bi_tuple", "import torch\n\nclass Net(torch.nn.Module):\n"
                                  "    def __init__(self, n):\n        super().__init__()\n"
                                  "        self.layer = torch.nn.Linear(n, 1)\n"
                                  "    def forward(self, x):\n        return self.layer(x), x\n\n"
                                  "def build(inputs):\n    return Net(inputs.input_shape[0])\n")),
]

if torch.cuda.is_available():  # cases that need a machine without a GPU
    CASES = [c for c in CASES if c.id != "train.device cuda:7"]
else:
    CASES.append(Case("train.device cuda without a GPU", "train.device", edit=put("train.device", "cuda"), command="run"))
    CASES.append(Case("space device cuda without a GPU", "space.device",
                      edit=put("space.device", {"type": "categorical", "choices": ["cpu", "cuda"]})))


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if "__pycache__" not in p.parts}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_naming_the_field(workdir: Path, case: Case) -> None:
    path = workdir / "study.yaml"
    if case.text is not None:
        if isinstance(case.text, bytes):
            path.write_bytes(case.text)
        else:
            path.write_text(case.text, encoding="utf-8")
    else:
        study = base_study()
        if case.edit is not None:
            case.edit(study)
        write_study(workdir, study)
    if case.setup is not None:
        case.setup(workdir)
    before = _tree(workdir)
    code, out, err = cli(case.command, str(path), *case.args)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("hpsearch: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert case.field in err, err
    assert _tree(workdir) == before, "the command left files behind"


def test_the_table_covers_every_section() -> None:
    assert len(CASES) >= 100
    sections = ("file", "space key", "name", "metric", "seed", "storage", "data", "target", "model", "train",
                "param", "choices", "when", "stage", "trials", "grid", "pruner", "executor", "ray", "--set")
    ids = " ".join(c.id for c in CASES)
    assert all(s in ids for s in sections)


# --- Results that were silently wrong, and side effects of commands that only read


def _tiny_run(workdir: Path, **overrides: Any) -> Path:
    study = base_study(**overrides)
    study["stages"][0]["trials"] = 2
    study["train"]["epochs"] = 2
    path = write_study(workdir, study)
    code, _, err = cli("run", str(path))
    assert code == 0, err
    return path


@pytest.mark.parametrize(("out", "field"), [
    ("made.csv", "is a folder"),
    ("data/cars93.csv/trials.csv", "is a file"),
    ("trials.txt", "unknown file type"),
])
def test_export_to_a_path_that_cannot_be_written_is_one_line(workdir: Path, out: str, field: str) -> None:
    path = _tiny_run(workdir)
    (workdir / "made.csv").mkdir()
    before = _tree(workdir)
    code, _, err = cli("export", str(path), "--out", out)
    assert code == 2, err
    assert err.startswith(f"hpsearch: error: --out {out}") and err.count("\n") == 1 and field in err, err
    assert _tree(workdir) == before


def test_status_on_an_empty_postgresql_database_creates_no_table(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from hpsearch.storage import ENV_VAR, database_url
    from tests.servers import POSTGRES, require_server

    server = make_url(require_server(POSTGRES))
    name = f"t{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(database_url(server.set(database="postgres").render_as_string(hide_password=False)),
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        monkeypatch.setenv(ENV_VAR, url)
        path = write_study(workdir, base_study())
        for command in ("status", "best", "export"):
            code, _, err = cli(command, str(path), *(["--out", "t.csv"] if command == "export" else []))
            assert code == 2 and err.count("\n") == 1 and "holds no Optuna tables" in err, err
        engine = sa.create_engine(database_url(url))
        try:
            assert sa.inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_trial_seeds_stay_within_32_bits_when_the_seed_is_the_largest(workdir: Path) -> None:
    from hpsearch.objective import trial_config
    from hpsearch.spec import load_spec

    path = _tiny_run(workdir, seed=2**32 - 1)
    code, _, err = cli("run", str(path), "--set", "stages.0.trials=3")  # resumes: trial numbers go on
    assert code == 0, err
    spec = load_spec(path)
    assert [trial_config(spec, {}, n).seed for n in range(3)] == [2**32 - 1, 0, 1]


def test_a_range_narrowed_to_its_written_bound_keeps_the_bound_exactly() -> None:
    from hpsearch.narrow import narrow_space
    from hpsearch.results import space_changes
    from hpsearch.space import FloatParam, space_to_raw

    written = (FloatParam("weight_decay", 1e-6, 0.1, log=True), FloatParam("dropout", 0.1, 0.7, step=0.2))
    ranked = [{"weight_decay": v, "dropout": 0.5} for v in (2e-6, 0.09, 1e-5, 0.05)]
    narrowed = narrow_space(written, ranked, top=1.0, margin=0.5)
    assert (narrowed[0].low, narrowed[0].high) == (1e-6, 0.1)
    assert (narrowed[1].low, narrowed[1].high) == (0.3, 0.7)  # on the step grid as written, not 0.30000000000000004
    assert [c.split()[0] for c in space_changes(written, space_to_raw(narrowed))] == ["dropout"]


def test_after_ctrl_c_on_a_terminal_the_table_starts_its_own_line_and_the_bar_stays_gone(workdir: Path) -> None:
    import fcntl
    import os
    import pty
    import select
    import signal
    import struct
    import subprocess
    import sys
    import termios
    import time

    from tests.helpers import process_env, running_trial

    study = base_study()
    study["stages"][0]["trials"] = 6
    study["train"] = {"epochs": 400, "patience": None, "device": "cpu"}  # seconds per trial
    study["space"]["batch_size"]["choices"] = [8]
    path = write_study(workdir, study)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 wide
    process = subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=workdir, env=process_env(),
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""

    def read(seconds: float) -> None:
        nonlocal shown
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if select.select([leader], [], [], 0.1)[0]:
                try:
                    shown += os.read(leader, 1 << 16)
                except OSError:  # the process is gone and its side closed
                    return

    try:
        running_trial(process)
        read(2)
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            read(0.2)
        read(0.5)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    text = shown.decode(errors="replace")
    assert process.returncode == 130, text
    assert "trial/s" in text, "no progress bar was drawn: the test shows nothing"
    assert "\r\nstage " in text, f"the table's header is glued to the bar: {text!r}"
    after = text[text.index("hpsearch: interrupted"):]
    assert "trial/s" not in after and "\r" not in after.rstrip("\r\n"), f"the bar was drawn again: {after!r}"
