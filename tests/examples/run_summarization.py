"""Summarisation in the style of Hugging Face's ``run_summarization.py`` (written for these tests).

Runs under ``transformers.Seq2SeqTrainer`` as written; ``tests/test_example_scripts.py`` changes the
one import line below to ``hf_lightning`` and compares what both runs leave in ``output_dir``.
"""

import logging  # noqa: I001  (the Trainer import stays one line of its own: the one a user changes)
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, HfArgumentParser, set_seed
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or a model identifier."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A json lines file with text and summary columns."})
    validation_file: str = field(metadata={"help": "A json lines file with text and summary columns."})
    max_source_length: int = field(default=32)
    max_target_length: int = field(default=8)


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stdout)])
    set_seed(training_args.seed)

    raw = datasets.load_dataset("json", data_files={"train": data_args.train_file,
                                                   "validation": data_args.validation_file})
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path)

    def preprocess(examples):
        inputs = tokenizer(examples["text"], max_length=data_args.max_source_length, truncation=True)
        labels = tokenizer(text_target=examples["summary"], max_length=data_args.max_target_length, truncation=True)
        inputs["labels"] = labels["input_ids"]
        return inputs

    columns = raw["train"].column_names
    train_dataset = raw["train"].map(preprocess, batched=True, remove_columns=columns)
    eval_dataset = raw["validation"].map(preprocess, batched=True, remove_columns=columns)

    def compute_metrics(eval_preds):
        preds, labels = eval_preds
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_preds = tokenizer.batch_decode(preds, skip_special_tokens=True)
        decoded_labels = tokenizer.batch_decode(labels, skip_special_tokens=True)
        overlap = [len(set(p.split()) & set(r.split())) / max(len(set(r.split())), 1)
                   for p, r in zip(decoded_preds, decoded_labels)]
        return {"word_recall": float(np.mean(overlap)),
                "gen_len": float(np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds]))}

    trainer = Seq2SeqTrainer(
        model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
        processing_class=tokenizer, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
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
        metrics = trainer.evaluate(max_length=data_args.max_target_length, num_beams=2, metric_key_prefix="eval")
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="summarization")


if __name__ == "__main__":
    main()
