"""Masked language modelling in the style of Hugging Face's ``run_mlm.py`` (written for these tests).

Texts are tokenized and grouped into ``max_seq_length`` chunks; ``DataCollatorForLanguageModeling`` masks
15% of the tokens of each batch, drawn from its own generator seeded with ``--seed`` (so the masks do not
depend on what else draws random numbers); evaluation reports the masked-token accuracy and the perplexity.
Runs under ``transformers.Trainer`` as written; ``tests/test_example_scripts.py`` changes the one import
line below to ``hf_lightning`` and compares what both runs leave in ``output_dir``.
"""

import logging  # noqa: I001  (the Trainer import stays one line of its own: the one a user changes)
import math
import sys
from dataclasses import dataclass, field
from itertools import chain

import datasets
from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling, HfArgumentParser, set_seed
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or a model identifier."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A csv, json or txt file with a text column."})
    validation_file: str = field(metadata={"help": "A csv, json or txt file with a text column."})
    max_seq_length: int = field(default=16, metadata={"help": "Length of the chunks the texts are grouped into."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of the tokens masked."})
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
    model = AutoModelForMaskedLM.from_pretrained(model_args.model_name_or_path)

    columns = raw["train"].column_names
    tokenized = raw.map(lambda examples: tokenizer(examples["text"], return_special_tokens_mask=True), batched=True,
                        remove_columns=columns, desc="Running tokenizer on every text in dataset")
    max_seq_length = data_args.max_seq_length

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total_length = (len(concatenated[next(iter(examples))]) // max_seq_length) * max_seq_length
        return {k: [t[i:i + max_seq_length] for i in range(0, total_length, max_seq_length)]
                for k, t in concatenated.items()}

    tokenized = tokenized.map(group_texts, batched=True, desc=f"Grouping texts in chunks of {max_seq_length}")
    train_dataset = tokenized["train"]
    if data_args.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    eval_dataset = tokenized["validation"]
    if data_args.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(len(eval_dataset), data_args.max_eval_samples)))

    def preprocess_logits_for_metrics(logits, labels):
        if isinstance(logits, tuple):  # extra outputs (past_key_values, ...) are not needed
            logits = logits[0]
        return logits.argmax(dim=-1)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        mask = labels != -100
        return {"accuracy": float((preds[mask] == labels[mask]).mean())}

    # The masks come from the collator's own seeded generator, not the global random stream.
    data_collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=data_args.mlm_probability,
                                                    seed=training_args.seed)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None, processing_class=tokenizer,
        data_collator=data_collator, compute_metrics=compute_metrics if training_args.do_eval else None,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics if training_args.do_eval else None,
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
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="fill-mask")


if __name__ == "__main__":
    main()
