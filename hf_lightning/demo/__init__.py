"""Offline quickstart assets: a synthetic sentiment dataset and a matching word-level tokenizer.

The Hugging Face Hub is often unreachable (air-gapped clusters, CI), yet a quickstart has to
train something real. These helpers generate everything locally and deterministically; see
`sentiment` for why the task needs a transformer and `tokenizer` for the on-disk layout.
"""

from hf_lightning.demo.sentiment import (
    LABEL_NAMES,
    SPLIT_NAMES,
    generate_example,
    make_sentiment_splits,
    sentiment_lexicon,
    write_sentiment_files,
)
from hf_lightning.demo.tokenizer import (
    DEMO_ASSETS_VERSION,
    DEMO_DIR_ENV,
    SPECIAL_TOKENS,
    build_demo_tokenizer,
    default_demo_dir,
    ensure_demo_assets,
    save_demo_assets,
)

__all__ = [
    "DEMO_ASSETS_VERSION",
    "DEMO_DIR_ENV",
    "LABEL_NAMES",
    "SPECIAL_TOKENS",
    "SPLIT_NAMES",
    "build_demo_tokenizer",
    "default_demo_dir",
    "ensure_demo_assets",
    "generate_example",
    "make_sentiment_splits",
    "save_demo_assets",
    "sentiment_lexicon",
    "write_sentiment_files",
]
