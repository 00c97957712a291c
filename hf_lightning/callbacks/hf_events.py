"""The HF event vocabulary: where each ``transformers.TrainerCallback`` event fires on Lightning.

HF's training loop, and the Lightning hook (or facade method) that plays each part here::

    Trainer.__init__ .......................... on_init_end
    fit: on_train_start ....................... on_train_begin      (then eval_on_start)
      on_train_epoch_start .................... on_epoch_begin
        on_train_batch_start (window start) ... on_step_begin
          training_step, backward
        on_train_batch_end (mid-window) ....... on_substep_end
        configure_gradient_clipping, after clip on_pre_optimizer_step
        optimizer_step, after step ............ on_optimizer_step   (then gradients are cleared, as in HF)
        on_train_batch_end (window end) ....... on_step_end, then log/evaluate/save as HF decides:
            log ............................... on_log
            evaluate (prediction steps) ....... on_prediction_step ... on_evaluate
            save (checkpoint-N/) .............. on_save
        (a batch after should_epoch_stop) ..... nothing: the module answers -1, the epoch ends
      on_train_epoch_end ...................... on_epoch_end, then log/evaluate/save; after HF's epoch
                                                count (fixed, like max_steps) training stops
    on_train_end .............................. on_train_end        (after the final log)

``tests/test_event_order.py`` records every event of the same runs under transformers.Trainer and the
facade and asserts identical sequences (with step, epoch, control flags and state).

Plain Lightning runs (``HFCallbacks``) keep Lightning's own cadence instead: ``on_log`` every
``log_every_n_steps`` optimizer steps, ``on_evaluate`` after each Lightning validation (then
``state.best_metric`` is updated, as HF does after ``on_evaluate``), ``on_save`` per Lightning checkpoint.
    Trainer.predict ........................... on_prediction_step ... on_predict
    (Hub push) ................................ on_push_begin       (never: no Hub uploads)
"""

from __future__ import annotations

__all__ = ["HF_EVENTS"]

HF_EVENTS: dict[str, str] = {
    "on_init_end": "Trainer.__init__ (facade) / setup (Lightning-native)",
    "on_train_begin": "on_train_start",
    "on_epoch_begin": "on_train_epoch_start",
    "on_step_begin": "on_train_batch_start (first micro-batch of a window)",
    "on_substep_end": "on_train_batch_end (micro-batch that did not step)",
    "on_pre_optimizer_step": "configure_gradient_clipping (after clipping, before optimizer.step)",
    "on_optimizer_step": "optimizer_step (after optimizer.step)",
    "on_step_end": "on_train_batch_end (micro-batch that stepped)",
    "on_epoch_end": "on_train_epoch_end",
    "on_train_end": "on_train_end",
    "on_log": "bridge.log_training (HF cadence) / every log_every_n_steps (Lightning-native)",
    "on_evaluate": "bridge evaluation (HF cadence) / on_validation_end (Lightning-native)",
    "on_prediction_step": "each evaluation or prediction batch",
    "on_predict": "Trainer.predict",
    "on_save": "after a checkpoint is written",
    "on_push_begin": "never (Hub uploads are not available here)",
}
