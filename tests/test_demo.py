"""The offline quickstart data: deterministic, balanced, leak-free, tokenizable, and not trivial.

The last property is the one that makes the quickstart meaningful: if a bag of words could
solve the task, a good quickstart score would say nothing about the transformer or the
training loop. The bag-of-words test pins that down with a real (tiny) logistic regression.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from hf_lightning.demo import (
    LABEL_NAMES,
    build_demo_tokenizer,
    ensure_demo_assets,
    make_sentiment_splits,
    save_demo_assets,
    sentiment_lexicon,
    write_sentiment_files,
)

SMALL = {"n_train": 400, "n_validation": 100, "n_test": 101}


@pytest.fixture(scope="module")
def splits() -> datasets.DatasetDict:
    """The default-size dataset, built once: generation takes well under a second."""
    return make_sentiment_splits()


@pytest.fixture(scope="module")
def tokenizer():
    return build_demo_tokenizer()


def test_same_seed_same_data_other_seed_other_data() -> None:
    first, again, other = (make_sentiment_splits(**SMALL, seed=s) for s in (0, 0, 1))
    for name in ("train", "validation", "test"):
        assert first[name].to_dict() == again[name].to_dict()
    assert first["train"]["text"] != other["train"]["text"]


def test_sizes_columns_and_features(splits: datasets.DatasetDict) -> None:
    assert {name: len(ds) for name, ds in splits.items()} == {"train": 4000, "validation": 500, "test": 500}
    features = splits["train"].features
    assert list(features) == ["text", "label"]
    assert features["text"] == datasets.Value("string")
    assert isinstance(features["label"], datasets.ClassLabel)
    assert features["label"].names == list(LABEL_NAMES) == ["negative", "positive"]


def test_every_split_is_balanced() -> None:
    data = make_sentiment_splits(**SMALL)
    for name, size in (("train", 400), ("validation", 100), ("test", 101)):
        positives = sum(data[name]["label"])
        assert positives in {size // 2, (size + 1) // 2}, name


def test_splits_share_no_sentence(splits: datasets.DatasetDict) -> None:
    def normalised(name: str) -> set[str]:
        # Same rule as the generator's dedup: case and punctuation do not make a new sentence.
        return {
            " ".join(t.lower().replace(",", " ").replace(".", " ").replace("!", " ").split())
            for t in splits[name]["text"]
        }

    train, validation, test = (normalised(n) for n in ("train", "validation", "test"))
    assert len(train) == 4000 and len(validation) == 500 and len(test) == 500  # no duplicates inside a split
    assert not train & validation and not train & test and not validation & test


def test_negation_and_contrast_are_present(splits: datasets.DatasetDict) -> None:
    """The phenomena the task is meant to teach really occur, with both labels."""
    rows = list(zip(splits["train"]["text"], splits["train"]["label"]))
    for cue in (" not ", " never ", " but ", "although ", "i expected it to be"):
        labels = {label for text, label in rows if cue in f" {text.lower()}"}
        assert labels == {0, 1}, cue


def test_tokenizer_layout(tokenizer) -> None:
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == 64
    encoded = tokenizer("Honestly, the acting WASN'T bad!")
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens == ["[CLS]", "honestly", ",", "the", "acting", "wasn", "'", "t", "bad", "!", "[SEP]"]
    assert set(encoded) == {"input_ids", "token_type_ids", "attention_mask"}
    batch = tokenizer(["it was dull", "the plot was not bad at all"], padding=True)
    assert batch["input_ids"][0][-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_no_unknown_tokens_on_generated_text(tokenizer) -> None:
    texts = [t for seed in (0, 7) for t in make_sentiment_splits(1000, 100, 100, seed=seed)["train"]["text"]]
    ids = tokenizer(texts)["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert max(len(row) for row in ids) <= tokenizer.model_max_length


def test_tokenizer_round_trips_through_save_pretrained(tmp_path: Path, tokenizer, splits) -> None:
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = list(splits["test"]["text"][:64])
    assert reloaded(texts, padding=True) == tokenizer(texts, padding=True)
    assert reloaded.pad_token_id == 0 and reloaded.model_max_length == 64
    assert reloaded.get_vocab() == tokenizer.get_vocab()


def test_tokenizer_from_texts_and_from_vocab() -> None:
    from_texts = build_demo_tokenizer(["Hello, world!", "hello again"])
    assert list(from_texts.get_vocab()) != []
    assert from_texts.convert_ids_to_tokens(from_texts("hello, world")["input_ids"]) == [
        "[CLS]",
        "hello",
        ",",
        "world",
        "[SEP]",
    ]
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good"])}
    from_vocab = build_demo_tokenizer(vocab)
    assert from_vocab("good bad")["input_ids"] == [2, 5, 1, 3]
    with pytest.raises(ValueError, match="special"):
        build_demo_tokenizer({"good": 0})


def test_lexicon_is_closed_and_lowercase() -> None:
    lexicon = sentiment_lexicon()
    assert lexicon == sorted(set(lexicon)) and all(w == w.lower() for w in lexicon)
    assert {"not", "never", "but", "although", "wasn", "'", ","} <= set(lexicon)


def test_write_sentiment_files_matches_datasets(tmp_path: Path) -> None:
    paths = write_sentiment_files(tmp_path, **SMALL)
    assert set(paths) == {"train", "validation", "test"}
    data = make_sentiment_splits(**SMALL)
    for name, path in paths.items():
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert [r["text"] for r in rows] == data[name]["text"]
        assert [int(r["label"]) for r in rows] == data[name]["label"]
    loaded = datasets.load_dataset("csv", data_files=paths)
    assert loaded["test"]["text"] == data["test"]["text"]
    with pytest.raises(TypeError, match="unexpected"):
        write_sentiment_files(tmp_path, n_tran=3)


def test_save_and_ensure_demo_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = save_demo_assets(tmp_path / "saved", **SMALL)
    assert set(saved) == {"tokenizer", "train", "validation", "test"}
    assert AutoTokenizer.from_pretrained(saved["tokenizer"]).pad_token_id == 0

    monkeypatch.setenv("HF_LIGHTNING_DEMO_DIR", str(tmp_path / "cache" / "demo"))
    paths = ensure_demo_assets()
    assert Path(paths["train"]).parent == tmp_path / "cache" / "demo"
    assert all(Path(p).exists() for p in paths.values())
    # No staging folders are left behind next to the target.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["demo"]

    # Second call reuses the files instead of regenerating them.
    stamp = Path(paths["train"]).stat().st_mtime_ns
    assert ensure_demo_assets() == paths
    assert Path(paths["train"]).stat().st_mtime_ns == stamp

    # A stale version is rebuilt, and an incomplete folder is repaired.
    manifest = tmp_path / "cache" / "demo" / "demo_manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": -1}))
    Path(paths["test"]).unlink()
    assert ensure_demo_assets(tmp_path / "cache" / "demo") == paths
    assert Path(paths["test"]).is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["demo"]


def _bag_of_words(tokenizer, texts: list[str]) -> torch.Tensor:
    """Binary word-presence features: exactly what a bag-of-words model is allowed to see."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    rows = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor([len(row) for row in ids]))
    cols = torch.tensor([token for row in ids for token in row])
    features = torch.zeros(len(texts), len(tokenizer))
    features[rows, cols] = 1.0
    return features


