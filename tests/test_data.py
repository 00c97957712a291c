"""HFDataModule: the file formats users bring, label handling, the errors they hit, and the batches.

Data is written per test in the format under test (a few rows); the tokenizer is the offline demo
one. Every user mistake must surface as a ConfigError naming the field (and the column or file),
before any training starts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hf_lightning.data import HFDataModule, TagPaddingCollator
from hf_lightning.errors import ConfigError
from tests.conftest import REPO

ROWS = [
    {"text": "the film was good", "label": "pos"},
    {"text": "not bad at all", "label": "pos"},
    {"text": "dull plot", "label": "neg"},
    {"text": "boring ending and bad acting", "label": "neg"},
    {"text": "great acting", "label": "pos"},
    {"text": "bad film", "label": "neg"},
]


def write(path: Path, rows: list[dict[str, Any]]) -> str:
    """Write ``rows`` in the format named by ``path``'s suffix; return the path as a string."""
    suffix = path.suffix
    if suffix in {".csv", ".tsv"}:
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))  # a JSON array, the other layout the json builder reads
    elif suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif suffix == ".txt":
        path.write_text("".join(r["text"] + "\n" for r in rows))
    else:
        path.write_text("whatever")
    return str(path)


@pytest.fixture
def tokenizer(demo_assets: dict[str, str]) -> str:
    return demo_assets["tokenizer"]


def make(tokenizer: str, train: str | dict[str, Any], **kwargs: Any) -> HFDataModule:
    files = train if isinstance(train, dict) else {"train": train}
    return HFDataModule(dataset="auto", data_files=files, tokenizer=tokenizer, batch_size=4, **kwargs)


# ------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_classification_from_every_file_format(suffix: str, tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / f"train{suffix}", ROWS)
    data = make(tokenizer, {"train": path, "validation": path})
    assert data.label_names == ["neg", "pos"]
    assert len(data.dataset("train")) == len(ROWS) and len(data.dataset("validation")) == len(ROWS)
    batch = next(iter(data.val_dataloader()))  # evaluation order is the file order
    assert batch["labels"].tolist() == [1, 1, 0, 0]
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 4
    with pytest.raises(ConfigError, match="data.test_split"):  # test/predict asked for a split that is not there
        data.test_dataloader()


def test_plain_text_file_for_causal_lm(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "corpus.txt", ROWS)
    data = make(tokenizer, path, task="causal-lm", validation_size=2)
    assert data.num_labels is None and data.id2label is None
    assert len(data.dataset("train")) == 4 and len(data.dataset("validation")) == 2
    batch = next(iter(data.train_dataloader()))
    pad = batch["attention_mask"] == 0
    assert (
        torch.equal(batch["labels"][~pad], batch["input_ids"][~pad]) and (batch["labels"][pad] == -100).all()
    )


def test_hub_dataset_offline_fails_at_once(tokenizer: str) -> None:
    data = HFDataModule(dataset="glue", dataset_config="sst2", tokenizer=tokenizer)
    with pytest.raises(ConfigError, match="offline") as info:
        _ = data.num_labels
    assert info.value.field == "data.dataset"


# ------------------------------------------------------------------------------------ labels
def test_string_labels_become_ids_in_sorted_order(tmp_path: Path, tokenizer: str) -> None:
    data = make(tokenizer, write(tmp_path / "t.jsonl", ROWS))
    assert data.num_labels == 2 and data.id2label == {0: "neg", 1: "pos"}
    assert data.dataset("train")["labels"] == [1, 1, 0, 0, 1, 0]


def test_label_names_fix_the_order(tmp_path: Path, tokenizer: str) -> None:
    data = make(tokenizer, write(tmp_path / "t.jsonl", ROWS), label_names=["pos", "neg", "mixed"])
    assert data.num_labels == 3 and data.id2label == {0: "pos", 1: "neg", 2: "mixed"}
    assert data.dataset("train")["labels"] == [0, 0, 1, 1, 0, 1]


