"""A write that fails midway (disk full, file size limit) stops the run with one line and loses nothing.

The failure is real: the child process lowers its own ``RLIMIT_FSIZE`` (with ``SIGXFSZ`` ignored, so
writes past the limit raise ``EFBIG`` as a full disk raises ``ENOSPC``) once the first checkpoint is
on disk.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hf_lightning.checkpoint_io import (
    TMP_PREFIX,
    CheckpointWriteError,
    atomic_directory,
    is_complete_checkpoint,
)
from tests.conftest import REPO

LIMIT = textwrap.dedent(
    """
    import resource, signal
    def fill_the_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    """
)

FACADE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from transformers import TrainerCallback
    from hf_lightning import Trainer, TrainingArguments
    from tests.conftest import tiny_bert_classifier
    from tests.workers.shared import cls_dataset
    {limit}
    class FillDiskAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                fill_the_disk()

    data, tok = cls_dataset(32)
    args = TrainingArguments(output_dir={out!r}, per_device_train_batch_size=4, max_steps=6, save_strategy="steps",
                             save_steps=2, logging_steps=1, report_to="none", use_cpu=True, disable_tqdm=True, seed=1)
    resume = {resume}
    trainer = Trainer(model=tiny_bert_classifier(len(tok)), args=args, train_dataset=data, processing_class=tok,
                      callbacks=[] if resume else [FillDiskAfterFirstSave()])
    trainer.train(resume_from_checkpoint=resume or None)
    print("DONE", trainer.state.global_step, [e["step"] for e in trainer.state.log_history if "loss" in e], flush=True)
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow
def test_full_disk_mid_checkpoint_stops_in_one_line_and_resume_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    failed = _run(FACADE.format(repo=str(REPO), limit=LIMIT, out=str(out), resume=False))
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert "CheckpointWriteError: could not write" in last and str(out / "checkpoint-4") in last, last
    assert "File too large" in last and "resume_from_checkpoint=True" in last, last
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)], "a half-written folder was left"
    assert is_complete_checkpoint(out / "checkpoint-2")

    resumed = _run(FACADE.format(repo=str(REPO), limit=LIMIT, out=str(out), resume=True))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "DONE 6 [1, 2, 3, 4, 5, 6]" in resumed.stdout, resumed.stdout[-2000:]


EXPORT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding
    from hf_lightning import HFLightningModule
    from hf_lightning.callbacks.hf_export import HFExportCallback
    from tests.workers.shared import cls_dataset, tiny_bert_config
    {limit}
    class FillDiskBeforeExport(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            fill_the_disk()

    data, tok = cls_dataset(8)
    loader = DataLoader(data, batch_size=4, collate_fn=DataCollatorWithPadding(tok))
    module = HFLightningModule(model=tiny_bert_config(len(tok)), task="sequence-classification", num_labels=2)
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir={root!r},
                         callbacks=[FillDiskBeforeExport(), HFExportCallback(dirpath={export!r})])
    trainer.fit(module, train_dataloaders=loader)
    """
)


@pytest.mark.slow
def test_full_disk_during_the_hf_export_keeps_the_previous_export(tmp_path: Path) -> None:
    export = tmp_path / "hf_model"
    export.mkdir()
    (export / "config.json").write_text('{"previous": "export"}')
    failed = _run(EXPORT.format(repo=str(REPO), limit=LIMIT, root=str(tmp_path), export=str(export)))
    assert failed.returncode != 0
    last = failed.stderr.strip().splitlines()[-1]
    assert f"could not write {export}: File too large" in last, last
    assert (export / "config.json").read_text() == '{"previous": "export"}', "the previous export was damaged"
    assert sorted(p.name for p in export.iterdir()) == ["config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)], "a half-written folder was left"


def test_a_failed_write_leaves_the_old_folder_and_no_temporary(tmp_path: Path) -> None:
    """The same guarantee without a subprocess: an ENOSPC raised mid-write (as a full file system raises it)."""
    import errno
    import pickle

    final = tmp_path / "checkpoint-3"
    with atomic_directory(final) as tmp:
        torch.save({"w": torch.ones(2)}, tmp / "a.pt")
    try:
        with atomic_directory(final) as tmp:
            (tmp / "a.pt").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "b.pt"))
    except CheckpointWriteError as err:
        assert err.errno == errno.ENOSPC and "\n" not in str(err)
        assert str(err).startswith(f"could not write {final}: No space left on device while writing b.pt")
        assert str(pickle.loads(pickle.dumps(err))) == str(err), "travels between processes (Ray trials, spawn)"
    else:
        raise AssertionError("the failed write was not reported")
    assert torch.load(final / "a.pt")["w"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-3"]
