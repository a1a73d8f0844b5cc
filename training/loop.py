"""One training loop for every student, classification or generation.

    plan_schedule   steps, epochs, warm-up and evaluation cadence from the data size
    fit             the loop: length-grouped batches, gradient accumulation, bf16 autocast,
                    validation + early stopping (the best weights are kept), checkpoints every
                    N steps and at each epoch end, exact resume, accelerate trackers

The caller builds the model and says how to collate a batch, how to compute its loss and how
to validate; `fit` does the rest, in one process or under `accelerate launch` with data
parallelism (DDP, tested over gloo; DeepSpeed ZeRO-2 keeps whole parameters on every rank
too). Under FSDP the trainable weights are sharded and this module does not gather them for
checkpoints yet: use DDP or ZeRO-2 for LoRA students, whose frozen base fits one device.

Checkpoints hold only what training changes (the trainable weights, AdamW's moments, the
schedule position, the random states and the loop's history), as safetensors plus JSON:
no pickle is written or read. Resuming from one replays the same batches in the same order
with the same dropout masks, so a resumed run ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainSpec:
    epochs: int | None = None  # None: chosen from the data size (see plan_schedule)
    batch_size: int = 32  # examples per micro-batch and process
    grad_accum: int = 1  # micro-batches per optimiser step
    learning_rate: float = 2e-3  # peak LR of the LoRA weights
    head_learning_rate: float = 5e-3  # peak LR of a new classification head
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # "linear" or "cosine" decay after the warm-up
    target_steps: int = 400  # auto epochs: enough epochs for about this many optimiser steps
    max_epochs: int = 30  # auto epochs never exceed this
    max_length: int = 128
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    group_by_length: bool = True  # batches of similar lengths: less padding, same data
    val_fraction: float = 0.1  # share of the training rows held out for early stopping
    early_stopping_patience: int = 3  # evaluations without improvement before stopping; 0: off
    eval_every_steps: int | None = None  # None: at each epoch end (and every 500 steps)
    checkpoint_every_steps: int = 200  # also at each epoch end; 0: epoch ends only
    keep_checkpoints: int = 2
    loss: str = "ce"  # "ce" on teacher labels, "kl" to the teacher's distribution, or "mix"
    kl_temperature: float = 2.0
    kl_weight: float = 0.5  # share of the KL term in "mix"
    label_smoothing: float = 0.0  # of the cross-entropy term (classification)
    min_epochs: int = 1  # auto epochs never fewer than this
    select_metric: str = "accuracy"  # model selection on validation: "accuracy" or "aurc"
    tracker: str = "tensorboard"  # accelerate tracker ("tensorboard", "none")


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int  # optimiser steps per epoch (per process)
    epochs: int
    total_steps: int
    warmup_steps: int
    eval_every: int  # optimiser steps between validations


def plan_schedule(n_train: int, spec: TrainSpec, processes: int = 1) -> Schedule:
    """Epochs, warm-up and evaluation cadence that follow from the data size.

    With `epochs` unset, small data sets get enough epochs to reach about `target_steps`
    optimiser steps (at most `max_epochs`); large ones get `min_epochs`. Early stopping on the
    validation slice then ends training when it stops helping.
    """
    if n_train <= 0:
        raise ValueError("no training rows")
    per_step = spec.batch_size * spec.grad_accum * processes
    steps_per_epoch = max(1, math.ceil(n_train / per_step))
    epochs = spec.epochs
    if epochs is None:
        wanted = max(spec.min_epochs, math.ceil(spec.target_steps / steps_per_epoch))
        epochs = min(spec.max_epochs, max(1, wanted))
    total = steps_per_epoch * epochs
    eval_every = spec.eval_every_steps or min(steps_per_epoch, 500)
    return Schedule(
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        total_steps=total,
        warmup_steps=int(spec.warmup_ratio * total),
        eval_every=max(1, eval_every),
    )


def lr_factor(schedule: Schedule, kind: str) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < schedule.warmup_steps:
            return (step + 1) / max(1, schedule.warmup_steps)
        progress = (step - schedule.warmup_steps) / max(
            1, schedule.total_steps - schedule.warmup_steps
        )
        progress = min(1.0, progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def bf16_available(device_type: str) -> bool:
    """Whether bf16 matmuls are native here (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


class EpochBatches(torch.utils.data.Sampler):
    """The batches of one epoch, a pure function of (seed, epoch): shuffle, then (when grouping
    by length) sort within windows of 16 batches and shuffle the batches. Every example is seen
    once per epoch; padding shrinks several-fold. Set `epoch` before iterating."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: bool) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if not self.group:
            for start in range(0, len(order), self.batch_size):
                yield order[start : start + self.batch_size]
            return
        window = self.batch_size * 16
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda i: self.lengths[i])
            batches += [
                chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)
            ]
        for k in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[k]


@dataclass
class FitResult:
    n_train: int
    n_val: int
    steps: int  # optimiser steps taken
    epochs: int  # planned epochs
    epochs_run: float
    duration_s: float
    precision: str
    trainable_params: int
    total_params: int
    first_loss: float
    final_loss: float  # mean loss of the last epoch run
    best_step: int | None  # the step whose weights were kept (None: the last)
    best_val: dict[str, float] | None
    stopped_early: bool
    resumed_from_step: int | None
    examples_per_s: float
    num_processes: int = 1
    schedule: dict[str, int] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)  # step, loss, metric

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _State:
    """Where the loop is; saved in every checkpoint as JSON."""

    step: int = 0  # optimiser steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed (per process)
    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    running: list[float] = field(default_factory=list)  # losses of the current epoch
    val_history: list[dict[str, float]] = field(default_factory=list)
    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    stopped_early: bool = False
    elapsed_s: float = 0.0
    examples_seen: int = 0


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: param.detach().clone().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint has weights the model does not: {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


# ── checkpoints (safetensors + JSON, written to a temporary folder, then renamed) ──────────
def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = float(value)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    template = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, slots in meta["scalars"].items():
        for name, value in slots.items():
            state.setdefault(int(index), {})[name] = torch.tensor(value)
    groups = []
    for saved, current in zip(meta["param_groups"], template["param_groups"], strict=True):
        groups.append({**saved, "params": current["params"]})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in `folder` (complete: its state.json exists)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("step-*") if (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _save_checkpoint(
    folder: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: _State,
    best: dict[str, torch.Tensor] | None,
    fingerprint: str,
    keep: int,
) -> Path:
    from safetensors.torch import save_file

    final = folder / f"step-{state.step:07d}"
    tmp = folder / f".tmp-step-{state.step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
    if best is not None:
        save_file(best, str(tmp / "best.safetensors"))
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    document = {
        "fingerprint": fingerprint,
        "loop": asdict(state),
        "optimizer": opt_meta,
        "scheduler": {"last_epoch": scheduler.last_epoch},
        "rng": rng_meta,
    }
    (tmp / "state.json").write_text(json.dumps(document) + "\n", encoding="utf-8")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    finished = sorted(
        (p for p in folder.glob("step-*") if (p / "state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for old in finished[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    fingerprint: str,
) -> tuple[_State, dict[str, torch.Tensor] | None]:
    from safetensors.torch import load_file

    document = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if document["fingerprint"] != fingerprint:
        raise ResumeMismatch(
            f"checkpoint {path} was written for other data or settings; "
            "delete it or train without --resume"
        )
    load_trainable_state(model, load_file(str(path / "trainable.safetensors")))
    _restore_optimizer(
        optimizer, load_file(str(path / "optimizer.safetensors")), document["optimizer"]
    )
    scheduler.last_epoch = document["scheduler"]["last_epoch"]
    scheduler._last_lr = [  # the LR the next step uses, as LambdaLR.step would have set it
        base * fn(scheduler.last_epoch)
        for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, lr in zip(optimizer.param_groups, scheduler._last_lr, strict=True):
        group["lr"] = lr
    _restore_rng(load_file(str(path / "rng.safetensors")), document["rng"])
    best_file = path / "best.safetensors"
    best = load_file(str(best_file)) if best_file.is_file() else None
    return _State(**document["loop"]), best


class ResumeMismatch(ValueError):
    """A checkpoint written for other data or settings than the run resuming from it."""


# ── the loop ────────────────────────────────────────────────────────────────────────────
def fit(
    model: torch.nn.Module,
    param_groups: list[dict[str, Any]],
    lengths: Sequence[int],
    collate: Callable[[list[int]], Batch],
    loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor],
    validate: Callable[[torch.nn.Module], dict[str, float]] | None,
    spec: TrainSpec,
    *,
    accelerator,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    fingerprint: str = "",
    run_name: str = "train",
    n_val: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[torch.nn.Module, FitResult]:
    """Train `model` (trainable parameters already marked) and return it with its history.

    `validate(model)` returns at least {"loss", "metric"} (higher metric is better) on the
    held-out slice; the weights of the best validation are restored at the end. Without
    `validate`, the last weights are kept. `on_step(step)` is called after every optimiser
    step. Returns the unwrapped model.
    """
    n_train = len(lengths)
    if spec.loss not in ("ce", "kl", "mix"):
        raise ValueError(f"loss must be ce, kl or mix, got {spec.loss!r}")
    if spec.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {spec.precision!r}")
    if spec.select_metric not in ("accuracy", "aurc"):
        raise ValueError(f"select_metric must be accuracy or aurc, got {spec.select_metric!r}")
    schedule = plan_schedule(n_train, spec, accelerator.num_processes)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    sampler = EpochBatches(lengths, spec.batch_size, spec.seed, spec.group_by_length)
    loader = torch.utils.data.DataLoader(
        list(range(n_train)),
        batch_sampler=sampler,
        collate_fn=collate,
        # its own generator: starting an epoch must not draw from the global RNG (dropout),
        # or a resumed run would see other dropout masks than an uninterrupted one
        generator=torch.Generator().manual_seed(spec.seed),
    )
    # the fused kernel updates every parameter in one pass (CPU and CUDA in torch >= 2.4)
    device = accelerator.device.type
    fused = device in ("cpu", "cuda") and all(
        p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for group in param_groups
        for p in group["params"]
    )
    optimizer = torch.optim.AdamW(param_groups, weight_decay=spec.weight_decay, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, spec.schedule))
    # the scheduler is stepped by hand once per optimiser step: not handed to accelerate
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    use_bf16 = spec.precision == "bf16" or (
        spec.precision == "auto" and bf16_available(accelerator.device.type)
    )

    state, best = _State(), None
    resumed_from = None
    if not resume and checkpoint_dir is not None and accelerator.is_main_process:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)  # a fresh run: none of its own yet
    accelerator.wait_for_everyone()
    if resume and checkpoint_dir is not None:
        found = latest_checkpoint(checkpoint_dir)
        if found is not None:
            state, best = _load_checkpoint(
                found, accelerator.unwrap_model(model), optimizer, scheduler, fingerprint
            )
            resumed_from = state.step
            log(f"resumed from {found.name} (epoch {state.epoch + 1}, step {state.step})")
    tracking = spec.tracker != "none"
    if tracking:
        accelerator.init_trackers(run_name, config=_tracker_config(spec, schedule, n_train))

    bar = tqdm(
        total=schedule.total_steps,
        initial=state.step,
        desc=run_name,
        unit="step",
        disable=not progress or not accelerator.is_main_process,
    )
    micro_per_epoch = len(loader)
    started = time.perf_counter() - state.elapsed_s

    def checkpoint() -> None:
        state.elapsed_s = time.perf_counter() - started
        if checkpoint_dir is not None and accelerator.is_main_process:
            _save_checkpoint(
                checkpoint_dir, accelerator.unwrap_model(model), optimizer, scheduler, state,
                best, fingerprint, spec.keep_checkpoints,
            )  # fmt: skip
        accelerator.wait_for_everyone()

    def evaluate() -> bool:
        """Validate; keep the best weights; True when training should stop."""
        nonlocal best
        if validate is None:
            return False
        model.eval()
        with torch.no_grad(), torch.autocast(accelerator.device.type, torch.bfloat16, use_bf16):
            scores = validate(accelerator.unwrap_model(model))
        model.train()
        if accelerator.num_processes > 1:  # every rank decides on rank 0's numbers
            from accelerate.utils import broadcast_object_list

            shared = [scores]
            broadcast_object_list(shared, from_process=0)
            scores = shared[0]
        entry = {"step": state.step, "epoch": state.epoch + state.batch_in_epoch / micro_per_epoch}
        entry |= {k: float(v) for k, v in scores.items()}
        state.val_history.append(entry)
        if tracking:
            accelerator.log({f"val/{k}": v for k, v in scores.items()}, step=state.step)
        metric = float(scores["metric"])
        if state.best_metric is None or metric > state.best_metric:
            state.best_metric, state.best_step, state.bad_evals = metric, state.step, 0
            best = trainable_state(accelerator.unwrap_model(model))
        else:
            state.bad_evals += 1
        patience = spec.early_stopping_patience
        return patience > 0 and state.bad_evals >= patience

    model.train()
    while state.epoch < schedule.epochs and not state.stopped_early:
        sampler.epoch = state.epoch
        batches = loader
        if state.batch_in_epoch:  # resumed mid-epoch: the same batches, minus those done
            batches = accelerator.skip_first_batches(loader, state.batch_in_epoch)
        window: list[float] = []
        for batch in batches:
            start = state.batch_in_epoch - state.batch_in_epoch % spec.grad_accum
            window_size = min(spec.grad_accum, micro_per_epoch - start)  # short at epoch end
            state.batch_in_epoch += 1
            boundary = (
                state.batch_in_epoch % spec.grad_accum == 0
                or state.batch_in_epoch == micro_per_epoch
            )
            context = accelerator.no_sync(model) if not boundary else _nullcontext()
            with context:
                with torch.autocast(accelerator.device.type, torch.bfloat16, use_bf16):
                    loss = loss_fn(model, batch)
                accelerator.backward(loss / window_size)
            window.append(loss.detach().float())
            state.examples_seen += _batch_size(batch) * accelerator.num_processes
            if not boundary:
                continue
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            value = accelerator.gather(torch.stack(window).mean()[None]).mean().item()
            window = []
            state.step += 1
            state.step_losses.append(value)
            state.running.append(value)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if tracking:
                lr = scheduler.get_last_lr()[0]
                accelerator.log({"train/loss": value, "train/lr": lr}, step=state.step)
            last_of_epoch = state.batch_in_epoch == micro_per_epoch
            if state.step % schedule.eval_every == 0 and not last_of_epoch and evaluate():
                state.stopped_early = True
                break
            every = spec.checkpoint_every_steps
            if every and state.step % every == 0 and not last_of_epoch:
                checkpoint()
            if on_step is not None:
                on_step(state.step)
        else:  # the epoch ran to its end
            state.epoch_losses.append(float(np.mean(state.running)) if state.running else 0.0)
            state.running = []
            state.epoch += 1
            state.batch_in_epoch = 0
            if evaluate():
                state.stopped_early = True
            checkpoint()
            continue
        if state.running:  # stopped early mid-epoch
            state.epoch_losses.append(float(np.mean(state.running)))
    bar.close()
    state.elapsed_s = time.perf_counter() - started
    unwrapped = accelerator.unwrap_model(model)
    if best is not None:
        load_trainable_state(unwrapped, best)
    if tracking:  # not end_training(): that also tears down the process group
        for tracker in accelerator.trackers:
            tracker.finish()
    accelerator.wait_for_everyone()
    best_val = None
    if state.best_step is not None:
        best_val = next(e for e in state.val_history if e["step"] == state.best_step)
    epochs_run = state.epoch + state.batch_in_epoch / max(1, micro_per_epoch)
    result = FitResult(
        n_train=n_train,
        n_val=n_val,
        steps=state.step,
        epochs=schedule.epochs,
        epochs_run=round(epochs_run, 4),
        duration_s=state.elapsed_s,
        precision="bf16" if use_bf16 else "fp32",
        trainable_params=trainable,
        total_params=total_params,
        first_loss=state.step_losses[0] if state.step_losses else float("nan"),
        final_loss=state.epoch_losses[-1] if state.epoch_losses else float("nan"),
        best_step=state.best_step,
        best_val=best_val,
        stopped_early=state.stopped_early,
        resumed_from_step=resumed_from,
        examples_per_s=state.examples_seen / max(state.elapsed_s, 1e-9),
        num_processes=accelerator.num_processes,
        schedule=asdict(schedule),
        epoch_losses=state.epoch_losses,
        step_losses=state.step_losses,
        val_history=state.val_history,
    )
    return unwrapped, result


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right", value: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) padded to the longest sequence, on the right or the left;
    `value` fills the padding instead of `pad_id` (e.g. -100 for label masks)."""
    width = max(len(s) for s in sequences)
    fill = pad_id if value is None else value
    ids = torch.full((len(sequences), width), fill, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def _batch_size(batch: Batch) -> int:
    return int(next(iter(batch.values())).shape[0])


def _tracker_config(spec: TrainSpec, schedule: Schedule, n_train: int) -> dict[str, Any]:
    config = {k: v for k, v in asdict(spec).items() if v is not None}
    return config | asdict(schedule) | {"n_train": n_train}


def soft_target_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    has_probs: torch.Tensor | None,
    spec: TrainSpec,
) -> torch.Tensor:
    """Cross-entropy on the teacher's labels, KL to its (tempered) distribution, or their mix.

    KL(p_T || q_T) · T², with p_T ∝ p^(1/T) the teacher's tempered probabilities and q_T the
    student's softmax at temperature T (Hinton et al., 2015). Rows without teacher
    probabilities fall back to cross-entropy.
    """
    logits = logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits, targets, reduction="none", label_smoothing=spec.label_smoothing
    )
    if spec.loss == "ce" or teacher_probs is None or has_probs is None:
        return ce.mean()
    t = spec.kl_temperature
    tempered = torch.clamp(teacher_probs.float(), min=1e-12) ** (1.0 / t)
    tempered = tempered / tempered.sum(dim=-1, keepdim=True)
    log_student = torch.log_softmax(logits / t, dim=-1)
    kl = (tempered * (torch.log(tempered) - log_student)).sum(dim=-1) * t * t
    weight = 1.0 if spec.loss == "kl" else spec.kl_weight
    mixed = (1 - weight) * ce + weight * kl
    return torch.where(has_probs, mixed, ce).mean()
