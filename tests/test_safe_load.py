"""Checkpoints a user hands in are data, never code: pickle payloads are refused and never run."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import pytest
import torch

from hf_lightning import Trainer, TrainingArguments
from hf_lightning.checkpoint_io import COMPLETE_MARKER
from hf_lightning.errors import ConfigError
from tests.conftest import REPO, tiny_bert_classifier


class _Payload:
    """Unpickling this runs ``exec``, which creates the marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _write_payload(path: Path, marker: Path, **extra) -> Path:
    torch.save({"state_dict": {}, "hyper_parameters": {}, "x": _Payload(marker), **extra}, path)
    return path


def _revouch(folder: Path) -> None:
    """Rewrite the folder's marker for its current files, as an attacker handing over a whole folder would."""
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    marker["files"] = {k: (folder / k).stat().st_size for k in marker["files"]}
    (folder / COMPLETE_MARKER).write_text(json.dumps(marker))


def _args(out: Path, **kw) -> TrainingArguments:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=2, save_strategy="steps", save_steps=2,
                report_to="none", use_cpu=True, disable_tqdm=True, seed=1)
    base.update(kw)
    return TrainingArguments(**base)


def test_cli_ckpt_path_with_a_payload_is_one_line_and_never_runs(tmp_path: Path, demo_assets, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hf_lightning.cli import run_cli

    marker = tmp_path / "pwned"
    evil = _write_payload(tmp_path / "evil.ckpt", marker)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["hf-lightning"])
    with pytest.raises(SystemExit) as info:
        run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), f"--ckpt_path={evil}"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    assert len(err.splitlines()) == 1 and str(evil) in err and "exec" in err, err
    assert not marker.exists(), "the payload ran"


def test_resume_never_unpickles_training_args_and_refuses_a_payload(cls_dataset, demo_tokenizer,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(out), train_dataset=cls_dataset,
            processing_class=demo_tokenizer).train()
    ckpt = out / "checkpoint-2"
    marker = tmp_path / "pwned"

    # training_args.bin is HF's pickled TrainingArguments: resume must not read it at all.
    _write_payload(ckpt / "training_args.bin", marker)
    _revouch(ckpt)
    resumed = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(out, max_steps=3),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer)
    resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 3
    assert not marker.exists(), "training_args.bin was unpickled on resume"

    # The Lightning state goes through torch.load: a payload there is refused with one line naming the file.
    _write_payload(ckpt / "lightning.ckpt", marker)
    _revouch(ckpt)
    again = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), args=_args(out, max_steps=4),
                    train_dataset=cls_dataset, processing_class=demo_tokenizer)
    with pytest.raises(ConfigError) as info:
        again.train(resume_from_checkpoint=str(ckpt))
    assert str(ckpt / "lightning.ckpt") in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists(), "the payload ran"


def test_load_from_checkpoint_refuses_a_payload(tmp_path: Path) -> None:
    from hf_lightning import HFLightningModule

    marker = tmp_path / "pwned"
    evil = _write_payload(tmp_path / "evil.ckpt", marker)
    with pytest.raises(ConfigError, match="checkpoint_path: .*evil.ckpt.*refused"):
        HFLightningModule.load_from_checkpoint(evil)
    assert not marker.exists()


def test_forcing_unsafe_loads_in_the_environment_does_not_switch_protection_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` makes ``torch.load(weights_only=None)`` (Lightning's call) unpickle code."""
    from hf_lightning.checkpoint_io_plugin import AtomicCheckpointIO, SafeLoadCheckpointIO

    marker = tmp_path / "pwned"
    evil = _write_payload(tmp_path / "evil.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for io in (SafeLoadCheckpointIO(), AtomicCheckpointIO()):
        with pytest.raises(ConfigError, match="refused without running it"):
            io.load_checkpoint(evil)
        with pytest.raises(ConfigError, match="refused without running it"):
            io.load_checkpoint(evil, weights_only=False)
    assert not marker.exists()


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io to count bytes read")
def test_ckpt_path_validation_reads_keys_not_tensors(tmp_path: Path) -> None:
    from hf_lightning.cli import check_checkpoint_file

    path = tmp_path / "big.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4_000_000)}, "hyper_parameters": {"learning_rate": 0.1}}, path)
    size = path.stat().st_size
    before = _bytes_read()
    header = check_checkpoint_file(str(path))
    read = _bytes_read() - before
    assert header["hyper_parameters"] == {"learning_rate": 0.1}
    assert read < size / 20, f"validation read {read} of {size} bytes"


def test_corrupt_and_non_dict_checkpoints_are_one_line(tmp_path: Path) -> None:
    from hf_lightning.safe_load import read_checkpoint_header

    (tmp_path / "garbage.ckpt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ConfigError, match="corrupt or not a checkpoint"):
        read_checkpoint_header(tmp_path / "garbage.ckpt")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ConfigError, match="not a checkpoint dictionary"):
        read_checkpoint_header(tmp_path / "list.ckpt")


def test_writing_in_place_saves_a_loadable_file_only_within_the_block(tmp_path: Path) -> None:
    """checkpoint-N folders are atomic as a whole, so their lightning.ckpt skips Lightning's in-memory copy."""
    from hf_lightning.checkpoint_io_plugin import SafeLoadCheckpointIO

    io = SafeLoadCheckpointIO()
    with pytest.raises(RuntimeError, match="interrupted"), io.writing_in_place():
        io.save_checkpoint({"w": torch.arange(3.0)}, tmp_path / "a.ckpt")
        assert io._in_place
        raise RuntimeError("interrupted")
    assert not io._in_place  # back to Lightning's own write after the block, also after an error
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["w"], torch.arange(3.0))
