"""Export and compress a trained model: ONNX, TorchScript, dynamic int8 quantization.

Each export is checked where it is made: the exported program is run on the sample inputs and its
outputs compared with the PyTorch model's (``ExportReport.max_abs_diff``), so a silently wrong
export fails here, not in production. Works on any transformers model (or a folder written by
``save_pretrained`` / ``save_hf_pretrained``); the sample inputs fix the input names (``input_ids``,
``attention_mask``, ...), and batch and sequence length stay dynamic in ONNX.

    python -m hf_lightning.export <hf_model_folder> --format onnx --output model.onnx
"""

from __future__ import annotations

import argparse
import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hf_lightning.errors import ConfigError

__all__ = ["ExportReport", "export_onnx", "export_torchscript", "main", "model_size_bytes", "quantize_dynamic_int8"]


@dataclass
class ExportReport:
    """Where the export went and how far its outputs are from the PyTorch model's."""

    path: Path | None
    max_abs_diff: float
    size_bytes: int


def _inputs(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(sample, dict) or not sample:
        raise ConfigError("sample_inputs", "must be a non-empty dict of tensors (a tokenizer's output)",
                          "pass tokenizer(texts, return_tensors='pt', padding=True)")
    return {k: v for k, v in sample.items() if torch.is_tensor(v) and k != "labels"}


def _first_output(outputs: Any) -> torch.Tensor:
    if isinstance(outputs, dict):
        return outputs["logits"] if "logits" in outputs else next(iter(outputs.values()))
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


class _Positional(nn.Module):
    """The model called with positional tensors, returning its first output (what exporters trace)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return _first_output(self.model(**dict(zip(self.names, tensors)), return_dict=True))


def _reference(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return _first_output(model(**inputs, return_dict=True))


def export_onnx(model: nn.Module, sample_inputs: dict[str, torch.Tensor], path: str | Path,
                opset: int = 18, atol: float = 1e-4) -> ExportReport:
    """Write ``model`` as ONNX (dynamic batch and sequence axes) and check it with onnxruntime.

    Raises ``ValueError`` if onnxruntime's outputs differ from PyTorch's by more than ``atol``.
    """
    import onnxruntime

    inputs = _inputs(sample_inputs)
    names = list(inputs)
    model = model.eval()
    wrapper = _Positional(model, names).eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(wrapper, tuple(inputs.values()), str(path), input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    (onnx_out,) = session.run(["logits"], feed)
    diff = float((torch.from_numpy(onnx_out) - _reference(model, inputs)).abs().max())
    if diff > atol:
        raise ValueError(f"ONNX export: outputs differ from PyTorch by {diff:.3g} > atol {atol}")
    return ExportReport(path, diff, path.stat().st_size)


def export_torchscript(model: nn.Module, sample_inputs: dict[str, torch.Tensor], path: str | Path,
                       atol: float = 1e-5) -> ExportReport:
    """Trace ``model`` to TorchScript (``torch.jit.load`` reads it without transformers' classes) and check it."""
    inputs = _inputs(sample_inputs)
    wrapper = _Positional(copy.deepcopy(model).eval(), list(inputs)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, tuple(inputs.values()), strict=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        diff = float((loaded(*inputs.values()) - _reference(model.eval(), inputs)).abs().max())
    if diff > atol:
        raise ValueError(f"TorchScript export: outputs differ from PyTorch by {diff:.3g} > atol {atol}")
    return ExportReport(path, diff, path.stat().st_size)


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the serialized state dict (what a checkpoint of the model weighs)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers hold int8 weights (activations quantized on the fly).

    CPU inference only; typically ~3-4x smaller Linear weights with a small accuracy change, which the
    caller should measure on held-out data (``tests/test_export.py`` does).
    """
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_lightning.export FOLDER --format onnx|torchscript --output FILE``."""
    parser = argparse.ArgumentParser(prog="python -m hf_lightning.export", description=main.__doc__)
    parser.add_argument("folder", help="a save_pretrained folder with model and tokenizer")
    parser.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    parser.add_argument("--output", required=True)
    parser.add_argument("--text", default="an example sentence", help="the sample input to trace and check with")
    ns = parser.parse_args(argv)
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ns.folder)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(ns.folder)
    except ValueError:
        model = AutoModel.from_pretrained(ns.folder)
    sample = dict(tokenizer([ns.text], return_tensors="pt"))
    export = export_onnx if ns.format == "onnx" else export_torchscript
    report = export(model, sample, ns.output)
    print(f"Wrote {report.path} ({report.size_bytes / 1e6:.1f} MB); max |difference| to PyTorch {report.max_abs_diff:.2e}")


if __name__ == "__main__":  # pragma: no cover
    main()
