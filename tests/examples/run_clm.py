"""Causal language modelling in the style of Hugging Face's ``run_clm.py`` (written for these tests).

Texts are tokenized, concatenated and cut into ``block_size`` chunks (``group_texts``); evaluation
reports the perplexity. Runs under ``transformers.Trainer`` as written; ``tests/test_example_scripts.py``
changes the one import line below to ``hf_lightning`` and compares what both runs leave in ``output_dir``.
"""

import logging  # noqa: I001  (the Trainer import stays one line of its own: the one a user changes)
import math
import sys
from dataclasses import dataclass, field
from itertools import chain

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, default_data_collator, set_seed
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or a model identifier."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A csv, json or txt file with a text column."})
    validation_file: str = field(metadata={"help": "A csv, json or txt file with a text column."})
    block_size: int = field(default=16, metadata={"help": "Length of the chunks the concatenated texts are cut into."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stdout)])
    set_seed(training_args.seed)

    extension = data_args.train_file.rsplit(".", 1)[-1]
    raw = datasets.load_dataset("text" if extension == "txt" else extension,
                                data_files={"train": data_args.train_file, "validation": data_args.validation_file})
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)

    columns = raw["train"].column_names
    tokenized = raw.map(lambda examples: tokenizer(examples["text"]), batched=True, remove_columns=columns,
                        desc="Running tokenizer on dataset")
    block_size = data_args.block_size

    def group_texts(examples):
        # Concatenate all texts and cut them into block_size chunks, dropping the small remainder.
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = (len(concatenated[next(iter(examples))]) // block_size) * block_size
        result = {k: [t[i:i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    lm_datasets = tokenized.map(group_texts, batched=True, desc=f"Grouping texts in chunks of {block_size}")
    train_dataset = lm_datasets["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    eval_dataset = lm_datasets["validation"]
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(len(eval_dataset), data_args.max_eval_samples)))

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None, processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    if training_args.do_train:
        train_result = trainer.train()
        trainer.save_model()
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        try:
            metrics["perplexity"] = math.exp(metrics["eval_loss"])
        except OverflowError:
            metrics["perplexity"] = float("inf")
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="text-generation")


if __name__ == "__main__":
    main()
