"""The parts behind the HF-style ``Trainer`` (``hf_lightning/trainer.py``), one job each.

``Trainer`` keeps every method name users override (``compute_loss``, ``get_train_dataloader``, ...);
each of those is a one- or two-line call into a function here that takes the trainer as its first
argument, so the parts call back through ``trainer.<method>`` and overrides keep working:

* ``setup``: arguments, seeding, ``model_init``, what HF reads off the model class, callback split
* ``loaders``: train / eval / test ``DataLoader``s (unused columns, length grouping, resumable order)
* ``optimization``: ``create_optimizer`` / ``create_scheduler`` with HF's names and grouping
* ``steps``: ``compute_loss``, ``training_step``, ``prediction_step`` (HF's contracts)
* ``eval_loop``: ``evaluate``, ``evaluation_loop``, ``predict``
* ``checkpoints``: resume resolution, ``checkpoint-N`` saving and rotation, best-model reload, ``save_model``
* ``reporting``: ``log`` (state.log_history, Lightning loggers, ``on_log``) and FLOP counting
* ``fit``: ``train()``: builds the ``TrainerModule`` and ``lightning.Trainer`` and runs ``fit``
* ``hp_search``: ``hyperparameter_search`` (HF's Optuna / Ray drivers) and the trial protocol they call
* ``module``: ``TrainerModule``, the LightningModule that calls the trainer's HF hooks
* ``accelerate_shim``: ``trainer.accelerator`` (accelerate's method names on Lightning)

Nothing here imports ``hf_lightning.trainer``; the parts know the trainer only as the object passed in.
"""
