"""Token classification (NER) in the style of Hugging Face's ``run_ner.py`` (written for these tests).

Runs under ``transformers.Trainer`` as written; ``tests/test_example_scripts.py`` changes the one
import line below to ``hf_lightning`` and compares what both runs leave in ``output_dir``.
"""

import logging  # noqa: I001  (the Trainer import stays one line of its own: the one a user changes)
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification, HfArgumentParser, set_seed
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or a model identifier."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A json lines file with tokens and ner_tags columns."})
    validation_file: str = field(metadata={"help": "A json lines file with tokens and ner_tags columns."})
    max_seq_length: int = field(default=64, metadata={"help": "Longer inputs are truncated."})
    label_all_tokens: bool = field(default=False, metadata={"help": "Label every sub-token, not only the first."})


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stdout)])
    set_seed(training_args.seed)

    raw = datasets.load_dataset("json", data_files={"train": data_args.train_file,
                                                   "validation": data_args.validation_file})
    label_list = sorted({tag for tags in raw["train"]["ner_tags"] for tag in tags})
    label_to_id = {label: i for i, label in enumerate(label_list)}
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=len(label_list),
                                        label2id=label_to_id, id2label=dict(enumerate(label_list)))
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForTokenClassification.from_pretrained(model_args.model_name_or_path, config=config)

    def tokenize_and_align_labels(examples):
        tokenized = tokenizer(examples["tokens"], truncation=True, max_length=data_args.max_seq_length,
                              is_split_into_words=True)
        labels = []
        for i, tags in enumerate(examples["ner_tags"]):
            previous, label_ids = None, []
            for word_idx in tokenized.word_ids(batch_index=i):
                if word_idx is None:  # special tokens are not scored
                    label_ids.append(-100)
                elif word_idx != previous:
                    label_ids.append(label_to_id[tags[word_idx]])
                else:
                    label_ids.append(label_to_id[tags[word_idx]] if data_args.label_all_tokens else -100)
                previous = word_idx
            labels.append(label_ids)
        tokenized["labels"] = labels
        return tokenized

    columns = raw["train"].column_names
    train_dataset = raw["train"].map(tokenize_and_align_labels, batched=True, remove_columns=columns)
    eval_dataset = raw["validation"].map(tokenize_and_align_labels, batched=True, remove_columns=columns)

    def compute_metrics(p):
        predictions, labels = p
        predictions = np.argmax(predictions, axis=2)
        scored = labels != -100
        correct = (predictions == labels) & scored
        entity = scored & (labels != label_to_id.get("O", -1))
        return {"accuracy": float(correct.sum() / scored.sum()),
                "entity_recall": float((correct & entity).sum() / max(entity.sum(), 1))}

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None, compute_metrics=compute_metrics,
        processing_class=tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
    )
    if training_args.do_train:
        train_result = trainer.train()
        metrics = train_result.metrics
        trainer.save_model()
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="token-classification")


if __name__ == "__main__":
    main()
