"""The seeds' Trainer subclasses and callbacks, run with only the import changed.

Each class below is copied verbatim from the seed documents (004: custom Trainer and callbacks; 000:
``SpecialFeaturesTrainer``), trailing whitespace aside; the two deliberate edits are marked
``# changed:``. The user's import line becomes ``from hf_lightning import Trainer,
TrainingArguments``; ``TrainerCallback`` and ``EvalLoopOutput`` still come from transformers. Hub
models become tiny local BERTs, the Hub data the fixtures' 40 sentences. Each test checks what its
example is for, and where the example behaves the same under transformers.Trainer we run the very
same class source there (``_on_transformers``) and compare.
"""

# ruff: noqa: B007
# (B007: the seeds' ``for step, inputs in enumerate(...)`` loop variable is unused; kept verbatim.)

from __future__ import annotations

import copy
import inspect
import shutil
import textwrap
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from torch.utils.data import Dataset
from transformers import BertConfig, BertModel, TrainerCallback
from transformers.trainer_utils import EvalLoopOutput

from hf_lightning import Trainer, TrainingArguments  # the only changed line of the user's script
from hf_lightning.losses.contrastive import nt_xent_loss
from hf_lightning.losses.label_smoothing import label_smoothed_cross_entropy
from hf_lightning.multitask_model import MultiTaskConfig, MultiTaskModel
from hf_lightning.neftune import _HANDLE_ATTR
from tests.conftest import tiny_bert_classifier


# ============================================================================ seed 004, verbatim
# 004 section 25.2.1 (lines 167-196)
class LabelSmoothingTrainer(Trainer):
    def __init__(self, label_smoothing=0.1, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.label_smoothing = label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False):
        """
        使用 Label Smoothing 的交前熵损失
        """
        labels = inputs.pop("labels")

        # 前向传排
        outputs = model(**inputs)
        logits = outputs.logits

        # Label Smoothing 损失
        # 公式：(1 - ε) * NLL(y_true) + ε * NLL(uniform)
        log_probs = F.log_softmax(logits, dim=-1)

        # One-hot encoding
        num_classes = logits.size(-1)
        one_hot = torch.zeros_like(log_probs).scatter_(1, labels.unsqueeze(1), 1)

        # Smooth labels
        smooth_labels = one_hot * (1 - self.label_smoothing) + self.label_smoothing / num_classes

        # Compute loss
        loss = -(smooth_labels * log_probs).sum(dim=-1).mean()

        return (loss, outputs) if return_outputs else loss


# 004 section 25.2.2 (lines 216-273)
class AdversarialTrainer(Trainer):
    def __init__(self, adv_epsilon=1.0, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.adv_epsilon = adv_epsilon

    def training_step(self, model, inputs):
        """
        Fast Gradient Method (FGM) 对抗��练

        来骤：
        1. ��常前向 + �向，计算梯度
        2. 在 embedding 上添加对抗扰动
        3. ��次前向，计算对抗损失
        4. �向传排对抗损失
        5. 换复原始 embedding
        """
        model.train()
        inputs = self._prepare_inputs(inputs)

        # === 第一来：��常��练 ===
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)

        if self.args.gradient_accumulation_steps > 1:
            loss = loss / self.args.gradient_accumulation_steps

        # �向传排（但不更新参数）
        self.accelerator.backward(loss)

        # === 第二来：对抗��练 ===
        # 保��原始 embedding
        embedding_layer = model.get_input_embeddings()
        original_embedding = embedding_layer.weight.data.clone()

        # 计算对抗扰动
        # r_adv = epsilon * g / ||g||_2
        grad = embedding_layer.weight.grad
        if grad is not None:
            norm = torch.norm(grad)
            if norm != 0:
                r_adv = self.adv_epsilon * grad / norm
                embedding_layer.weight.data = original_embedding + r_adv

        # 对抗样本前向传排
        with self.compute_loss_context_manager():
            adv_loss = self.compute_loss(model, inputs)

        if self.args.gradient_accumulation_steps > 1:
            adv_loss = adv_loss / self.args.gradient_accumulation_steps

        # �向传排对抗损失
        self.accelerator.backward(adv_loss)

        # 换复原始 embedding
        embedding_layer.weight.data = original_embedding

        # 总损失（用于日志）
        return (loss + adv_loss).detach()