def test_integer_labels_are_their_sorted_distinct_values(tmp_path: Path, tokenizer: str) -> None:
    """As HF's run_glue: 0..K-1 keep their ids, 1..5 stars are five classes, -1/+1 two."""
    cases = {"zero-based": ([0, 1, 2, 0, 1, 2], ["0", "1", "2"], [0, 1, 2, 0, 1, 2]),
             "stars": ([1, 5, 3, 2, 4, 5], ["1", "2", "3", "4", "5"], [0, 4, 2, 1, 3, 4]),
             "signed": ([-1, 1, 1, -1, 1, -1], ["-1", "1"], [0, 1, 1, 0, 1, 0])}
    for name, (values, names, ids) in cases.items():
        rows = [{"text": r["text"], "label": v} for r, v in zip(ROWS, values)]
        data = make(tokenizer, write(tmp_path / f"{name}.csv", rows))
        assert data.label_names == names, name
        assert data.dataset("train")["labels"] == ids, name
    # Given names that are the values map by value; other names map 0/1 by position.
    rows = [{"text": r["text"], "label": v} for r, v in zip(ROWS, [-1, 1, 1, -1, 1, -1])]
    assert make(tokenizer, write(tmp_path / "s.jsonl", rows), label_names=["-1", "1"]).dataset("train")["labels"] \
        == [0, 1, 1, 0, 1, 0]


def test_fractional_labels_are_refused_as_regression(tmp_path: Path, tokenizer: str) -> None:
    rows = [{"text": r["text"], "label": 0.4 + i} for i, r in enumerate(ROWS)]
    with pytest.raises(ConfigError, match="regression") as info:
        make(tokenizer, write(tmp_path / "t.jsonl", rows)).setup()
    assert info.value.field == "data.label_column"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_test_split_without_labels_is_predicted_on(suffix: str, tmp_path: Path, tokenizer: str) -> None:
    """A test file without the label column (or with it empty, as datasets merges it) tokenises without labels."""
    test_rows = [{"text": r["text"]} for r in ROWS[:3]]
    files = {"train": write(tmp_path / f"train{suffix}", ROWS), "test": write(tmp_path / f"test{suffix}", test_rows)}
    data = make(tokenizer, files)
    assert "labels" not in data.dataset("test").column_names
    batch = next(iter(data.predict_dataloader()))
    assert "labels" not in batch and batch["input_ids"].shape[0] == 3


def test_validation_without_labels_and_missing_test_split_are_named(tmp_path: Path, tokenizer: str) -> None:
    files = {"train": write(tmp_path / "train.jsonl", ROWS),
             "validation": write(tmp_path / "val.jsonl", [{"text": "good"}, {"text": "bad"}])}
    with pytest.raises(ConfigError) as info:
        make(tokenizer, files).setup()
    assert info.value.field == "data.validation_split" and "no labels" in info.value.problem
    with pytest.raises(ConfigError) as info:
        make(tokenizer, write(tmp_path / "t.jsonl", ROWS)).predict_dataloader()
    assert info.value.field == "data.test_split"


def test_class_label_names_come_from_the_dataset_features(tmp_path: Path, tokenizer: str) -> None:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["bad", "good"])}
    )
    path = tmp_path / "t.parquet"
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).to_parquet(str(path))
    assert make(tokenizer, str(path)).id2label == {0: "bad", 1: "good"}


@pytest.mark.parametrize(
    ("bad", "names"),
    [(5, ["a", "b"]), (None, None), ("meh", ["neg", "pos"])],
    ids=["int", "missing", "string"],
)
def test_label_outside_the_known_labels(
    bad: Any, names: list[str] | None, tmp_path: Path, tokenizer: str
) -> None:
    good = "pos" if isinstance(bad, str) else 0
    rows = [{"text": "good film", "label": good}, {"text": "bad", "label": bad}]
    data = make(tokenizer, write(tmp_path / "t.jsonl", rows), label_names=names)
    with pytest.raises(ConfigError) as info:
        data.setup()
    assert info.value.field == "data.label_column" and repr(bad) in info.value.problem


# ------------------------------------------------------------------------------------ user errors
@pytest.mark.parametrize(
    ("kwargs", "field", "column"),
    [
        ({"text_column": "sentence"}, "data.text_column", "sentence"),
        ({"label_column": "sentiment"}, "data.label_column", "sentiment"),
        ({"text_column": ["text", "text_b"]}, "data.text_column", "text_b"),
    ],
)
def test_missing_column_names_the_column(
    kwargs: dict[str, Any], field: str, column: str, tmp_path: Path, tokenizer: str
) -> None:
    data = make(tokenizer, write(tmp_path / "t.csv", ROWS), **kwargs)
    with pytest.raises(ConfigError) as info:
        data.num_labels if field == "data.label_column" else data.setup()
    assert info.value.field == field and repr(column) in info.value.problem
    assert "text" in info.value.fix, "the fix lists the columns that exist"


