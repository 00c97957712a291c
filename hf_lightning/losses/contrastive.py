"""Contrastive (SimCLR / SimCSE style) sentence-embedding training: NT-Xent over two views.

Each example is seen twice (two texts, an augmented copy, or the same text under two dropout
masks). The two embeddings of one example are a positive pair; every other embedding in the
batch is a negative. The loss asks each of the 2B embeddings to pick out its partner among the
other 2B - 1 by cosine similarity, sharpened by a temperature.

Because the negatives are the other examples of the *same micro-batch*, this loss does not
decompose over examples: 4 micro-batches of 2 see fewer negatives than one batch of 8. Gradient
accumulation still weights each micro-batch by its example count, but it cannot recreate the
large-batch negatives; raise the micro-batch size instead when you need more of them.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from hf_lightning.errors import ConfigError
from hf_lightning.losses._utils import batch_size_of, check_positive
from hf_lightning.losses.base import ModelLoss

__all__ = [
    "ContrastiveLoss",
    "PoolingName",
    "TwoViewCollator",
    "drop_words",
    "nt_xent_loss",
    "pool_hidden_states",
]

PoolingName = Literal["cls", "mean"]
_POOLINGS = ("cls", "mean")


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Normalised-temperature cross-entropy (InfoNCE) over the 2B anchors of two views.

    z1, z2: (B, D) embeddings of view one and view two; row i of each is the same example.
    For anchor a in the concatenation ``[z1; z2]`` (2B, D) the logits are the cosine similarities
    to the other 2B - 1 rows divided by ``temperature``; the target is the other view's row.
    Returns the mean over the 2B anchors, a float32 scalar (0 for B = 1: no negatives exist).
    """
    temperature = check_positive("temperature", temperature)
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ConfigError(
            "z1/z2",
            f"need two (B, D) tensors of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}",
            "pool each view to (B, D)",
        )
    batch = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=-1)  # (2B, D)
    sim = z @ z.T / temperature  # (2B, 2B)
    # An anchor must not count itself as a candidate: -inf drops it from the softmax exactly.
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    index = torch.arange(batch, device=z.device)
    targets = torch.cat([index + batch, index])  # (2B,) row i pairs with i+B and vice versa
    return F.cross_entropy(sim, targets)


def pool_hidden_states(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str
) -> torch.Tensor:
    """Reduce token states (B, L, H) to one vector per example (B, H).

    ``cls``: the first position (BERT's [CLS]). ``mean``: the average over positions where
    ``attention_mask`` (B, L) is 1, so padding never dilutes short examples.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        if attention_mask is None:
            return hidden.mean(dim=1)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    raise ConfigError("pooling", f"unknown pooling {pooling!r}", f"use one of {', '.join(_POOLINGS)}")


class ContrastiveLoss(ModelLoss):
    """Run the model on both views of a batch and score the pooled embeddings with NT-Xent.

    View one is the batch's plain keys (``input_ids``, ``attention_mask``, ...); view two is the
    keys starting with ``second_view_prefix``, prefix removed (``view2_input_ids`` ->
    ``input_ids``); :class:`TwoViewCollator` builds such batches. ``labels`` are dropped: the pairing
    is the supervision. The model is called with ``output_hidden_states=True`` and the last hidden
    state is pooled, so any ``AutoModel``/``AutoModelFor...`` works and its head is bypassed.
    Returns view one's outputs alongside the loss.
    """

    def __init__(
        self, temperature: float = 0.07, pooling: PoolingName = "cls", second_view_prefix: str = "view2_"
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        if pooling not in _POOLINGS:
            raise ConfigError("pooling", f"unknown pooling {pooling!r}", f"use one of {', '.join(_POOLINGS)}")
        if not isinstance(second_view_prefix, str) or not second_view_prefix:
            raise ConfigError("second_view_prefix", "must be a non-empty string", "use the default 'view2_'")
        self.pooling = pooling
        self.second_view_prefix = second_view_prefix

    def split_views(self, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Split a two-view batch into two model-ready input dicts (labels removed)."""
        prefix = self.second_view_prefix
        first = {k: v for k, v in batch.items() if not k.startswith(prefix) and k != "labels"}
        second = {
            k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix) and k != prefix + "labels"
        }
        if not second:
            raise ConfigError(
                "batch",
                f"no second-view keys starting with {prefix!r} (got {sorted(batch)})",
                "build batches with TwoViewCollator or add the view2_ keys yourself",
            )
        return first, second

    def embed(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        """Run the model on one view; return the pooled (B, H) embedding and the raw outputs."""
        outputs = model(**inputs, output_hidden_states=True)
        hidden_states = getattr(outputs, "hidden_states", None)
        hidden = hidden_states[-1] if hidden_states else getattr(outputs, "last_hidden_state", None)
        if hidden is None:
            raise ConfigError(
                "model",
                f"{type(model).__name__} returned no hidden_states",
                "use an encoder or decoder-only model (encoder-decoder outputs are not supported)",
            )
        return pool_hidden_states(hidden, inputs.get("attention_mask"), self.pooling), outputs

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, Any]:
        first, second = self.split_views(batch)
        z1, outputs = self.embed(model, first)
        z2, _ = self.embed(model, second)
        return nt_xent_loss(z1, z2, self.temperature), outputs

    def count_items(self, batch: dict[str, Any]) -> torch.Tensor:
        """One item per example (pair of views), whatever labels the batch carries."""
        return torch.tensor(batch_size_of(batch))

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, pooling={self.pooling!r}, second_view_prefix={self.second_view_prefix!r}"


