"""``Seq2SeqTrainer`` and ``Seq2SeqTrainingArguments``: HF's summarisation/translation front door.

Evaluation and prediction can score the text a model *generates* (``predict_with_generate``), as
ROUGE/BLEU need, instead of its teacher-forced logits. Everything else is the ``Trainer`` facade.
transformers' semantics are kept to the array: ``generation_max_length`` / ``generation_num_beams``
(or ``evaluate(max_length=, num_beams=, ...)``) become ``generate`` keyword arguments, generated ids
and labels are right-padded with the pad token to the generation config's ``max_length`` (HF's
``_pad_tensors_to_max_len``, reused), and ``eval_loss`` is still the teacher-forced loss. transformers'
own argument class is a base of ours (``args.Seq2SeqTrainingArguments``), so ``isinstance(args, transformers.Seq2SeqTrainingArguments)``
holds for third-party callbacks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import transformers
from torch.utils.data import Dataset
from transformers.trainer_utils import PredictionOutput

from hf_lightning.args import Seq2SeqTrainingArguments
from hf_lightning.trainer import Trainer

__all__ = ["Seq2SeqTrainer", "Seq2SeqTrainingArguments"]


class Seq2SeqTrainer(Trainer):
    """Drop-in for ``transformers.Seq2SeqTrainer``: ``Trainer`` plus generation in evaluate/predict."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        generation_config = getattr(self.args, "generation_config", None)
        if generation_config is not None:
            self.model.generation_config = self.load_generation_config(generation_config)

    # transformers' own helpers: neither calls super(), so they work on this class unchanged.
    load_generation_config = staticmethod(transformers.Seq2SeqTrainer.load_generation_config)
    _pad_tensors_to_max_len = transformers.Seq2SeqTrainer._pad_tensors_to_max_len

    def _set_gen_kwargs(self, gen_kwargs: dict[str, Any]) -> None:
        """HF's rule: explicit ``generate`` arguments win, else the ``generation_*`` fields."""
        gen_kwargs = dict(gen_kwargs)
        if gen_kwargs.get("max_length") is None and gen_kwargs.get("max_new_tokens") is None \
                and getattr(self.args, "generation_max_length", None) is not None:
            gen_kwargs["max_length"] = self.args.generation_max_length
        if gen_kwargs.get("num_beams") is None and getattr(self.args, "generation_num_beams", None) is not None:
            gen_kwargs["num_beams"] = self.args.generation_num_beams
        self._gen_kwargs = gen_kwargs

    def evaluate(
        self, eval_dataset: str | Dataset | dict[str, Dataset] | None = None, ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval", **gen_kwargs: Any,
    ) -> dict[str, float]:
        """``Trainer.evaluate``; ``gen_kwargs`` (``max_length``, ``num_beams``, ...) go to ``generate``.

        With several named evaluation sets every set is generated with the same ``gen_kwargs``
        (transformers 5 drops them after the first set's recursion; a bug not copied here).
        """
        datasets = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(datasets, dict):
            out: dict[str, float] = {}
            for name, dataset in datasets.items():
                out.update(self.evaluate(dataset, ignore_keys, f"{metric_key_prefix}_{name}", **gen_kwargs))
            return out
        self._set_gen_kwargs(gen_kwargs)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(
        self, test_dataset: Dataset, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test",
        **gen_kwargs: Any,
    ) -> PredictionOutput:
        """``Trainer.predict``; with ``predict_with_generate`` the predictions are generated ids."""
        self._set_gen_kwargs(gen_kwargs)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
        ignore_keys: list[str] | None = None, **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """Teacher-forced loss, generated ids and labels, padded to the generation length (HF's contract)."""
        if not getattr(self.args, "predict_with_generate", False) or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only=prediction_loss_only,
                                           ignore_keys=ignore_keys)
        from transformers.distributed.fsdp import is_fsdp_managed_module
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        # transformers tests ``"labels" in inputs`` and then crashes on unlabelled data, for which its own
        # DataCollatorForSeq2Seq yields ``labels=None``: such a batch is generated for, without a loss.
        has_labels = inputs.get("labels") is not None
        inputs = self._prepare_inputs(inputs)
        if not gen_kwargs:
            gen_kwargs = dict(getattr(self, "_gen_kwargs", {}))
        gen_kwargs = {k: v for k, v in gen_kwargs.items() if not (k in ("num_beams", "max_length") and v is None)}
        gen_kwargs.setdefault("synced_gpus", is_deepspeed_zero3_enabled() or is_fsdp_managed_module(self.model))
        generation_inputs = {k: v for k, v in inputs.items() if v is not None}
        if "labels" in inputs and "decoder_input_ids" in inputs and inputs["labels"].shape == inputs["decoder_input_ids"].shape:
            # decoder inputs built from the labels would make generate continue the reference
            generation_inputs = {k: v for k, v in inputs.items() if k not in ("decoder_input_ids", "decoder_attention_mask")}
        generated = self.model.generate(**generation_inputs, **gen_kwargs)
        config = self.model.generation_config
        if config._from_model_config:  # HF: later generate calls must not warn about the model config again
            config._from_model_config = False
        config.update(**config._get_default_generation_params(), defaults_only=True)
        generated = self._pad_to_generation_length(generated, config)
        loss = None
        if has_labels:
            with torch.no_grad(), self.compute_loss_context_manager():
                outputs = model(**inputs)
            if self.label_smoother is not None:
                logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
                loss = self.label_smoother.loss_from_logits(logits, inputs["labels"]).detach().mean()
            else:
                loss = (outputs["loss"] if isinstance(outputs, dict) else outputs[0]).detach().mean()
        if self.args.prediction_loss_only:
            return loss, None, None
        labels = self._pad_to_generation_length(inputs["labels"], config) if has_labels else None
        return loss, generated, labels

    def _pad_to_generation_length(self, tensor: torch.Tensor, config: Any) -> torch.Tensor:
        """Right-pad to ``max_length`` (or ``max_new_tokens + 1``), as transformers pads both ids and labels."""
        if tensor.shape[-1] < config.max_length:
            return self._pad_tensors_to_max_len(tensor, config.max_length)
        if config.max_new_tokens is not None and tensor.shape[-1] < config.max_new_tokens + 1:
            return self._pad_tensors_to_max_len(tensor, config.max_new_tokens + 1)
        return tensor

