"""Start-up stays cheap and quiet: optional integrations load only when used, runs print no foreign warnings.

Each check runs in a fresh interpreter, since ``sys.modules`` and the logging/warnings set-up of the
test process say nothing about what a user's command imports or prints.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Integrations a plain run never uses; each costs start-up time (peft brings bitsandbytes and parts
# of torch._dynamo) and some print into the run when imported.
OPTIONAL = ("deepspeed", "ray", "mlflow", "wandb", "optuna", "peft", "bitsandbytes")

_REPORT = "print('MODULES=' + json.dumps(sorted(m for m in {names!r} if m in sys.modules)))"


def _run_cli(args: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``hf-lightning ARGS`` in a fresh process; its output and the optional packages it imported."""
    code = "\n".join([
        "import json, sys",
        f"sys.argv = ['hf-lightning', *{args!r}]",
        "from hf_lightning.cli import main",
        "try:",
        "    main()",
        "except SystemExit as exit_:",
        "    assert not exit_.code, exit_.code",
        _REPORT.format(names=OPTIONAL),
    ])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)  # the user's default: warnings shown
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("MODULES="))
    return run, json.loads(line.removeprefix("MODULES="))


def test_help_imports_no_optional_integration(tmp_path: Path) -> None:
    run, imported = _run_cli(["fit", "--help"], tmp_path)
    assert "--model.learning_rate" in run.stdout
    assert imported == [], f"`hf-lightning fit --help` imported {imported}"


def test_plain_fit_imports_no_unused_integration_and_prints_no_foreign_warning(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run, imported = _run_cli([
        "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"), "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={out}",
        f"--trainer.logger.init_args.save_dir={out}", "--model.model.hidden_size=16",
        "--model.model.intermediate_size=32", "--model.model.num_attention_heads=2",
    ], tmp_path)
    # peft (and bitsandbytes with it) is imported by transformers itself whenever it is installed
    # (transformers.trainer_utils, needed for get_scheduler): not ours to defer.
    unexpected = [m for m in imported if m not in ("peft", "bitsandbytes")]
    assert unexpected == [], f"a plain fit imported {unexpected}"
    assert "Run summary (2 optimizer steps" in run.stdout
    output = run.stdout + run.stderr
    foreign = [ln for ln in output.splitlines()
               if re.search(r"warn|deprecat|skipping publisher|setting accelerator", ln, re.IGNORECASE)]
    assert foreign == [], "\n".join(foreign)


def test_the_console_command_skips_the_exit_time_garbage_walk(tmp_path: Path) -> None:
    """``hf-lightning`` freezes the heap once every other exit handler has run (2 s of the quickstart's exit)."""
    code = (
        "import atexit, gc\n"
        "atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0))\n"  # runs after main's
        "from hf_lightning.cli import main\n"
        "main(['--help'])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "frozen at exit: True" in run.stdout
