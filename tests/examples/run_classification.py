"""Text classification in the style of Hugging Face's ``run_glue.py`` (written for these tests).

Runs under ``transformers.Trainer`` as written; ``tests/test_example_scripts.py`` changes the one
import line below to ``hf_lightning`` and compares what both runs leave in ``output_dir``.
"""

import logging  # noqa: I001  (the Trainer import stays one line of its own: the one a user changes)
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, EvalPrediction, HfArgumentParser, set_seed
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or a model identifier."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A csv or json file with text and label columns."})
    validation_file: str = field(metadata={"help": "A csv or json file with text and label columns."})
    max_seq_length: int = field(default=64, metadata={"help": "Longer inputs are truncated."})
    max_train_samples: int | None = field(default=None)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=sys.argv[1])
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stdout)])
    set_seed(training_args.seed)

    extension = data_args.train_file.rsplit(".", 1)[-1]
    raw = datasets.load_dataset(extension, data_files={"train": data_args.train_file,
                                                      "validation": data_args.validation_file})
    label_list = sorted(raw["train"].unique("label"))
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=len(label_list))
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, config=config)
    label_to_id = {v: i for i, v in enumerate(label_list)}
    model.config.label2id = label_to_id
    model.config.id2label = {i: v for v, i in label_to_id.items()}

    def preprocess(examples):
        result = tokenizer(examples["text"], truncation=True, max_length=data_args.max_seq_length)
        result["label"] = [label_to_id[label] for label in examples["label"]]
        return result

    raw = raw.map(preprocess, batched=True, desc="Running tokenizer on dataset")
    train_dataset = raw["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(data_args.max_train_samples))
    eval_dataset = raw["validation"]

    def compute_metrics(p: EvalPrediction):
        preds = np.argmax(p.predictions, axis=1)
        return {"accuracy": float((preds == p.label_ids).mean())}

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None, compute_metrics=compute_metrics,
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
    )
    if training_args.do_train:
        train_result = trainer.train()
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.save_model()
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate(eval_dataset=eval_dataset)
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="text-classification")


if __name__ == "__main__":
    main()