def test_missing_target_column_for_seq2seq(task_files: dict[str, dict[str, str]], tokenizer: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(tokenizer, task_files["s2s"], task="seq2seq-lm", target_column="abstract").setup()
    assert info.value.field == "data.target_column" and "'abstract'" in info.value.problem
    with pytest.raises(ConfigError, match="target_column"):
        make(tokenizer, task_files["s2s"], task="seq2seq-lm").setup()


@pytest.mark.parametrize("name", ["header_only.csv", "nothing.jsonl"])
def test_empty_dataset(name: str, tmp_path: Path, tokenizer: str) -> None:
    path = tmp_path / name
    path.write_text("text,label\n" if name.endswith(".csv") else "")
    with pytest.raises(ConfigError, match="no rows|is empty"):
        make(tokenizer, str(path)).setup()


def test_empty_training_split_after_filtering_is_refused(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(ConfigError, match="empty") as info:
        make(tokenizer, path, max_train_samples=0).setup()
    assert info.value.field == "data.train_split"


def test_unsupported_file_format(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "train.xlsx", ROWS)
    with pytest.raises(ConfigError, match="unsupported file format '.xlsx'") as info:
        make(tokenizer, path).setup()
    assert info.value.field == "data.data_files.train" and ".parquet" in info.value.fix


def test_missing_file(tmp_path: Path, tokenizer: str) -> None:
    with pytest.raises(ConfigError, match="does not exist") as info:
        make(tokenizer, {"train": str(tmp_path / "nope.csv")}).setup()
    assert info.value.field == "data.data_files.train" and "nope.csv" in info.value.problem


def test_missing_split(tmp_path: Path, tokenizer: str) -> None:
    with pytest.raises(ConfigError, match="'training' not found") as info:
        make(tokenizer, write(tmp_path / "t.csv", ROWS), train_split="training").setup()
    assert info.value.field == "data.train_split"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"validation_size": 0.0}, "data.validation_size"),
        ({"validation_size": 2.5}, "data.validation_size"),
        ({"collator": "two_view", "task": "token-classification"}, "data.collator"),
        ({"tag_column": "tags", "task": "token-classification"}, "data.tag_column"),
        ({"collator": "two_view", "word_dropout": 1.5}, "data.word_dropout"),
    ],
)
def test_bad_arguments_fail_in_init(
    kwargs: dict[str, Any], field: str, tmp_path: Path, tokenizer: str
) -> None:
    with pytest.raises(ConfigError) as info:
        HFDataModule(**{"tokenizer": tokenizer, **kwargs})
    assert info.value.field == field


# ------------------------------------------------------------------------------------ splits
def test_validation_size_holds_out_rows_reproducibly(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "t.jsonl", ROWS * 5)
    first, second = (make(tokenizer, path, validation_size=0.2) for _ in range(2))
    assert len(first.raw["train"]) == 24 and len(first.raw["validation"]) == 6
    assert first.raw["validation"]["text"] == second.raw["validation"]["text"], "same seed, same rows"
    other = make(tokenizer, path, validation_size=0.2, seed=7)
    assert other.raw["validation"]["text"] != first.raw["validation"]["text"]


def test_validation_size_refuses_data_that_has_a_validation_split(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "t.jsonl", ROWS)
    data = make(tokenizer, {"train": path, "validation": path}, validation_size=0.5)
    with pytest.raises(ConfigError, match="already has a 'validation' split"):
        data.setup()


def test_null_splits_are_skipped(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "t.jsonl", ROWS)
    data = make(
        tokenizer, {"train": path, "validation": path, "test": path}, test_split=None, validation_split=None
    )
    assert data.dataset("test") is None and data.val_dataloader() == []