def test_bag_of_words_cannot_solve_the_task(splits, tokenizer) -> None:
    """A well-fitted unigram logistic regression stays far from what a transformer reaches (>= 0.93)."""
    # One thread: on a busy shared CPU, thread contention makes this tiny fit ~10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_acc, test_acc = _fit_bag_of_words(splits, tokenizer)
    finally:
        torch.set_num_threads(threads)
    assert train_acc > 0.55  # the fit did learn the word polarities it can see ...
    assert test_acc < 0.85  # ... but word order and negation are out of its reach


def _fit_bag_of_words(splits, tokenizer) -> tuple[float, float]:
    """L2 logistic regression on word presence, fitted to convergence; returns (train, test) accuracy.

    Newton's method (IRLS) on ~220 features converges in a few steps and reaches the actual
    optimum, so a low score cannot be blamed on an under-trained baseline.
    """
    x_train, x_test = (
        torch.nn.functional.pad(
            _bag_of_words(tokenizer, list(splits[name]["text"])), (0, 1), value=1.0
        ).double()
        for name in ("train", "test")
    )  # the extra constant column is the bias
    y_train = torch.tensor(splits["train"]["label"], dtype=torch.float64)
    y_test = torch.tensor(splits["test"]["label"], dtype=torch.float64)
    weight = torch.zeros(x_train.shape[1], dtype=torch.float64)
    ridge = 1e-3 * len(y_train) * torch.eye(x_train.shape[1], dtype=torch.float64)
    for _ in range(12):
        prob = torch.sigmoid(x_train @ weight)
        gradient = x_train.T @ (prob - y_train) + ridge @ weight
        hessian = (x_train.T * (prob * (1 - prob))) @ x_train + ridge
        weight = weight - torch.linalg.solve(hessian, gradient)
    train_acc = ((x_train @ weight > 0).double() == y_train).double().mean().item()
    test_acc = ((x_test @ weight > 0).double() == y_test).double().mean().item()
    return train_acc, test_acc
