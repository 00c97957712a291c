"""A BERT-style word-level tokenizer for the demo data, and the on-disk quickstart assets.

The Hub is unreachable offline, so the quickstart cannot download ``bert-base-uncased``'s
tokenizer. The demo grammar has a closed vocabulary of ~220 words, so a word-level tokenizer
built from that lexicon is exact (no [UNK]), tiny, and instant to build; it keeps BERT's
conventions ([PAD]=0, [CLS] ... [SEP], lowercasing) so a `BertForSequenceClassification` and
every collator that expects a BERT tokenizer work unchanged.

`ensure_demo_assets` materialises tokenizer + CSV files once per machine so configs can refer
to them by path, exactly as they would to a user's own tokenizer folder and data files.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from hf_lightning.demo.sentiment import SPLIT_NAMES, sentiment_lexicon, write_sentiment_files

__all__ = [
    "DEMO_ASSETS_VERSION",
    "DEMO_DIR_ENV",
    "SPECIAL_TOKENS",
    "build_demo_tokenizer",
    "default_demo_dir",
    "ensure_demo_assets",
    "save_demo_assets",
]

# Order fixes the ids: [PAD] must be 0 because BERT's embedding and HF collators assume it.
SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MODEL_MAX_LENGTH = 64
DEMO_DIR_ENV = "HF_LIGHTNING_DEMO_DIR"
# Bump when the generator or tokenizer changes, so cached assets from an older version are rebuilt
# instead of silently training the quickstart on stale data.
DEMO_ASSETS_VERSION = 1
_MANIFEST = "demo_manifest.json"


def build_demo_tokenizer(
    texts_or_vocab: Iterable[str] | Mapping[str, int] | None = None,
) -> PreTrainedTokenizerFast:
    """Return a word-level, BERT-style fast tokenizer.

    `texts_or_vocab` is ``None`` (the demo lexicon), an iterable of texts whose words become the
    vocabulary, or a ready ``{token: id}`` mapping (which must contain the special tokens).

    The backend is a `tokenizers.Tokenizer` wrapped with ``tokenizer_object=``: in transformers 5
    ``BertTokenizerFast(vocab_file=...)`` would load only the special tokens, while this form
    round-trips through ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` unchanged.
    """
    vocab = _vocab(texts_or_vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    # BertNormalizer also strips accents and control characters, so pasted text behaves.
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, strip_accents=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    # The WordPiece decoder joins words with spaces and re-attaches punctuation ("dull ." -> "dull.").
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="right",
        # BERT models take token_type_ids; returning them keeps sentence-pair tasks correct.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _vocab(texts_or_vocab: Iterable[str] | Mapping[str, int] | None) -> dict[str, int]:
    """Turn the argument of `build_demo_tokenizer` into a token -> id mapping."""
    if isinstance(texts_or_vocab, Mapping):
        vocab = {str(token): int(idx) for token, idx in texts_or_vocab.items()}
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"vocab lacks the special token(s) {missing}")
        return vocab
    if texts_or_vocab is None:
        words: Iterable[str] = sentiment_lexicon()
    else:
        if isinstance(texts_or_vocab, str):
            raise TypeError("pass an iterable of texts (e.g. a list), not a single string")
        # Split exactly as the tokenizer will, so the vocabulary covers its own pre-tokenization.
        splitter = pre_tokenizers.BertPreTokenizer()
        normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, strip_accents=True)
        words = {
            w for text in texts_or_vocab for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))
        }
    ordered = list(SPECIAL_TOKENS) + sorted(set(words) - set(SPECIAL_TOKENS))
    return {token: idx for idx, token in enumerate(ordered)}


def save_demo_assets(directory: str | os.PathLike[str], **split_kwargs: int) -> dict[str, str]:
    """Write the tokenizer folder and the three CSV splits into `directory`.

    `split_kwargs` go to `make_sentiment_splits` (n_train, n_validation, n_test, seed).
    Returns ``{"tokenizer": dir, "train": csv, "validation": csv, "test": csv}``.
    """
    out = Path(directory).expanduser()
    tokenizer_dir = out / "tokenizer"
    build_demo_tokenizer().save_pretrained(str(tokenizer_dir))
    paths = {"tokenizer": str(tokenizer_dir), **write_sentiment_files(out, **split_kwargs)}
    manifest = {
        "version": DEMO_ASSETS_VERSION,
        "source": _source_fingerprint(),
        "split_kwargs": split_kwargs,
        "files": _relative(paths, out),
    }
    (out / _MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    return paths


def _source_fingerprint() -> str:
    """Hash of the generator and tokenizer code: a cache built by other code is rebuilt, never reused."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("sentiment.py", "tokenizer.py"):
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:16]


def default_demo_dir() -> Path:
    """Where the quickstart keeps its assets: ``$HF_LIGHTNING_DEMO_DIR`` or ``~/.cache/hf_lightning/demo``."""
    override = os.environ.get(DEMO_DIR_ENV)
    return Path(override).expanduser() if override else Path.home() / ".cache" / "hf_lightning" / "demo"


def ensure_demo_assets(directory: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Create the demo assets in `directory` unless an up-to-date copy is there; return their paths.

    Building happens in a sibling temporary folder that is renamed into place, so a crash or a
    second process starting at the same time never sees a half-written folder: readers either
    find the complete old version or the complete new one.
    """
    target = Path(directory).expanduser() if directory is not None else default_demo_dir()
    existing = _read_complete(target)
    if existing is not None:
        return existing
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-tmp-", dir=target.parent))
    try:
        save_demo_assets(staging)
        if target.exists():
            # Stale or incomplete: move it aside first (rename is atomic), then drop it.
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            try:
                os.replace(target, trash / "old")
            except FileNotFoundError:
                pass  # another process moved it away already
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError:
            # Lost a race: another process renamed its complete copy into place first.
            winner = _read_complete(target)
            if winner is None:
                raise
            return winner
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result = _read_complete(target)
    if result is None:  # pragma: no cover - would mean the filesystem lost our rename
        raise RuntimeError(f"demo assets in {target} are incomplete right after writing them")
    return result


def _read_complete(directory: Path) -> dict[str, str] | None:
    """Paths from `directory`'s manifest if it is current and every file exists, else None."""
    try:
        manifest = json.loads((directory / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = manifest.get("files", {}) if isinstance(manifest, dict) else {}
    if (
        manifest.get("version") != DEMO_ASSETS_VERSION
        or manifest.get("source") != _source_fingerprint()
        or set(files) != {"tokenizer", *SPLIT_NAMES}
    ):
        return None
    paths = {name: str(directory / rel) for name, rel in files.items()}
    if not (Path(paths["tokenizer"]) / "tokenizer.json").is_file():
        return None
    if not all(Path(paths[name]).is_file() for name in SPLIT_NAMES):
        return None
    return paths


def _relative(paths: dict[str, str], root: Path) -> dict[str, str]:
    """Store paths relative to the asset folder, so the folder stays valid after being renamed."""
    return {name: os.path.relpath(path, root) for name, path in paths.items()}
