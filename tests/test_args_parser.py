"""``TrainingArguments`` through ``HfArgumentParser``, as every HF example script reads it.

Each field of ``transformers.TrainingArguments`` and of our subclass is set from a command line to a
non-default value; HF's fields must parse to what transformers' own class parses them to, and every
result must survive ``to_dict`` -> ``parse_dict``, JSON and YAML files, pickling and ``training_args.bin``.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import warnings

import pytest
import torch
import transformers
import yaml
from transformers import HfArgumentParser

from hf_lightning import TrainingArguments

# Values that a generic "flip the default" cannot give (dict fields take JSON text, some fields need a
# companion, some are refused on a CPU-only machine by transformers itself).
_JSON = '{"num_cycles": 2}'
_CLI = {
    "lr_scheduler_type": ["cosine"],
    "lr_scheduler_kwargs": [_JSON],
    "optim": ["sgd"],  # the default is adamw_torch below torch 2.8, adamw_torch_fused from it
    "optim_target_modules": ["attn"],
    "activation_checkpointing_kwargs": ['{"use_reentrant": false}'],
    "gradient_checkpointing_kwargs": ['{"use_reentrant": false}'],
    "bf16": ["true", "--use_cpu"],
    "bf16_full_eval": ["true", "--use_cpu"],
    "tf32": ["false"],  # True is refused by transformers without an Ampere GPU
    "report_to": ["tensorboard"],
    "include_num_input_tokens_seen": ["true"],
    "log_level": ["info"],
    "log_level_replica": ["error"],
    "eval_strategy": ["steps"],
    "save_strategy": ["epoch"],
    "hub_strategy": ["end"],
    "load_best_model_at_end": ["true", "--eval_strategy", "steps", "--save_strategy", "steps"],
    "include_for_metrics": ["inputs", "loss"],
    "label_names": ["labels", "start_positions"],
    "accelerator_config": ['{"split_batches": true}'],
    "dataloader_prefetch_factor": ["3", "--dataloader_num_workers", "2"],
    "dataloader_multiprocessing_context": ["spawn"],
    "train_sampling_strategy": ["sequential"],
    "ddp_backend": ["gloo"],
    "fsdp": ["full_shard auto_wrap"],
    "fsdp_config": ['{"min_num_params": 10}'],
    "debug": ["underflow_overflow"],
    "evaluation_strategy": ["epoch"],
    "warmup_ratio": ["0.1"],
    "devices": ["2"],
    "lightning_trainer_kwargs": ['{"limit_val_batches": 3}'],
    "accelerator": ["cpu"],
    "strategy": ["ddp"],
    "tp_size": ["2"],
    "tp_plan": ['{"model.layers.*.mlp.up_proj": "colwise"}'],
}
# transformers' own parser cannot read these from a command line (a dict and an accelerate object typed
# without str); they come from JSON/YAML files or Python, which the round trip below covers for the rest.
_NOT_ON_A_COMMAND_LINE = {"liger_kernel_config", "parallelism_config"}
_LIGHTNING_ONLY = {"accelerator": "cpu", "devices": 2, "num_nodes": 3, "strategy": "ddp",
                   "lightning_trainer_kwargs": {"limit_val_batches": 3}, "stop_on_nonfinite_loss": 3,
                   "evaluation_strategy": "epoch", "warmup_ratio": 0.1, "overwrite_output_dir": True,
                   "tp_size": 2, "tp_plan": {"model.layers.*.mlp.up_proj": "colwise"}}
# transformers' own class cannot be built with these outside a launched process group (it would set up
# torch.distributed itself), or without deepspeed installed (ours hands the JSON to Lightning's
# strategy); these are compared with the value given.
_HF_CANNOT_BUILD = {"ddp_backend", "deepspeed"}
_FIELDS = sorted(f.name for f in dataclasses.fields(TrainingArguments) if f.init and f.name != "output_dir")


def _cli_value(parser: HfArgumentParser, name: str) -> list[str]:
    if name in _CLI:
        return _CLI[name]
    action = next(a for a in parser._actions if a.dest == name)
    kind = getattr(action.type, "__name__", "")
    if action.choices:
        return [next(str(c) for c in action.choices if str(c) != str(action.default))]
    if kind == "string_to_bool":
        return ["false" if action.default is True else "true"]
    if kind == "int":
        return ["3"]
    if kind == "float":
        return ["0.25"]
    return ["x"]


def _parse(cls: type, argv: list[str]) -> transformers.TrainingArguments:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HfArgumentParser(cls).parse_args_into_dataclasses(argv)[0]


def _comparable(args: transformers.TrainingArguments) -> dict:
    out = args.to_dict()
    out.pop("output_dir")
    return out


@pytest.mark.parametrize("name", [n for n in _FIELDS if n not in _NOT_ON_A_COMMAND_LINE])
def test_every_field_parses_from_the_command_line_and_round_trips(name: str, tmp_path) -> None:
    parser = HfArgumentParser(TrainingArguments)
    value = _cli_value(parser, name)
    if name == "deepspeed":
        (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 2}}))
        value = [str(tmp_path / "ds.json")]
    argv = ["--output_dir", str(tmp_path / "out"), f"--{name}", *value]
    ours = _parse(TrainingArguments, argv)
    default = _parse(TrainingArguments, ["--output_dir", str(tmp_path / "out")])
    assert getattr(ours, name) != getattr(default, name), f"--{name} {value} left the default"
    if name in _LIGHTNING_ONLY:
        assert getattr(ours, name) == _LIGHTNING_ONLY[name]
    elif name in _HF_CANNOT_BUILD:
        assert getattr(ours, name) == value[0]
    else:
        theirs = _parse(transformers.TrainingArguments, argv)
        assert getattr(ours, name) == getattr(theirs, name)
    # to_dict -> parse_dict, a JSON file, a YAML file, pickle and training_args.bin give equal arguments.
    expected = _comparable(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_dict = parser.parse_dict(ours.to_dict())[0]
        (tmp_path / "args.json").write_text(ours.to_json_string())
        from_json = parser.parse_json_file(str(tmp_path / "args.json"))[0]
        (tmp_path / "args.yaml").write_text(yaml.safe_dump(json.loads(ours.to_json_string())))
        from_yaml = parser.parse_yaml_file(str(tmp_path / "args.yaml"))[0]
    torch.save(ours, tmp_path / "training_args.bin")
    from_bin = torch.load(tmp_path / "training_args.bin", weights_only=False)
    for copy in (from_dict, from_json, from_yaml, pickle.loads(pickle.dumps(ours)), from_bin):
        assert _comparable(copy) == expected


@pytest.mark.parametrize("name", sorted(_NOT_ON_A_COMMAND_LINE))
def test_fields_transformers_cannot_read_from_a_command_line_fail_the_same_way(name: str, tmp_path) -> None:
    argv = ["--output_dir", str(tmp_path), f"--{name}", "{}"]
    for cls in (transformers.TrainingArguments, TrainingArguments):
        with pytest.raises(SystemExit):
            _parse(cls, argv)


def test_the_issue_reproducer_parses(tmp_path) -> None:
    args = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(["--output_dir", str(tmp_path)])[0]
    assert args.devices == "auto" and isinstance(args, transformers.TrainingArguments)


@pytest.mark.parametrize(("text", "value"), [("auto", "auto"), ("2", 2), ("-1", -1), ("0,1", [0, 1]), ("[0, 1]", [0, 1])])
def test_devices_text_becomes_what_lightning_takes(text: str, value, tmp_path) -> None:
    assert _parse(TrainingArguments, ["--output_dir", str(tmp_path), "--devices", text]).devices == value


def test_bad_devices_text_is_one_line_naming_the_field(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"^devices: .*Fix: "):
        TrainingArguments(output_dir=str(tmp_path), devices="0,x")


def test_help_lists_the_lightning_only_fields_with_their_help(capsys) -> None:
    text = HfArgumentParser(TrainingArguments).format_help()
    for name in ("accelerator", "devices", "num_nodes", "strategy", "lightning_trainer_kwargs", "stop_on_nonfinite_loss"):
        assert f"--{name}" in text
    assert text.count("Lightning-only.") == 6
    assert "Extra keyword arguments for lightning.Trainer" in " ".join(text.split())


def test_a_script_with_its_own_dataclasses_parses_beside_training_arguments(tmp_path) -> None:
    """The shape of run_glue.py: (ModelArguments, DataTrainingArguments, TrainingArguments)."""

    @dataclasses.dataclass
    class ModelArguments:
        model_name_or_path: str = dataclasses.field(metadata={"help": "a model"})

    @dataclasses.dataclass
    class DataArguments:
        max_seq_length: int = 128

    argv = ["--model_name_or_path", "m", "--max_seq_length", "64", "--output_dir", str(tmp_path), "--do_train",
            "--num_train_epochs", "2", "--devices", "1", "--report_to", "none"]
    model_args, data_args, args = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments)).parse_args_into_dataclasses(argv)
    assert (model_args.model_name_or_path, data_args.max_seq_length) == ("m", 64)
    assert (args.do_train, args.num_train_epochs, args.devices) == (True, 2.0, 1)