# 004 section 25.2.3 (lines 282-343)
class TopKTrainer(Trainer):
    def __init__(self, top_k=5, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.top_k = top_k

    def evaluation_loop(
        self,
        dataloader,
        description,
        prediction_loss_only=None,
        ignore_keys=None,
        metric_key_prefix="eval"
    ):
        """
        自定义评估循环，计算 Top-K 准确率
        """
        model = self.model
        model.eval()

        all_preds = []
        all_labels = []
        total_loss = 0.0

        for step, inputs in enumerate(dataloader):
            inputs = self._prepare_inputs(inputs)
            labels = inputs.pop("labels")

            with torch.no_grad():
                outputs = model(**inputs, labels=labels)  # changed: the seed drops the labels, so loss is None
                loss = outputs.loss
                logits = outputs.logits

            # 收集预测和标��
            all_preds.append(logits.cpu())
            all_labels.append(labels.cpu())
            total_loss += loss.item()

        # 合并所有 batch
        all_preds = torch.cat(all_preds, dim=0)
        all_labels = torch.cat(all_labels, dim=0)

        # 计算 Top-K 准确率
        _, top_k_preds = torch.topk(all_preds, self.top_k, dim=1)
        correct = (top_k_preds == all_labels.unsqueeze(1)).any(dim=1).float()
        top_k_accuracy = correct.mean().item()

        # 计算 Top-1 准确率（标准准确率）
        top_1_preds = all_preds.argmax(dim=1)
        top_1_accuracy = (top_1_preds == all_labels).float().mean().item()

        metrics = {
            f"{metric_key_prefix}_loss": total_loss / len(dataloader),
            f"{metric_key_prefix}_top1_accuracy": top_1_accuracy,
            f"{metric_key_prefix}_top{self.top_k}_accuracy": top_k_accuracy
        }

        return EvalLoopOutput(
            predictions=all_preds.numpy(),
            label_ids=all_labels.numpy(),
            metrics=metrics,
            num_samples=len(all_labels)
        )


# 004 section 25.2.4 (lines 354-420)
class ContrastiveLearningTrainer(Trainer):
    def __init__(self, temperature=0.07, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def compute_loss(self, model, inputs, return_outputs=False):
        """
        对比否习损失（NT-Xent Loss）

        输入：
        - inputs: {"input_ids_1": ..., "input_ids_2": ...}（同一样本的两种增强）

        损失：
        L = -log( exp(sim(z_i, z_j) / τ) / Σ_k exp(sim(z_i, z_k) / τ) )
        """
        # 获��两个增强视图
        input_ids_1 = inputs.pop("input_ids_1")
        input_ids_2 = inputs.pop("input_ids_2")
        attention_mask_1 = inputs.pop("attention_mask_1", None)
        attention_mask_2 = inputs.pop("attention_mask_2", None)

        # 前向传排获�� embeddings
        outputs_1 = model(
            input_ids=input_ids_1,
            attention_mask=attention_mask_1
        )
        outputs_2 = model(
            input_ids=input_ids_2,
            attention_mask=attention_mask_2
        )

        # ��� [CLS] 表示并归一化
        z1 = F.normalize(outputs_1.pooler_output, dim=1)  # (batch, hidden)
        z2 = F.normalize(outputs_2.pooler_output, dim=1)

        batch_size = z1.size(0)

        # 计算相似度矩阵
        # 拼来��负样本：[z1, z2] → (2*batch, hidden)
        embeddings = torch.cat([z1, z2], dim=0)

        # 计算 cosine similarity：(2*batch, 2*batch)
        similarity_matrix = torch.matmul(embeddings, embeddings.T) / self.temperature

        # 创建 mask（排除自身）
        mask = torch.eye(2 * batch_size, device=z1.device).bool()
        similarity_matrix.masked_fill_(mask, -1e9)

        # ��样本对的索引
        # z1[i] 的��样本是 z2[i]，索引为 i + batch_size
        positive_indices = torch.arange(batch_size, device=z1.device)

        # 计算损失（分两部分：z1→z2 和 z2→z1）
        # Part 1: z1 作为 anchor
        logits_1 = similarity_matrix[:batch_size]  # (batch, 2*batch)
        labels_1 = positive_indices + batch_size
        loss_1 = F.cross_entropy(logits_1, labels_1)

        # Part 2: z2 作为 anchor
        logits_2 = similarity_matrix[batch_size:]
        labels_2 = positive_indices
        loss_2 = F.cross_entropy(logits_2, labels_2)

        # 总损失
        loss = (loss_1 + loss_2) / 2

        return (loss, outputs_1) if return_outputs else loss


# 004 section 25.2.4 (lines 426-459)
class ContrastiveDataset(Dataset):
    def __init__(self, texts, tokenizer, max_length=128):
        self.texts = texts
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __getitem__(self, idx):
        text = self.texts[idx]

        # 两种增强��略（示例：��机 dropout）
        encoding_1 = self.tokenizer(
            text,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt"
        )
        encoding_2 = self.tokenizer(
            text,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt"
        )

        return {
            "input_ids_1": encoding_1["input_ids"].squeeze(0),
            "attention_mask_1": encoding_1["attention_mask"].squeeze(0),
            "input_ids_2": encoding_2["input_ids"].squeeze(0),
            "attention_mask_2": encoding_2["attention_mask"].squeeze(0)
        }

    def __len__(self):
        return len(self.texts)


# 004 section 25.3.3 (lines 553-579)
class WarmupCallback(TrainerCallback):
    def __init__(self, warmup_steps=1000, total_steps=10000):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.base_lr = None

    def on_train_begin(self, args, state, control, **kwargs):
        # 保��合始否习率
        optimizer = kwargs.get("optimizer")
        self.base_lr = optimizer.param_groups[0]["lr"]
        print(f"✅ Warmup Callback initialized: {self.warmup_steps} steps warmup")

    def on_step_end(self, args, state, control, **kwargs):
        optimizer = kwargs.get("optimizer")
        current_step = state.global_step

        if current_step < self.warmup_steps:
            # Warmup 阶段：线性增长
            lr = self.base_lr * (current_step / self.warmup_steps)
        else:
            # Decay 阶段：线性衰减
            progress = (current_step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
            lr = self.base_lr * (1 - progress)

        # 更新否习率
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr


# 004 section 25.3.3 (lines 594-613)
class EarlyStoppingCallback(TrainerCallback):
    def __init__(self, patience=3, threshold=0.001):
        self.patience = patience
        self.threshold = threshold
        self.best_metric = None
        self.wait = 0

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        current_metric = metrics.get("eval_loss")

        if self.best_metric is None or current_metric < self.best_metric - self.threshold:
            self.best_metric = current_metric
            self.wait = 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                print(f"🛑 Early stopping triggered! Best metric: {self.best_metric}")
                control.should_training_stop = True  # 停换��练

        return control


# 004 section 25.3.3 (lines 618-633)
class GradientMonitorCallback(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        model = kwargs.get("model")

        total_norm = 0.0
        for p in model.parameters():
            if p.grad is not None:
                param_norm = p.grad.data.norm(2)
                total_norm += param_norm.item() ** 2
        total_norm = total_norm ** 0.5

        if state.global_step % args.logging_steps == 0:
            print(f"Step {state.global_step}: Gradient norm = {total_norm:.4f}")

            if total_norm > 10.0:
                print("⚠��  Warning: Gradient explosion detected!")


# 004 section 25.3.3 (lines 640-653)
class VersionedCheckpointCallback(TrainerCallback):
    def __init__(self, keep_last_n=3):
        self.keep_last_n = keep_last_n
        self.checkpoints = []

    def on_save(self, args, state, control, **kwargs):
        checkpoint_dir = f"{args.output_dir}/checkpoint-{state.global_step}"
        self.checkpoints.append(checkpoint_dir)

        # ��保留最� N 个检查点
        if len(self.checkpoints) > self.keep_last_n:
            old_checkpoint = self.checkpoints.pop(0)
            shutil.rmtree(old_checkpoint)
            print(f"🗑��  Removed old checkpoint: {old_checkpoint}")


# 004 section 25.5.3 (lines 930-976)
class DistillationTrainer(Trainer):
    def __init__(self, teacher_model, temperature=2.0, alpha=0.5, *args, **kwargs):
        """
        知识蒸馏 Trainer

        Args:
            teacher_model: 教师模型（已��练好）
            temperature: 温度参数（软化分布）
            alpha: 蒸馏损失权重（总损失 = alpha * distill_loss + (1-alpha) * ce_loss）
        """
        super().__init__(*args, **kwargs)
        self.teacher_model = teacher_model
        self.teacher_model.eval()  # 教师模型始终在评估模式
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(self, model, inputs, return_outputs=False):
        labels = inputs.get("labels")

        # 否生模型前向传排
        student_outputs = model(**inputs)
        student_logits = student_outputs.logits

        # 教师模型前向传排（不计算梯度）
        with torch.no_grad():
            teacher_outputs = self.teacher_model(**inputs)
            teacher_logits = teacher_outputs.logits

        # 1. Hard Loss（标准交前熵）
        hard_loss = F.cross_entropy(student_logits, labels)

        # 2. Soft Loss（KL 散度）
        # 使用温度软化分布
        student_probs = F.log_softmax(student_logits / self.temperature, dim=-1)
        teacher_probs = F.softmax(teacher_logits / self.temperature, dim=-1)

        # KL Divergence: D_KL(P || Q) = Σ P(x) log(P(x) / Q(x))
        soft_loss = F.kl_div(
            student_probs,
            teacher_probs,
            reduction='batchmean'
        ) * (self.temperature ** 2)  # 缩放因�（温度平方）

        # 3. 总损失
        loss = self.alpha * soft_loss + (1 - self.alpha) * hard_loss

        return (loss, student_outputs) if return_outputs else loss


# 004 section 25.5.4 (lines 1004-1038)
class MultiTaskTrainer(Trainer):
    def __init__(self, task_weights=None, *args, **kwargs):
        """
        多任务否习 Trainer

        Args:
            task_weights: dict，例如 {"classification": 1.0, "ner": 0.5}
        """
        super().__init__(*args, **kwargs)
        self.task_weights = task_weights or {"classification": 1.0, "ner": 1.0}

    def compute_loss(self, model, inputs, return_outputs=False):
        """
        减设模型输出多个 loss：
        outputs = {
            "classification_loss": ...,
            "ner_loss": ...,
            "logits": ...
        }
        """
        outputs = model(**inputs)

        # 加权组合多个损失
        total_loss = 0.0
        for task, weight in self.task_weights.items():
            task_loss = outputs.get(f"{task}_loss")
            if task_loss is not None:
                total_loss += weight * task_loss

        # 返回总损失和原始输出
        if return_outputs:
            outputs["loss"] = total_loss
            return total_loss, outputs
        else:
            return total_loss


# 004 section 25.5.4 (lines 1043-1066)
class UncertaintyWeightedTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # 可否习的任务权重（log(σ²)）
        self.log_vars = nn.Parameter(torch.zeros(2))  # 2 个任务

    def compute_loss(self, model, inputs, return_outputs=False):
        outputs = model(**inputs)

        loss1 = outputs["classification_loss"]
        loss2 = outputs["ner_loss"]

        # Uncertainty weighting:
        # L_total = (1 / 2σ��²) L�� + (1 / 2σ₂²) L₂ + log(σ��σ₂)
        precision1 = torch.exp(-self.log_vars[0])
        precision2 = torch.exp(-self.log_vars[1])

        total_loss = (
            precision1 * loss1 +
            precision2 * loss2 +
            self.log_vars[0] + self.log_vars[1]  # ��则化项
        )

        return (total_loss, outputs) if return_outputs else total_loss


# ============================================================================ seed 000, verbatim
# 000 (lines 288-330)
class SpecialFeaturesTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

    def training_step(self, model, inputs, **kwargs):
        """自定义训练步骤，集成特殊功能"""
        # 使用智能混合精度
        with self.autocast_smart_context_manager():
            # 准备上下文并行输入（如果启用）
            cp_context, prepared_inputs = self._prepare_context_parallel_inputs(
                model, inputs
            )

            with cp_context():
                # 执行训练步骤
                loss = super().training_step(model, prepared_inputs, **kwargs)

        return loss

    def evaluate(self, *args, **kwargs):
        """自定义评估，使用 JIT 优化"""
        # 在评估前停用 NEFTune（如果启用）
        if hasattr(self, 'neftune_hook_handle'):
            self._deactivate_neftune(self.model)

        try:
            # changed: the GPU-only torch_jit_model_eval branch is left out (transformers 5 has no such method)
            results = super().evaluate(*args, **kwargs)

        finally:
            # 重新激活 NEFTune
            if hasattr(self, 'neftune_hook_handle'):
                self._activate_neftune(self.model)

        return results


# ============================================================================ harness
def _on_transformers(cls: type) -> type:
    """The same class source, defined on ``transformers.Trainer`` (for side-by-side runs)."""
    namespace = dict(globals(), Trainer=transformers.Trainer)
    exec(textwrap.dedent(inspect.getsource(cls)), namespace)
    return namespace[cls.__name__]


def _args(out: Path, args_cls: type = TrainingArguments, **overrides: Any) -> Any:
    base = dict(output_dir=str(out), per_device_train_batch_size=4, per_device_eval_batch_size=8, num_train_epochs=1,
                learning_rate=1e-3, train_sampling_strategy="sequential", logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=True, disable_tqdm=True, seed=0)
    base.update(overrides)
    return args_cls(**base)


def _max_diff(a: nn.Module, b: nn.Module) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _losses(trainer: Any) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def _first_batch(trainer: Any) -> dict[str, torch.Tensor]:
    return next(iter(trainer.get_train_dataloader()))


def _accuracy(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


# ============================================================================ compute_loss overrides
def test_label_smoothing_trainer_trains_on_the_formula(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """The logged loss of step 1 is (1 - eps) * NLL + eps * CE(uniform) on the first batch, and
    evaluation keeps its labels although the override pops them from ``inputs``."""
    model = tiny_bert_classifier(len(demo_tokenizer))
    initial = copy.deepcopy(model)
    trainer = LabelSmoothingTrainer(
        label_smoothing=0.1, model=model, args=_args(tmp_path, max_steps=1), train_dataset=cls_dataset,
        eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer, compute_metrics=_accuracy,
    )
    batch = _first_batch(trainer)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = initial(**batch).logits
    expected = label_smoothed_cross_entropy(logits, labels, epsilon=0.1).item()
    trainer.train()
    assert _losses(trainer)[0] == pytest.approx(expected, rel=1e-5)
    assert "eval_accuracy" in trainer.evaluate()


def test_distillation_trainer_leaves_the_teacher_alone(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """Step 1's loss is alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE; the teacher (kept on the
    trainer, in eval mode) is neither trained nor switched to train mode; the student learns."""
    teacher = tiny_bert_classifier(len(demo_tokenizer), seed=1, dropout=0.1)
    student = tiny_bert_classifier(len(demo_tokenizer), seed=2)
    teacher_before, student_before = copy.deepcopy(teacher), copy.deepcopy(student)
    trainer = DistillationTrainer(
        teacher_model=teacher, temperature=2.0, alpha=0.7, model=student, args=_args(tmp_path, max_steps=4),
        train_dataset=cls_dataset, processing_class=demo_tokenizer,
    )
    batch = _first_batch(trainer)
    with torch.no_grad():
        s_logits, t_logits = student_before(**batch).logits, teacher_before.eval()(**batch).logits
    kl = (F.softmax(t_logits / 2, -1) * (F.log_softmax(t_logits / 2, -1) - F.log_softmax(s_logits / 2, -1))).sum(-1)
    expected = 0.7 * 4 * kl.mean() + 0.3 * F.cross_entropy(s_logits, batch["labels"])
    trainer.train()
    assert _losses(trainer)[0] == pytest.approx(expected.item(), rel=1e-5)
    assert _max_diff(teacher, teacher_before) == 0.0 and not teacher.training
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert _max_diff(student, student_before) > 1e-4


def _multitask(tokenizer: Any, texts: list[str], seed: int = 0) -> tuple[MultiTaskModel, datasets.Dataset]:
    """A tiny MultiTaskModel and rows with a sentence label and per-token NER tags (-100 on padding)."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=16)
    ner = [[(i + j) % 3 if m else -100 for j, m in enumerate(mask)] for i, mask in enumerate(enc["attention_mask"])]
    data = datasets.Dataset.from_dict({**enc, "labels": [i % 2 for i in range(len(texts))], "ner_labels": ner})
    torch.manual_seed(seed)
    config = MultiTaskConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, num_labels=2, num_ner_labels=3)
    return MultiTaskModel(config), data


def test_multitask_trainer_weights_the_task_losses(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    model, data = _multitask(demo_tokenizer, list(cls_dataset["text"]))
    initial = copy.deepcopy(model)
    trainer = MultiTaskTrainer(task_weights={"classification": 1.0, "ner": 0.5}, model=model,
                               args=_args(tmp_path, max_steps=3), train_dataset=data)
    with torch.no_grad():
        out = initial(**_first_batch(trainer))
    trainer.train()
    assert _losses(trainer)[0] == pytest.approx((out.classification_loss + 0.5 * out.ner_loss).item(), rel=1e-5)
    assert _max_diff(model, initial) > 1e-4


def test_uncertainty_weights_on_the_trainer_are_trained(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """``self.log_vars`` is an nn.Parameter on the Trainer subclass, not on the model; the facade
    registers it with the optimizer, so the task weights learn. (transformers.Trainer builds its
    optimizer from the model only, so there the seed's log_vars would never change.)"""
    model, data = _multitask(demo_tokenizer, list(cls_dataset["text"]))
    trainer = UncertaintyWeightedTrainer(model=model, args=_args(tmp_path, max_steps=5, learning_rate=1e-2,
                                                                 weight_decay=0.1), train_dataset=data)
    trainer.train()
    assert trainer.log_vars.abs().min().item() > 1e-3, trainer.log_vars
    optimized = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert any(p is trainer.log_vars for p in optimized)
    assert all(np.isfinite(_losses(trainer)))


def test_contrastive_trainer_is_nt_xent_and_learns(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """Two dropout views of each text (the seed's ContrastiveDataset); the seed's loss equals the
    library's NT-Xent on the pooled outputs, and training lowers it."""
    config = BertConfig(vocab_size=len(demo_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.1)
    torch.manual_seed(0)
    model = BertModel(config)
    contrastive_dataset = ContrastiveDataset(list(cls_dataset["text"]), demo_tokenizer, max_length=16)
    trainer = ContrastiveLearningTrainer(
        temperature=0.07, model=model, train_dataset=contrastive_dataset,
        args=_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=8, remove_unused_columns=False),
    )
    batch = _first_batch(trainer)
    model.eval()
    with torch.no_grad():
        seed_loss = trainer.compute_loss(model, dict(batch))
        z1 = model(input_ids=batch["input_ids_1"], attention_mask=batch["attention_mask_1"]).pooler_output
        z2 = model(input_ids=batch["input_ids_2"], attention_mask=batch["attention_mask_2"]).pooler_output
    assert seed_loss.item() == pytest.approx(nt_xent_loss(z1, z2, temperature=0.07).item(), rel=1e-5)
    trainer.train()
    losses = _losses(trainer)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses


# ============================================================================ training_step override (FGM)
class EmbeddingProbe(TrainerCallback):
    """Input-embedding drift between the start of an optimizer step and the moment before the update."""

    def __init__(self) -> None:
        self.before: torch.Tensor | None = None
        self.drift: list[float] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.before = model.get_input_embeddings().weight.detach().clone()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.drift.append((model.get_input_embeddings().weight.detach() - self.before).abs().max().item())


def test_fgm_restores_embeddings_and_matches_transformers(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """Accumulation 2: after both micro-batches' attack and restore, the embeddings the optimizer
    updates are the clean ones, and the whole run equals the same seed class on transformers.Trainer.

    transformers 5 calls ``training_step(model, inputs, num_items_in_batch)``, so the seed's two-argument
    override raises TypeError there; the shim below restores the call of transformers >= 4.46 (whose
    accelerator, like this one for such overrides, backpropagates the seed's ``loss / GA`` literally).
    """
    hf_base = _on_transformers(AdversarialTrainer)

    class HFAdversarialTrainer(hf_base):  # type: ignore[misc, valid-type]
        def training_step(self, model, inputs, num_items_in_batch=None):
            return super().training_step(model, inputs)

    base = tiny_bert_classifier(len(demo_tokenizer))
    runs = {}
    for name, cls, args_cls in (("hf", HFAdversarialTrainer, transformers.TrainingArguments),
                                ("ours", AdversarialTrainer, TrainingArguments)):
        probe, model = EmbeddingProbe(), copy.deepcopy(base)
        trainer = cls(adv_epsilon=1.0, model=model, train_dataset=cls_dataset, processing_class=demo_tokenizer,
                      args=_args(tmp_path / name, args_cls, gradient_accumulation_steps=2, max_steps=4, max_grad_norm=1.0),
                      callbacks=[probe])
        trainer.train()
        grad_norms = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
        runs[name] = (model, probe, _losses(trainer), grad_norms)
    (hf_model, hf_probe, hf_losses, hf_norms), (our_model, our_probe, our_losses, our_norms) = runs["hf"], runs["ours"]
    assert our_probe.drift == hf_probe.drift == [0.0] * 4
    assert _max_diff(our_model, hf_model) < 1e-5
    assert _max_diff(our_model, base) > 1e-3
    assert our_losses == pytest.approx(hf_losses, rel=1e-5)
    # Adam and clipping hide a constant gradient scale in the weights; the pre-clip norm shows it.
    assert our_norms == pytest.approx(hf_norms, rel=1e-4)


def test_fgm_with_accumulation_and_bf16(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """bf16 autocast on CPU (Lightning's precision plugin) with accumulation 2 and a short last window."""
    probe, model = EmbeddingProbe(), tiny_bert_classifier(len(demo_tokenizer))
    initial = copy.deepcopy(model)
    trainer = AdversarialTrainer(adv_epsilon=1.0, model=model, train_dataset=cls_dataset.select(range(36)),
                                 processing_class=demo_tokenizer, callbacks=[probe],
                                 args=_args(tmp_path, gradient_accumulation_steps=2, bf16=True))
    assert trainer.train().global_step == 5  # 9 micro-batches: windows 2, 2, 2, 2, 1
    assert probe.drift == [0.0] * 5
    assert all(np.isfinite(_losses(trainer))) and _max_diff(model, initial) > 1e-3


# ============================================================================ evaluation_loop override
def test_topk_evaluation_loop_metrics_reach_evaluate(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """The seed's own loop computes top-1/top-k; evaluate() (and evaluation during training) report
    them like HF does, with speed metrics and epoch added; predict() returns its predictions."""
    model = tiny_bert_classifier(len(demo_tokenizer), num_labels=4)
    eval_data = cls_dataset.select(range(16))
    hf = _on_transformers(TopKTrainer)(top_k=2, model=copy.deepcopy(model), eval_dataset=eval_data,
                                       processing_class=demo_tokenizer,
                                       args=_args(tmp_path / "hf", transformers.TrainingArguments))
    trainer = TopKTrainer(top_k=2, model=model, train_dataset=cls_dataset, eval_dataset=eval_data,
                          processing_class=demo_tokenizer, args=_args(tmp_path / "ours", eval_strategy="epoch"))
    before = trainer.evaluate()
    expected = hf.evaluate()
    for key in ("eval_loss", "eval_top1_accuracy", "eval_top2_accuracy"):
        assert before[key] == pytest.approx(expected[key], rel=1e-6), key
    assert set(before) == set(expected)
    trainer.train()
    assert any("eval_top2_accuracy" in entry for entry in trainer.state.log_history)
    out = trainer.predict(eval_data)
    top2 = np.argsort(-out.predictions, axis=1)[:, :2]
    assert out.metrics["test_top2_accuracy"] == pytest.approx(float((top2 == out.label_ids[:, None]).any(1).mean()))


# ============================================================================ callbacks
class LrProbe(TrainerCallback):
    """The learning rate each optimizer step actually uses."""

    def __init__(self) -> None:
        self.used: list[float] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.used.append(optimizer.param_groups[0]["lr"])


def test_warmup_callback_sets_the_lr_it_computes(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """The callback overrides the optimizer's lr at each step end; the next step uses that value (the
    scheduler then takes over again), exactly as under transformers.Trainer."""
    base = tiny_bert_classifier(len(demo_tokenizer))
    used = {}
    for name, cls, args_cls in (("hf", transformers.Trainer, transformers.TrainingArguments),
                                ("ours", Trainer, TrainingArguments)):
        probe = LrProbe()
        trainer = cls(model=copy.deepcopy(base), args=_args(tmp_path / name, args_cls, max_steps=7),
                      train_dataset=cls_dataset, processing_class=demo_tokenizer,
                      callbacks=[WarmupCallback(warmup_steps=3, total_steps=10), probe])
        trainer.train()
        used[name] = probe.used
    expected = [1e-3] + [1e-3 * (k / 3 if k < 3 else 1 - (k - 3) / 7) for k in range(1, 7)]
    assert used["ours"] == pytest.approx(expected) and used["hf"] == pytest.approx(expected)


def test_seed_early_stopping_stops_at_the_expected_step(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """The seed's own EarlyStoppingCallback (patience 2, threshold 1e-3): training ends at the evaluation
    where eval_loss failed to improve twice in a row, the same step as under transformers.Trainer."""
    base = tiny_bert_classifier(len(demo_tokenizer))
    finished = {}
    for name, cls, args_cls in (("hf", transformers.Trainer, transformers.TrainingArguments),
                                ("ours", Trainer, TrainingArguments)):
        trainer = cls(model=copy.deepcopy(base), train_dataset=cls_dataset, eval_dataset=cls_dataset.select(range(8)),
                      processing_class=demo_tokenizer, callbacks=[EarlyStoppingCallback(patience=2, threshold=0.001)],
                      args=_args(tmp_path / name, args_cls, num_train_epochs=3, eval_strategy="steps", eval_steps=2,
                                 learning_rate=2e-2))
        if cls is transformers.Trainer:
            trainer.model_accepts_loss_kwargs = False
        trainer.train()
        finished[name] = trainer
    ours = finished["ours"]
    best, wait, expected = None, 0, None
    for entry in (e for e in ours.state.log_history if "eval_loss" in e):
        if best is None or entry["eval_loss"] < best - 0.001:
            best, wait = entry["eval_loss"], 0
        else:
            wait += 1
            if wait >= 2:
                expected = entry["step"]
                break
    assert expected is not None and expected < 30, "the run must stop early for the test to mean anything"
    assert ours.state.global_step == expected == finished["hf"].state.global_step


def test_gradient_monitor_prints_as_under_transformers(cls_dataset, demo_tokenizer, tmp_path: Path, capsys) -> None:
    """Prints every ``logging_steps`` with the same values as transformers.Trainer. Both clear the
    gradients before ``on_step_end`` (HF calls ``model.zero_grad()`` first), so the seed reads none and
    prints 0.0: its callback needs ``on_pre_optimizer_step`` to see gradients, on either trainer."""
    base = tiny_bert_classifier(len(demo_tokenizer))
    printed = {}
    for name, cls, args_cls in (("hf", transformers.Trainer, transformers.TrainingArguments),
                                ("ours", Trainer, TrainingArguments)):
        cls(model=copy.deepcopy(base), args=_args(tmp_path / name, args_cls, max_steps=6, logging_steps=2),
            train_dataset=cls_dataset, processing_class=demo_tokenizer, callbacks=[GradientMonitorCallback()]).train()
        printed[name] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Step ")]
    assert printed["ours"] == printed["hf"] == [f"Step {s}: Gradient norm = 0.0000" for s in (2, 4, 6)]


def test_versioned_checkpoints_keep_the_last_n(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    trainer = Trainer(model=tiny_bert_classifier(len(demo_tokenizer)), train_dataset=cls_dataset,
                      processing_class=demo_tokenizer, callbacks=[VersionedCheckpointCallback(keep_last_n=2)],
                      args=_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=10))
    trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-8"]


# ============================================================================ seed 000
class NeftuneProbe(TrainerCallback):
    def __init__(self) -> None:
        self.active: list[bool] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.active.append(hasattr(model, _HANDLE_ATTR))


def test_special_features_trainer(cls_dataset, demo_tokenizer, tmp_path: Path) -> None:
    """NEFTune + mixed precision (bf16: fp16 autocast needs CUDA) + the context-parallel hook: the
    override's training_step runs under ``autocast_smart_context_manager``; its evaluate() switches
    NEFTune off and back on around each evaluation during training (the hook is back for the steps
    after it) and nothing is left on the model after training."""
    model = tiny_bert_classifier(len(demo_tokenizer))
    initial = copy.deepcopy(model)
    probe = NeftuneProbe()
    args = _args(tmp_path, neftune_noise_alpha=5.0, bf16=True, eval_strategy="steps", eval_steps=3, max_steps=6)
    trainer = SpecialFeaturesTrainer(model=model, args=args, train_dataset=cls_dataset,
                                     eval_dataset=cls_dataset.select(range(8)), processing_class=demo_tokenizer,
                                     callbacks=[probe])
    trainer.train()
    assert probe.active == [True] * 6
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [3, 6]
    assert not hasattr(model, _HANDLE_ATTR) and _max_diff(model, initial) > 1e-4
    assert "eval_loss" in trainer.evaluate() and not hasattr(model, _HANDLE_ATTR)
