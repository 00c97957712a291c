"""A Lightning CheckpointIO whose ``.ckpt`` files are complete or absent, never truncated.

Lightning's ``TorchCheckpointIO`` serialises into memory and then writes the bytes straight to the
final path: a process killed during that write (OOM killer, preemption grace period over, SIGKILL)
leaves a truncated file under the real name, and ``ckpt_path="last"`` or a glob over the folder picks
it up on the next start. :class:`AtomicCheckpointIO` writes through
:func:`hf_lightning.checkpoint_io.atomic_torch_save` instead: a hidden ``.tmp-<name>-<pid>`` sibling,
fsync, rename over the final name, fsync of the folder. Readers see the old file or the whole new one.

Loading is safe too (:class:`SafeLoadCheckpointIO`, which it extends): Lightning 2.6 hands
``torch.load`` ``weights_only=None``, which torch 2.6+ reads as True unless the environment sets
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, and a caller may pass False; here every local load is
``weights_only=True`` explicitly, and a pickle payload is refused with one line naming the file.

Plug it in with ``Trainer(plugins=[AtomicCheckpointIO()])``. Only local paths get the atomic write;
``fsspec`` URLs (``s3://...``) keep Lightning's path, as object stores publish an upload only once it
is complete. Hidden temporaries left by a killed writer are removed the next time this process saves
into the same folder (those of a process that is still alive are left alone).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol, get_filesystem
from lightning.fabric.utilities.types import _PATH

from hf_lightning.checkpoint_io import TMP_PREFIX, atomic_torch_save, cleanup_incomplete, torch_save_file
from hf_lightning.errors import ConfigError
from hf_lightning.safe_load import safe_torch_load

__all__ = ["AtomicCheckpointIO", "SafeLoadCheckpointIO", "use_safe_loading"]


class SafeLoadCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose loads never unpickle code: ``weights_only=True`` whatever the caller asks.

    ``trainer.fit(ckpt_path=...)`` reads the user's file through this method, so it is the one place
    that makes resuming from a downloaded or shared checkpoint safe.
    """

    _in_place = False

    @contextlib.contextmanager
    def writing_in_place(self) -> Iterator[None]:
        """Within: local saves are ``torch.save`` straight into the file (for callers whose folder is atomic).

        Lightning's save serialises the whole checkpoint into memory and then writes those bytes, which
        makes the single file atomic at the cost of a second copy of every tensor, in memory and in time.
        A ``checkpoint-N`` folder is written inside ``checkpoint_io.atomic_directory`` and appears only
        once complete, so there that copy is waste (``bench/checkpoint_cost.py`` measures the saves).
        """
        self._in_place = True
        try:
            yield
        finally:
            self._in_place = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if self._in_place and storage_options is None and _is_local_file_protocol(path):
            torch_save_file(checkpoint, path)
            return
        super().save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Load with ``weights_only=True`` and the project's types allowed; refuse pickle payloads in one line."""
        if not _is_local_file_protocol(path):
            if not get_filesystem(path).exists(path):
                raise FileNotFoundError(f"Checkpoint file not found: {path}")
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return safe_torch_load(path, field="ckpt_path", map_location=map_location)


def use_safe_loading(trainer: Any, checkpoint_io: SafeLoadCheckpointIO | None = None) -> SafeLoadCheckpointIO | None:
    """Give ``trainer``'s strategy ``checkpoint_io`` (a :class:`SafeLoadCheckpointIO` by default) where it
    uses Lightning's plain one; return the one installed, or None.

    Strategies with their own checkpoint format (DeepSpeed, FSDP2's distributed checkpoints) or a
    CheckpointIO the user chose are left alone.
    """
    strategy = trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = checkpoint_io or SafeLoadCheckpointIO()
        return strategy.checkpoint_io
    return None


class AtomicCheckpointIO(SafeLoadCheckpointIO):
    """``TorchCheckpointIO`` with an all-or-nothing ``save_checkpoint`` for local files.

    Loading is :class:`SafeLoadCheckpointIO`'s; removing is Lightning's: the files are ordinary ``torch.save`` output.
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
