"""A Lightning CheckpointIO whose ``.ckpt`` files are complete or absent, never truncated.

Lightning's ``TorchCheckpointIO`` serialises into memory and then writes the bytes straight to the
final path: a process killed during that write (OOM killer, preemption grace period over, SIGKILL)
leaves a truncated file under the real name, and ``ckpt_path="last"`` or a glob over the folder picks
it up on the next start. :class:`AtomicCheckpointIO` writes through
:func:`hf_lightning.checkpoint_io.atomic_torch_save` instead: a hidden ``.tmp-<name>-<pid>`` sibling,
fsync, rename over the final name, fsync of the folder. Readers see the old file or the whole new one.

Plug it in with ``Trainer(plugins=[AtomicCheckpointIO()])``. Only local paths get the atomic write;
``fsspec`` URLs (``s3://...``) keep Lightning's path, as object stores publish an upload only once it
is complete. Hidden temporaries left by a killed writer are removed the next time this process saves
into the same folder (those of a process that is still alive are left alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH

from hf_lightning.checkpoint_io import TMP_PREFIX, atomic_torch_save, cleanup_incomplete
from hf_lightning.errors import ConfigError

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with an all-or-nothing ``save_checkpoint`` for local files.

    Loading and removing are inherited unchanged: the files are ordinary ``torch.save`` output.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cleaned: set[Path] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local paths) or as Lightning does (remote URLs)."""
        if storage_options is not None:
            raise ConfigError(
                "storage_options",
                f"{type(self).__name__} writes local files and takes no storage_options",
                "call trainer.save_checkpoint(path) without storage_options, or use a CheckpointIO that needs them",
            )
        if not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path)
            return
        local = os.fspath(path)
        local = local[len("file://"):] if isinstance(local, str) and local.startswith("file://") else local
        target = Path(local).expanduser()
        if target.name.startswith(TMP_PREFIX):
            raise ConfigError(
                "ckpt_path",
                f"{target.name!r} starts with {TMP_PREFIX!r}, which marks unfinished temporary files here",
                "choose a checkpoint file name that does not start with '.tmp-'",
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        self._clean_once(target.parent)
        atomic_torch_save(checkpoint, target)

    def _clean_once(self, folder: Path) -> None:
        """Remove temporaries of dead writers once per folder and process, before this process adds its own."""
        folder = folder.resolve()
        if folder in self._cleaned:
            return
        cleanup_incomplete(folder)
        self._cleaned.add(folder)