def test_max_samples_keep_the_first_rows(tmp_path: Path, tokenizer: str) -> None:
    path = write(tmp_path / "t.jsonl", ROWS)
    data = make(tokenizer, {"train": path, "validation": path}, max_train_samples=3, max_eval_samples=2)
    assert len(data.dataset("train")) == 3 and len(data.dataset("validation")) == 2


# ------------------------------------------------------------------------------------ batches
def test_group_by_length_cuts_padding(tmp_path: Path, tokenizer: str) -> None:
    words = "the film was good not bad great dull acting plot".split()
    rows = [{"text": " ".join(words[: 1 + (i * 7) % 10] * (1 + i % 4)), "label": "pos"} for i in range(64)]
    path = write(tmp_path / "t.jsonl", rows)

    def padding(group: bool) -> tuple[int, int]:
        data = make(tokenizer, path, group_by_length=group, max_length=64)
        batches = list(data.train_dataloader())
        longest = max(len(ids) for ids in data.dataset("train")["input_ids"])
        return sum(int((b["attention_mask"] == 0).sum()) for b in batches), batches[0]["input_ids"].shape[
            1
        ] == longest

    grouped, longest_first = padding(True)
    plain, _ = padding(False)
    assert grouped < plain / 2 and longest_first, (grouped, plain)


def test_linked_properties(tmp_path: Path, tokenizer: str) -> None:
    from transformers import AutoTokenizer

    data = make(tokenizer, write(tmp_path / "t.csv", ROWS))
    reference = AutoTokenizer.from_pretrained(tokenizer)
    assert (data.num_labels, data.id2label) == (2, {0: "neg", 1: "pos"})
    assert data.vocab_size == len(reference) and data.pad_token_id == reference.pad_token_id == 0


def test_tokenizer_without_pad_token_pads_with_eos_or_unk(tmp_path: Path, tokenizer: str) -> None:
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tokenizer)
    reference.pad_token = None
    reference.save_pretrained(tmp_path / "tok")
    assert AutoTokenizer.from_pretrained(tmp_path / "tok").pad_token is None
    data = make(str(tmp_path / "tok"), write(tmp_path / "t.txt", ROWS), task="causal-lm")
    assert data.pad_token_id == reference.unk_token_id  # no EOS in a BERT-style vocabulary


def test_token_classification_aligns_word_labels(
    task_files: dict[str, dict[str, str]], tokenizer: str
) -> None:
    data = make(
        tokenizer, task_files["ner"], task="token-classification", text_column="tokens", label_column="tags"
    )
    assert data.label_names == ["B", "I", "O"]
    row = data.dataset("train")[0]
    assert row["labels"][0] == -100 and row["labels"][-1] == -100, "[CLS] and [SEP] are not scored"
    # Row 0's word k is tagged ["O", "B", "I"][k % 3]; the demo tokenizer keeps one token per word.
    expected = [data.label_names.index(["O", "B", "I"][k % 3]) for k in range(len(row["labels"]) - 2)]
    assert row["labels"][1:-1] == expected


def test_seq2seq_targets_become_labels(task_files: dict[str, dict[str, str]], tokenizer: str) -> None:
    data = make(tokenizer, task_files["s2s"], task="seq2seq-lm", target_column="summary")
    summary = json.loads(Path(task_files["s2s"]["train"]).read_text().splitlines()[0])["summary"]
    assert data.dataset("train")[0]["labels"] == data.tokenizer(text_target=summary)["input_ids"]
    batch = next(iter(data.train_dataloader()))
    lengths = [len(ids) for ids in data.dataset("train")["labels"]]
    assert batch["labels"].shape[0] == 4 and batch["labels"].shape[1] <= max(lengths)
    assert data.num_labels is None


# ------------------------------------------------------------------------------------ two views / tags
def test_two_view_keeps_raw_text_and_batches_two_views(tmp_path: Path, tokenizer: str) -> None:
    from hf_lightning.losses import TwoViewCollator

    data = make(tokenizer, write(tmp_path / "t.jsonl", ROWS), collator="two_view", word_dropout=0.5)
    assert isinstance(data.collator, TwoViewCollator) and data.num_labels is None
    assert data.dataset("train").column_names == ["text"]
    batch = next(iter(data.train_dataloader()))
    assert {"input_ids", "attention_mask", "view2_input_ids", "view2_attention_mask"} <= set(batch)
    assert "labels" not in batch
    assert batch["view2_attention_mask"].sum() < batch["attention_mask"].sum()


