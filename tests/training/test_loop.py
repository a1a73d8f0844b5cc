"""The training loop: schedule from the data size, early stopping, accumulation, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import tiny
from training.classifier import LoraSpec, train_classifier
from training.loop import TrainSpec, fit, plan_schedule, soft_target_loss

ROOT = Path(__file__).resolve().parents[2]


def test_schedule_follows_the_data_size():
    small = plan_schedule(500, TrainSpec())
    assert small.steps_per_epoch == 16 and small.epochs == 25  # ~400 steps
    assert small.warmup_steps == int(0.06 * small.total_steps)
    assert plan_schedule(500_000, TrainSpec()).epochs == 1
    assert plan_schedule(50, TrainSpec()).epochs == 30  # capped at max_epochs
    assert plan_schedule(500, TrainSpec(epochs=3)).epochs == 3
    assert plan_schedule(500, TrainSpec(grad_accum=2), processes=2).steps_per_epoch == 4


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)


def _toy_fit(spec: TrainSpec, validate, **kwargs):
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = _Toy()
    data = torch.randn(64, 4)
    labels = data[:, :3].argmax(dim=1)

    def collate(indices):
        return {"x": data[indices], "y": labels[indices]}

    def loss_fn(model, batch):
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    params = [{"params": list(model.parameters()), "lr": spec.learning_rate}]
    return fit(
        model, params, [1] * 64, collate, loss_fn, validate, spec,
        accelerator=Accelerator(cpu=True), progress=False, **kwargs,
    )  # fmt: skip


def test_early_stopping_keeps_the_best_weights():
    spec = TrainSpec(epochs=10, batch_size=16, learning_rate=0.1, early_stopping_patience=2,
                     tracker="none", precision="fp32")  # fmt: skip
    snapshots = []
    metrics = iter([0.5, 0.9, 0.7, 0.6, 0.8, 0.99])

    def validate(model):
        snapshots.append(model.linear.weight.detach().clone())
        return {"loss": 0.0, "metric": next(metrics)}

    model, result = _toy_fit(spec, validate)
    assert result.stopped_early and len(result.val_history) == 4  # 0.9, then two worse
    assert result.best_step == 8 and result.best_val["metric"] == 0.9
    assert torch.equal(model.linear.weight, snapshots[1])  # the best, not the last
    assert result.steps == 16 and result.epochs_run == 4


def test_gradient_accumulation_counts_optimiser_steps():
    spec = TrainSpec(epochs=2, batch_size=8, grad_accum=4, tracker="none", precision="fp32")
    _, result = _toy_fit(spec, None)
    assert result.steps == 4  # 8 micro-batches per epoch, 4 per step
    assert len(result.step_losses) == 4


def test_kl_loss_matches_its_formula_and_falls_back_to_ce():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([0, 1])
    teacher = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 0.0]])
    has = torch.tensor([True, False])
    spec = TrainSpec(loss="kl", kl_temperature=2.0)
    got = soft_target_loss(logits, targets, teacher, has, spec)
    p = teacher[0] ** 0.5 / (teacher[0] ** 0.5).sum()
    q = torch.log_softmax(logits[0] / 2.0, dim=-1)
    kl = (p * (p.log() - q)).sum() * 4.0
    ce = torch.nn.functional.cross_entropy(logits[1:], targets[1:])
    assert got.item() == pytest.approx(((kl + ce) / 2).item(), rel=1e-5)
    mix = soft_target_loss(logits, targets, teacher, has, TrainSpec(loss="mix", kl_weight=0.5))
    ce0 = torch.nn.functional.cross_entropy(logits[:1], targets[:1])
    assert mix.item() == pytest.approx(((0.5 * ce0 + 0.5 * kl + ce) / 2).item(), rel=1e-5)
    plain = soft_target_loss(logits, targets, teacher, has, TrainSpec(loss="ce"))
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item())


_KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.training.test_loop import _train
def die(step):
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
from pathlib import Path
_train({base!r}, {out!r}, Path({ckpt!r}), resume=False, on_step=die)
"""


def _train(base, out, checkpoints, resume, on_step=None):
    rows = tiny.make_rows(200)
    texts = [r["text"] for r in rows]
    targets = [tiny.LABELS.index(r["intent"]) for r in rows]
    spec = TrainSpec(
        batch_size=16, learning_rate=1e-2, head_learning_rate=3e-2, max_length=32,
        checkpoint_every_steps=5, target_steps=60, tracker="none", precision="fp32",
    )  # fmt: skip
    return train_classifier(
        str(base), texts, targets, tiny.LABELS, Path(out), spec, LoraSpec(r=4, alpha=8),
        progress=False, checkpoint_dir=checkpoints, resume=resume, on_step=on_step,
    )  # fmt: skip


