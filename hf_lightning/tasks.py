"""The task vocabulary: which Auto class builds a model, which collator pads its batches.

Kept in one table so that the module, the data module and the CLI agree on what "causal-lm"
means without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["TASKS", "TaskName", "TaskSpec", "infer_task", "task_spec"]

TaskName = Literal[
    "sequence-classification",
    "token-classification",
    "causal-lm",
    "masked-lm",
    "seq2seq-lm",
]


@dataclass(frozen=True)
class TaskSpec:
    """What differs between tasks, and nothing more."""

    auto_class: str
    """Name of the transformers Auto class that builds the model."""
    shift_labels: bool
    """True where the model predicts token t+1 from token t, so label 0 is never scored."""
    has_num_labels: bool
    """True where the head size is the number of classes (linked from the data module)."""


TASKS: dict[str, TaskSpec] = {
    "sequence-classification": TaskSpec("AutoModelForSequenceClassification", False, True),
    "token-classification": TaskSpec("AutoModelForTokenClassification", False, True),
    "causal-lm": TaskSpec("AutoModelForCausalLM", True, False),
    "masked-lm": TaskSpec("AutoModelForMaskedLM", False, False),
    "seq2seq-lm": TaskSpec("AutoModelForSeq2SeqLM", False, False),
}


def task_spec(task: str) -> TaskSpec:
    """Look a task up, failing with the list of valid names."""
    from hf_lightning.errors import ConfigError

    try:
        return TASKS[task]
    except KeyError:
        raise ConfigError("task", f"unknown task {task!r}", f"use one of {', '.join(TASKS)}") from None


def infer_task(model: object) -> str:
    """Guess the task of a model instance from its class (for the HF-style facade, which gets instances)."""
    from transformers.models.auto import modeling_auto as auto

    name = type(model).__name__
    tables = [
        ("causal-lm", auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        ("seq2seq-lm", auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES),
        ("masked-lm", auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES),
        ("token-classification", auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES),
    ]
    for task, mapping in tables:
        if name in set(mapping.values()):
            return task
    lowered = name.lower()
    for marker, task in (("causallm", "causal-lm"), ("lmhead", "causal-lm"), ("maskedlm", "masked-lm"),
                         ("tokenclassification", "token-classification"), ("conditionalgeneration", "seq2seq-lm")):
        if marker in lowered:
            return task
    return "sequence-classification"
