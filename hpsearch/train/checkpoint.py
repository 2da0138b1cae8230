"""A trained model that predicts on its own: the best epoch's weights, the network's config, the
data's shapes and, for tabular data, the fitted encoding of its rows.

Saved as a self-describing dict of plain data and tensors (as nanoGPT's checkpoints) and read back
with ``torch.load(weights_only=True)``: loading a model file runs no pickled code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import io
from pathlib import Path
import pickle
from typing import IO, TYPE_CHECKING, Any

from hpsearch.errors import DataError
from hpsearch.train.data.encoding import TabularEncoding
from hpsearch.train.models import build_network, config_section, parse_section
from hpsearch.train.models.inputs import ModelInputs

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from hpsearch.train.data import Dataset

FORMAT = "hpsearch-model/1"
PREDICT_ROWS = 4096  # rows per forward pass


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A network's config and weights, with what it takes to read new rows and give answers in the
    target's own units (a regression's mean and std, a classification's class names).

    ``meta`` is the caller's (hpsearch stores the study, stage, trial and metric there).
    """

    model: Any  # the model kind's frozen config, e.g. MlpConfig
    inputs: ModelInputs
    state: Mapping[str, torch.Tensor]  # on the CPU
    encoding: TabularEncoding | None = None
    target_mean: float = 0.0
    target_std: float = 1.0
    classes: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model_config: Any, data: Dataset, network: torch.nn.Module) -> TrainedModel:
        """``network`` as trained on ``data`` (its weights are copied to the CPU)."""
        state = {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}
        return cls(model_config, ModelInputs.of(data), state, data.encoding, data.target_mean, data.target_std,
                   data.classes)

    @property
    def task(self) -> str:
        return self.inputs.task

    def network(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network with its trained weights, in eval mode."""
        import torch

        with torch.random.fork_rng(devices=[]):  # building initializes weights: leave the caller's RNG alone
            net = build_network(self.model, self.inputs)
        net.load_state_dict(self.state)
        return net.to(device).eval()

    def predict(self, x: torch.Tensor, network: torch.nn.Module | None = None) -> torch.Tensor:
        """Answers for encoded inputs ``x``: a regression's values in the target's units (float64,
        ``(rows,)``), a classification's class probabilities (``(rows, classes)``)."""
        import torch

        net = network or self.network()
        device = next(net.parameters()).device
        with torch.no_grad():
            out = torch.cat([net(chunk.to(device)).float().cpu() for chunk in x.split(PREDICT_ROWS)])
        if self.task == "classification":
            return out.softmax(dim=1)
        return out.squeeze(-1).double() * self.target_std + self.target_mean  # as validation_metrics computes

    def predict_frame(self, frame: pd.DataFrame, where: str = "the input") -> pd.DataFrame:
        """One row of answers per row of ``frame``: ``prediction`` (a value, or a class name), and for
        a classification ``p_<class>`` for each class. ``frame`` needs the training file's feature columns."""
        import pandas as pd
        import torch

        if self.encoding is None:
            raise DataError(f"this model reads {self.inputs.kind}, not table rows: predict with TrainedModel.predict")
        frame = frame.rename(columns=str)
        self.encoding.check_columns(list(frame.columns), where)
        answers = self.predict(torch.from_numpy(self.encoding.transform(frame)))
        if self.task != "classification":
            return pd.DataFrame({"prediction": answers.numpy()}, index=frame.index)
        probabilities: np.ndarray = answers.numpy()
        out = pd.DataFrame({"prediction": [self.classes[i] for i in probabilities.argmax(axis=1)]}, index=frame.index)
        for i, name in enumerate(self.classes):
            out[f"p_{name}"] = probabilities[:, i]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": config_section(self.model),
            "inputs": {"input_shape": list(self.inputs.input_shape), "n_outputs": self.inputs.n_outputs,
                       "task": self.inputs.task, "vocab_size": self.inputs.vocab_size},
            "state_dict": dict(self.state),
            "encoding": None if self.encoding is None else self.encoding.to_dict(),
            "target": {"mean": self.target_mean, "std": self.target_std, "classes": list(self.classes)},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TrainedModel:
        if raw.get("format") != FORMAT:
            raise DataError(f"not an hpsearch model file (format {raw.get('format')!r}, expected {FORMAT})")
        i, target = raw["inputs"], raw["target"]
        inputs = ModelInputs(tuple(i["input_shape"]), int(i["n_outputs"]), i["task"], int(i["vocab_size"]))
        encoding = None if raw["encoding"] is None else TabularEncoding.from_dict(raw["encoding"])
        return cls(parse_section(raw["model"]), inputs, raw["state_dict"], encoding, float(target["mean"]),
                   float(target["std"]), tuple(target["classes"]), raw.get("meta", {}))

    def save(self, out: str | Path | IO[bytes]) -> None:
        import torch

        torch.save(self.to_dict(), out)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self.save(buffer)
        return buffer.getvalue()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The weights are pickled as one bytes object. Across a worker's pipe, torch.multiprocessing
        # would otherwise send each tensor as a shared-memory file descriptor, fetched by a socket
        # round trip (about 0.5 ms a tensor: 7 s of the run process's 70 s on 2,048 fused trials).
        import torch

        buffer = io.BytesIO()
        torch.save(dict(self.state), buffer)
        return _unpickle, (self.model, self.inputs, buffer.getvalue(), self.encoding, self.target_mean,
                           self.target_std, self.classes, dict(self.meta))

    @classmethod
    def load(cls, source: str | Path | IO[bytes]) -> TrainedModel:
        import torch

        try:
            raw = torch.load(source, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # torch's errors for a foreign file
            raise DataError(f"{source if isinstance(source, (str, Path)) else 'the file'} is not an hpsearch "
                            f"model file: {str(exc).splitlines()[0]}") from None
        if not isinstance(raw, Mapping):
            raise DataError(f"not an hpsearch model file (it holds a {type(raw).__name__})")
        return cls.from_dict(raw)


def _unpickle(model: Any, inputs: ModelInputs, state: bytes, *rest: Any) -> TrainedModel:
    """A :class:`TrainedModel` as :meth:`TrainedModel.__reduce__` pickled it."""
    import torch

    return TrainedModel(model, inputs, torch.load(io.BytesIO(state), map_location="cpu", weights_only=True), *rest)