def test_two_view_uses_a_second_text_column_as_view_two(tmp_path: Path, tokenizer: str) -> None:
    rows = [{"text": r["text"], "paraphrase": "great"} for r in ROWS]
    data = make(
        tokenizer, write(tmp_path / "t.jsonl", rows), collator="two_view", text_column=["text", "paraphrase"]
    )
    batch = next(iter(data.train_dataloader()))
    great = data.tokenizer.convert_tokens_to_ids("great")
    assert (batch["view2_input_ids"][:, 1] == great).all() and batch["view2_input_ids"].shape[1] == 3


def test_two_view_group_by_length_uses_word_counts(tmp_path: Path, tokenizer: str) -> None:
    data = make(tokenizer, write(tmp_path / "t.jsonl", ROWS), collator="two_view", group_by_length=True)
    assert data._lengths() == [len(r["text"].split()) for r in ROWS]
    assert len(list(data.train_dataloader())) == 2


def multitask_rows() -> list[dict[str, Any]]:
    return [
        json.loads(line) for line in (REPO / "configs/data/tiny_multitask.jsonl").read_text().splitlines()
    ]


def test_tag_column_carries_sentence_labels_and_word_tags(tmp_path: Path) -> None:
    tokenizer = str(REPO / "configs/data/word_tokenizer")
    data = make(
        tokenizer, write(tmp_path / "m.jsonl", multitask_rows()[:8]), text_column="tokens", tag_column="tags"
    )
    assert data.label_names == ["negative", "positive"] and data.tag_names == ["B-LOC", "I-LOC", "O"]
    row = data.dataset("train")[0]  # "We loved ... of Gull Island and the ferry from Port Ellis ."
    assert row["labels"] == 1
    assert row["ner_labels"] == [-100, 2, 2, 2, 2, 2, 2, 0, 1, 2, 2, 2, 2, 0, 1, 2, -100]
    batch = next(iter(data.train_dataloader()))
    assert batch["labels"].shape == (4,) and batch["ner_labels"].shape == batch["input_ids"].shape
    assert (batch["ner_labels"][batch["attention_mask"] == 0] == -100).all()


def test_tag_column_missing(tmp_path: Path) -> None:
    tokenizer = str(REPO / "configs/data/word_tokenizer")
    data = make(
        tokenizer, write(tmp_path / "m.jsonl", multitask_rows()[:4]), text_column="tokens", tag_column="ner"
    )
    with pytest.raises(ConfigError) as info:
        _ = data.tag_names
    assert info.value.field == "data.tag_column" and "'ner'" in info.value.problem


def test_tag_padding_collator_pads_tags_to_the_input_length(tokenizer: str) -> None:
    from transformers import AutoTokenizer

    collate = TagPaddingCollator(AutoTokenizer.from_pretrained(tokenizer))
    batch = collate(
        [
            {"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1], "labels": 0, "ner_labels": [-100, 1, -100]},
            {"input_ids": [2, 3], "attention_mask": [1, 1], "labels": 1, "ner_labels": [-100, -100]},
        ]
    )
    assert batch["ner_labels"].tolist() == [[-100, 1, -100], [-100, -100, -100]]
    assert batch["labels"].tolist() == [0, 1] and batch["input_ids"].shape == (2, 3)


def test_the_tokenisation_fingerprint_ignores_the_attached_trainer(tmp_path: Path, tokenizer: str) -> None:
    """datasets fingerprints ``map(self._tokenize)`` by pickling the data module: the trainer (and the
    model and optimizer in it) must not be part of it, or every run pays for pickling them (1.7 s of
    the quickstart) and the fingerprint changes with the model."""
    import pickle

    import lightning.pytorch as pl
    from datasets.fingerprint import Hasher

    from tests.conftest import tiny_bert_classifier

    dm = make(tokenizer, write(tmp_path / "train.csv", ROWS))
    dm.setup()
    alone = Hasher.hash(dm._tokenize)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(tiny_bert_classifier(len(dm.tokenizer)))
    dm.trainer = trainer
    assert Hasher.hash(dm._tokenize) == alone
    assert pickle.loads(pickle.dumps(dm)).trainer is None and dm.trainer is trainer
