"""Extractive question answering in the style of Hugging Face's ``run_qa.py`` (written for these tests).

Question and context are tokenized together (long contexts overflow into several features with a
``doc_stride`` overlap); training labels are the start/end token of the answer. Evaluation post-processes
the start/end logits as ``run_qa.py``'s ``postprocess_qa_predictions`` does: the best valid span inside
the context, mapped back to text through the offset mapping, scored by exact match and token F1.
Runs under ``transformers.Trainer`` as written; ``tests/test_example_scripts.py`` changes the one import
line below to ``hf_lightning`` and compares what both runs leave in ``output_dir``.
"""

import collections  # noqa: I001  (the Trainer import stays one line of its own: the one a user changes)
import logging
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, EvalPrediction, HfArgumentParser, default_data_collator, set_seed
from transformers import Trainer, TrainingArguments

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Path to a pretrained model or a model identifier."})


@dataclass
class DataTrainingArguments:
    train_file: str = field(metadata={"help": "A json lines file in SQuAD form (id, question, context, answers)."})
    validation_file: str = field(metadata={"help": "A json lines file in SQuAD form (id, question, context, answers)."})
    max_seq_length: int = field(default=32, metadata={"help": "Longer question+context pairs overflow."})
    doc_stride: int = field(default=8, metadata={"help": "Overlap between the features of one long context."})
    n_best_size: int = field(default=5, metadata={"help": "Start and end candidates tried per feature."})
    max_answer_length: int = field(default=4, metadata={"help": "Longest answer span, in tokens."})


def main():
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stdout)])
    set_seed(training_args.seed)

    raw = datasets.load_dataset("json", data_files={"train": data_args.train_file,
                                                   "validation": data_args.validation_file})
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForQuestionAnswering.from_pretrained(model_args.model_name_or_path)

    def tokenize(examples):
        return tokenizer(examples["question"], examples["context"], truncation="only_second",
                         max_length=data_args.max_seq_length, stride=data_args.doc_stride,
                         return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")

    def prepare_features(examples):
        tokenized = tokenize(examples)
        sample_mapping = tokenized.pop("overflow_to_sample_mapping")
        tokenized["start_positions"], tokenized["end_positions"], tokenized["example_id"] = [], [], []
        for i, offsets in enumerate(tokenized["offset_mapping"]):
            cls_index = tokenized["input_ids"][i].index(tokenizer.cls_token_id)
            sequence_ids = tokenized.sequence_ids(i)
            example = sample_mapping[i]
            answers = examples["answers"][example]
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context = [k for k, s in enumerate(sequence_ids) if s == 1]
            start_token, end_token = context[0], context[-1]
            if not (offsets[start_token][0] <= start_char and offsets[end_token][1] >= end_char):
                start, end = cls_index, cls_index  # the answer is not in this feature
            else:
                while start_token < len(offsets) and offsets[start_token][0] <= start_char:
                    start_token += 1
                while offsets[end_token][1] >= end_char:
                    end_token -= 1
                start, end = start_token - 1, end_token + 1
            tokenized["start_positions"].append(start)
            tokenized["end_positions"].append(end)
            tokenized["example_id"].append(examples["id"][example])
            # Only the context's offsets are kept: the post-processing ignores spans outside it.
            tokenized["offset_mapping"][i] = [o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)]
        return tokenized

    columns = raw["train"].column_names
    train_dataset = raw["train"].map(prepare_features, batched=True, remove_columns=columns)
    eval_examples = raw["validation"]
    eval_features = eval_examples.map(prepare_features, batched=True, remove_columns=columns)

    def postprocess_qa_predictions(start_logits, end_logits):
        features_per_example = collections.defaultdict(list)
        for i, example_id in enumerate(eval_features["example_id"]):
            features_per_example[example_id].append(i)
        predictions = {}
        for example in eval_examples:
            best = (-np.inf, "")
            for i in features_per_example[example["id"]]:
                offsets = eval_features[i]["offset_mapping"]
                starts = np.argsort(start_logits[i])[-1:-data_args.n_best_size - 1:-1]
                ends = np.argsort(end_logits[i])[-1:-data_args.n_best_size - 1:-1]
                for s in starts:
                    for e in ends:
                        if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > data_args.max_answer_length:
                            continue
                        score = start_logits[i][s] + end_logits[i][e]
                        if score > best[0]:
                            best = (score, example["context"][offsets[s][0]:offsets[e][1]])
            predictions[example["id"]] = best[1]
        return predictions

    def f1_score(prediction, truth):
        common = collections.Counter(prediction.split()) & collections.Counter(truth.split())
        same = sum(common.values())
        if same == 0:
            return 0.0
        precision, recall = same / len(prediction.split()), same / len(truth.split())
        return 2 * precision * recall / (precision + recall)

    def compute_metrics(p: EvalPrediction):
        start_logits, end_logits = p.predictions
        predictions = postprocess_qa_predictions(start_logits, end_logits)
        truths = {example["id"]: example["answers"]["text"] for example in eval_examples}
        exact = [max(float(predictions[i] == t) for t in truths[i]) for i in truths]
        f1 = [max(f1_score(predictions[i], t) for t in truths[i]) for i in truths]
        return {"exact_match": 100 * float(np.mean(exact)), "f1": 100 * float(np.mean(f1))}

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_features if training_args.do_eval else None, processing_class=tokenizer,
        data_collator=default_data_collator, compute_metrics=compute_metrics,
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
        metrics["eval_samples"] = len(eval_features)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, tasks="question-answering")


if __name__ == "__main__":
    main()