def test_a_run_killed_mid_training_resumes_to_the_same_result(tiny_student, tmp_path):
    from safetensors.torch import load_file

    straight = _train(tiny_student, tmp_path / "a", tmp_path / "ck-a", resume=False)
    script = _KILLED_RUN.format(
        root=str(ROOT), kill_at=23, base=str(tiny_student), out=str(tmp_path / "b"),
        ckpt=str(tmp_path / "ck-b"),
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr.decode()[-800:])
    assert not (tmp_path / "b").exists()
    saved = sorted(p.name for p in (tmp_path / "ck-b").iterdir())
    assert saved == ["step-0000015", "step-0000020"]  # the newest two, complete
    resumed = _train(tiny_student, tmp_path / "b", tmp_path / "ck-b", resume=True)
    assert resumed.resumed_from_step == 20
    # same seed, same batches, same dropout: the same run, bit for bit on this CPU
    assert resumed.step_losses == pytest.approx(straight.step_losses, abs=1e-6)
    assert resumed.best_val == pytest.approx(straight.best_val, abs=1e-6)
    a = load_file(str(tmp_path / "a/adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b/adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    metrics = json.loads((tmp_path / "b/training_metrics.json").read_text())
    assert metrics["resumed_from_step"] == 20 and metrics["val_history"]


def test_resume_refuses_a_checkpoint_of_other_data(tiny_student, tmp_path):
    from training.loop import ResumeMismatch

    _train(tiny_student, tmp_path / "a", tmp_path / "ck", resume=False)
    rows = tiny.make_rows(120)
    with pytest.raises(ResumeMismatch, match="other data or settings"):
        train_classifier(
            str(tiny_student), [r["text"] for r in rows],
            [tiny.LABELS.index(r["intent"]) for r in rows], tiny.LABELS, tmp_path / "c",
            TrainSpec(batch_size=16, max_length=32, target_steps=60, tracker="none",
                      checkpoint_every_steps=5),
            LoraSpec(r=4, alpha=8), progress=False, checkpoint_dir=tmp_path / "ck", resume=True,
        )  # fmt: skip


def test_tensorboard_logs_are_written(tiny_student, tmp_path):
    rows = tiny.make_rows(60)
    train_classifier(
        str(tiny_student), [r["text"] for r in rows],
        [tiny.LABELS.index(r["intent"]) for r in rows], tiny.LABELS, tmp_path / "a",
        TrainSpec(epochs=2, batch_size=16, max_length=32), LoraSpec(r=4, alpha=8),
        progress=False, log_dir=tmp_path / "logs", run_name="intent",
    )  # fmt: skip
    assert list((tmp_path / "logs/intent").rglob("events.out.tfevents.*"))


def test_accumulated_micro_batches_equal_one_big_batch_even_when_the_last_is_short():
    from accelerate import Accelerator

    def run(batch_size, grad_accum):
        torch.manual_seed(0)
        model = _Toy()
        data = torch.randn(40, 4)  # big batches 16+16+8; micro 8+8 | 8+8 | 8
        labels = data[:, :3].argmax(dim=1)
        spec = TrainSpec(epochs=1, batch_size=batch_size, grad_accum=grad_accum,
                         learning_rate=0.1, warmup_ratio=0, group_by_length=False,
                         tracker="none", precision="fp32", val_fraction=0)  # fmt: skip
        return fit(
            model, [{"params": list(model.parameters()), "lr": 0.1}], [1] * 40,
            lambda idx: {"x": data[idx], "y": labels[idx]},
            lambda m, b: torch.nn.functional.cross_entropy(m(b["x"]), b["y"]),
            None, spec, accelerator=Accelerator(cpu=True), progress=False,
        )  # fmt: skip

    big, big_result = run(16, 1)
    small, small_result = run(8, 2)
    assert big_result.steps == small_result.steps == 3
    assert torch.allclose(big.linear.weight, small.linear.weight, atol=1e-6)


def test_a_fresh_run_clears_checkpoints_of_an_earlier_one(tmp_path):
    stale = tmp_path / "ck" / "step-0000999"
    stale.mkdir(parents=True)
    (stale / "state.json").write_text("{}")
    spec = TrainSpec(epochs=2, batch_size=16, tracker="none", precision="fp32",
                     checkpoint_every_steps=2)  # fmt: skip
    _toy_fit(spec, None, checkpoint_dir=tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "step-0000006", "step-0000008"
    ]  # fmt: skip
