"""Labels: class names inferred from the data, labels mapped to ids, word labels aligned to tokens.

The names exist before any tokenisation because LightningCLI links ``num_labels``/``id2label`` into the
model right after ``HFDataModule.__init__``; the ids follow HF's example scripts (run_glue, run_ner) so
a dataset means the same classes here as there.
"""

from __future__ import annotations

from typing import Any

from hf_lightning.errors import ConfigError

__all__ = ["align_word_labels", "has_labels", "infer_names", "label_ids"]


def infer_names(train: Any, column: str, field: str) -> list[str]:
    """Class names of ``column`` in id order: the ClassLabel's names, sorted strings, or 0..max."""
    import datasets

    feature = train.features[column]
    inner = getattr(feature, "feature", feature)  # per-word labels: Sequence(ClassLabel)
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names)
    values = train[column]
    flat = [v for row in values for v in row] if values and isinstance(values[0], list) else list(values)
    flat = [v for v in flat if v is not None and v != -100]
    if not flat:
        raise ConfigError(field, f"column {column!r} has no labels", "check the data")
    if all(isinstance(v, str) for v in flat):
        return sorted(set(flat))
    if any(isinstance(v, float) and not float(v).is_integer() for v in flat):
        raise ConfigError(
            field, f"column {column!r} holds fractional values ({flat[0]!r}, ...): a regression target",
            "HFDataModule trains classifiers; map the values to classes, or train regression through the "
            "Trainer facade (a model with num_labels=1)",
        )
    # Integer classes are the sorted distinct values (as HF's run_glue): 1..5 stars are 5 classes
    # and -1/+1 two; a 0..K-1 column keeps its ids.
    return [str(v) for v in sorted({int(v) for v in flat})]


def label_ids(values: list[Any], names: list[str], field: str = "data.label_column") -> list[int]:
    """Each label's position in ``names``; a missing or unknown label is an error naming ``field``."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in values:
        if v is None:
            raise ConfigError(field, "a row has no label (None)", "label every row of the split, or drop it")
        # An integer is its class's name when one matches (inferred names, or label_names: ["-1", "1"]),
        # else a position (label_names: [neg, pos] over 0/1).
        label = index.get(v) if isinstance(v, str) else index.get(str(int(v)), int(v))
        if label is None or not 0 <= label < len(names):
            raise ConfigError(
                field,
                f"label {v!r} is outside the {len(names)} known labels {names[:10]}",
                "fix the data or pass label_names listing every class",
            )
        out.append(label)
    return out


def align_word_labels(
    word_ids: list[int | None], word_labels: list[Any], names: list[str], field: str = "data.label_column"
) -> list[int]:
    """One label per token: the word's label on its first sub-token, -100 elsewhere (HF's recipe)."""
    ids = label_ids(word_labels, names, field)
    out, previous = [], None
    for word in word_ids:
        out.append(-100 if word is None or word == previous else ids[word])
        previous = word
    return out


def has_labels(split: Any, column: str | None) -> bool:
    """False for a split without the label column, or whose labels are all missing (files merged by
    ``datasets`` get the column filled with None): such a split can be predicted on, not scored."""
    if column is None:
        return True
    if column not in split.column_names:
        return False
    return any(v is not None for v in split[column])
