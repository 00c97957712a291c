"""Data for both front doors: ``HFDataModule`` (LightningCLI) and the loaders the ``Trainer`` facade uses.

Files: ``loading.py`` (raw data from the Hub, local files or the demo set; the tokenizer; the held-out
validation split; offline errors), ``labels.py`` (class names and ids), ``tokenization.py`` (rows ->
model inputs per task), ``collators.py`` (batch padding per task), ``loaders.py`` (``build_dataloader``
and the even-shard evaluation sampler) and ``datamodule.py`` (``HFDataModule`` composing them).
"""

from hf_lightning.data.collators import CollatorName, TagPaddingCollator, build_collator
from hf_lightning.data.datamodule import HFDataModule
from hf_lightning.data.loaders import build_dataloader
from hf_lightning.data.loading import DEMO_DATASET, DEMO_TOKENIZER, FILE_BUILDERS, load_tokenizer
from hf_lightning.data.tokenization import TAGS_KEY

__all__ = [
    "DEMO_DATASET",
    "DEMO_TOKENIZER",
    "FILE_BUILDERS",
    "TAGS_KEY",
    "CollatorName",
    "HFDataModule",
    "TagPaddingCollator",
    "build_collator",
    "build_dataloader",
    "load_tokenizer",
]