def drop_words(text: str, rate: float, rng: random.Random) -> str:
    """Drop each whitespace-separated word with probability ``rate``, always keeping at least one."""
    words = text.split()
    if len(words) <= 1:
        return text
    kept = [w for w in words if rng.random() >= rate]
    if not kept:
        kept = [rng.choice(words)]
    return " ".join(kept)


class TwoViewCollator:
    """Turn text examples into a padded two-view batch for :class:`ContrastiveLoss`.

    An example is a dict with ``text_field`` and, optionally, ``second_text_field``. Without a
    second text, view two is view one with words dropped at ``word_dropout`` rate; the random
    stream is seeded by ``seed`` and the example's ``idx`` (or, lacking one, a CRC of its text),
    so the same example gets the same augmentation in every epoch and on every worker.

    Returns ``input_ids``/``attention_mask`` (and whatever else the tokenizer emits), each (B, L1),
    plus the same keys prefixed with ``second_view_prefix``, each (B, L2). The views are padded
    independently because the model runs on them separately.
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 128,
        text_field: str = "text",
        second_text_field: str = "text_2",
        word_dropout: float = 0.1,
        seed: int = 0,
        second_view_prefix: str = "view2_",
    ) -> None:
        if not callable(tokenizer):
            raise ConfigError(
                "tokenizer",
                f"got {type(tokenizer).__name__}, which cannot tokenize",
                "pass a transformers tokenizer",
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError("max_length", f"must be an integer >= 2, got {max_length!r}", "use e.g. 128")
        if (
            isinstance(word_dropout, bool)
            or not isinstance(word_dropout, int | float)
            or not 0.0 <= word_dropout < 1.0
        ):
            raise ConfigError("word_dropout", f"must be in [0, 1), got {word_dropout!r}", "use e.g. 0.1")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.text_field = text_field
        self.second_text_field = second_text_field
        self.word_dropout = float(word_dropout)
        self.seed = int(seed)
        self.second_view_prefix = second_view_prefix

    def _second_text(self, example: dict[str, Any], text: str) -> str:
        second = example.get(self.second_text_field)
        if second is not None:
            return str(second)
        key = example.get("idx")
        if key is None:
            key = zlib.crc32(text.encode("utf-8"))
        return drop_words(text, self.word_dropout, random.Random(f"{self.seed}:{key}"))

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(encoded)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ConfigError("examples", "the batch is empty", "use a dataset with at least one example")
        firsts: list[str] = []
        seconds: list[str] = []
        for example in examples:
            text = example.get(self.text_field)
            if not isinstance(text, str):
                raise ConfigError(
                    "text_field",
                    f"example has no string {self.text_field!r} (keys: {sorted(example)})",
                    "set text_field to the column that holds the text",
                )
            firsts.append(text)
            seconds.append(self._second_text(example, text))
        batch = self._tokenize(firsts)
        for key, value in self._tokenize(seconds).items():
            batch[self.second_view_prefix + key] = value
        return batch
