"""An iteration-based trainer in plain PyTorch with hooks (in the manner of detectron2's
SimpleTrainer): SGD with momentum and weight decay, linear warmup then step decay, gradient
clipping, AMP on GPU, a progress bar with the loss, and a stop on a non-finite loss.

On N processes (``alseg.distributed``) the model is wrapped in DistributedDataParallel and
``batch_size`` stays the total batch (detectron2's IMS_PER_BATCH): each process takes its
``batch_size / N`` images of every global batch, so the images of a step, the learning-rate
schedule and the effective batch are those of the single-process run. After training every
process holds rank 0's parameters and buffers."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from alseg import distributed
from alseg.config_check import is_int, is_number
from alseg.data.torch_dataset import TrainingSet, collate
from alseg.errors import ConfigError, TrainingError
from alseg.models.base import MASK_IOU_HEAD, POINT_SUPERVISION


@dataclass
class TrainerConfig:
    iters: int = 400
    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    steps: Sequence[float] = (0.8,)  # decay points, as fractions of iters
    gamma: float = 0.1
    grad_clip: float | None = 10.0
    amp: bool = True  # only takes effect on CUDA
    num_workers: int = 0
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA, N > 1 processes); BatchNorm layers only

    def validate(self, where: str = "trainer.schedule") -> None:
        for name, value in self.__dict__.items():
            is_kind, words = _FIELD_TYPES[name]
            if not is_kind(value):
                raise ConfigError(f"{where}.{name} must be {words}, got {value!r}")
        checks = [
            (self.iters >= 1, "iters must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_iters >= 0, "warmup_iters must be >= 0"),
            (0 < self.warmup_factor <= 1, "warmup_factor must be in (0, 1]"),
            (all(0 < s <= 1 for s in self.steps), "steps must be fractions in (0, 1]"),
            (0 < self.gamma <= 1, "gamma must be in (0, 1]"),
            (self.grad_clip is None or self.grad_clip > 0, "grad_clip must be > 0 or null"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{where}.{msg}")

    @classmethod
    def from_mapping(cls, fields: dict, where: str) -> "TrainerConfig":
        """Built from a config mapping and validated; errors name ``where`` (e.g. trainer.schedule)."""
        _check_fields(fields, where)
        out = cls(**fields)
        out.validate(where)
        return out

    def with_overrides(self, overrides: dict, where: str) -> "TrainerConfig":
        """A copy with the non-null fields of ``overrides`` replaced (null keeps this one's)."""
        _check_fields(overrides, where)
        return self.from_mapping({**self.__dict__, **{k: v for k, v in overrides.items() if v is not None}}, where)

    def lr_factor(self, it: int) -> float:
        f = self.gamma ** sum(it >= int(s * self.iters) for s in self.steps)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            f *= self.warmup_factor * (1 - alpha) + alpha
        return f


_INT, _NUMBER = (is_int, "an integer"), (is_number, "a number")
_FIELD_TYPES = {
    "iters": _INT, "batch_size": _INT, "warmup_iters": _INT, "num_workers": _INT,
    "lr": _NUMBER, "momentum": _NUMBER, "weight_decay": _NUMBER, "warmup_factor": _NUMBER, "gamma": _NUMBER,
    "grad_clip": (lambda v: v is None or is_number(v), "a number or null"),
    "steps": (lambda v: isinstance(v, (list, tuple)) and all(map(is_number, v)), "a list of numbers"),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "sync_bn": (lambda v: isinstance(v, bool), "true or false"),
}


def _check_fields(fields: dict, where: str) -> None:
    unknown = sorted(set(fields) - set(TrainerConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]} is not a schedule field; "
                          f"choose from {sorted(TrainerConfig.__dataclass_fields__)}")


def check_processes(cfg: TrainerConfig, ranks: int, device_type: str, where: str = "trainer.schedule") -> None:
    """What training on ``ranks`` processes asks of a schedule (ConfigError naming ``where``): a
    total batch the processes divide, and SyncBatchNorm only on CUDA."""
    if cfg.batch_size % ranks:
        raise ConfigError(f"{where}.batch_size ({cfg.batch_size}) must be a multiple of the number of processes "
                          f"({ranks}): it is the total batch, split evenly across them")
    if ranks > 1 and cfg.sync_bn and device_type != "cuda":
        raise ConfigError(f"{where}.sync_bn: SyncBatchNorm needs CUDA (one GPU per process); set it to false for a "
                          f"run on CPU processes")


class InfiniteSampler(Sampler):
    """Shuffled passes over the dataset, forever; yields (index, draw) so that augmentations are a
    function of the seed and the draw number only.

    With ``ranks`` > 1 the global stream (the single-process one) is cut into batches of
    ``batch_size`` and rank ``rank`` yields its contiguous ``batch_size / ranks`` of each."""

    def __init__(self, n: int, seed: int, rank: int = 0, ranks: int = 1, batch_size: int = 1):
        if batch_size % ranks:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of the number of processes ({ranks})")
        self.n, self.seed = n, seed
        self.rank, self.ranks, self.batch_size = rank, ranks, batch_size
        self.per_rank = batch_size // ranks

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng(self.seed)
        draw = 0
        lo, hi = self.rank * self.per_rank, (self.rank + 1) * self.per_rank
        while True:
            for i in rng.permutation(self.n):
                if lo <= draw % self.batch_size < hi:
                    yield int(i), draw
                draw += 1


class HookBase:
    def before_train(self, trainer: "Trainer") -> None: ...
    def after_step(self, trainer: "Trainer") -> None: ...
    def after_train(self, trainer: "Trainer") -> None: ...


class ProgressHook(HookBase):
    def __init__(self, desc: str = "train", every: int = 10, enabled: bool = True):
        self.desc, self.every, self.enabled = desc, every, enabled
        self.bar = None

    def before_train(self, trainer):
        self.bar = tqdm(total=trainer.cfg.iters, desc=self.desc, leave=False, disable=not self.enabled)

    def after_step(self, trainer):
        self.bar.update(1)
        if trainer.iter % self.every == 0:
            self.bar.set_postfix(loss=f"{trainer.last_loss:.3f}", lr=f"{trainer.current_lr:.2g}")

    def after_train(self, trainer):
        self.bar.close()


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class LogProgressHook(HookBase):
    """Training progress in the log (hence run.log), in the manner of detectron2's CommonMetricPrinter:
    every ``every`` iterations, or sooner when ``max_seconds`` passed since the last line (slow
    machines), and at the last iteration. A line gives the iteration, the losses averaged since the
    previous line (total, then each term), the learning rate, iterations per second since the start
    and the estimated time left, e.g.
    ``round 0 train: iter 40/400  loss 1.873 (loss_classifier 0.412, ...)  lr 0.0080  3.05 it/s  ETA 1m58s``."""

    def __init__(self, desc: str = "train", every: int = 50, max_seconds: float = 60.0,
                 logger: logging.Logger | None = None):
        if every < 1:
            raise ConfigError(f"trainer.log_every must be >= 1, got {every}")
        self.desc, self.every, self.max_seconds = desc, every, max_seconds
        self.log = logger or logging.getLogger(__name__)
        self.window: list[dict[str, float]] = []

    def before_train(self, trainer):
        self.start = self.last = time.perf_counter()
        self.window = []
        n = distributed.working_ranks()
        split = f" ({trainer.cfg.batch_size // n} per process x {n} processes)" if n > 1 else ""
        self.log.info("%s: %d iterations, batch %d%s, base lr %g", self.desc, trainer.cfg.iters,
                      trainer.cfg.batch_size, split, trainer.cfg.lr)

    def after_step(self, trainer):
        self.window.append(trainer.last_losses)
        done, total = trainer.iter + 1, trainer.cfg.iters
        now = time.perf_counter()
        if done % self.every and done != total and now - self.last < self.max_seconds:
            return
        terms = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[-1]}
        rate = done / max(now - self.start, 1e-9)
        parts = ", ".join(f"{k} {v:.3f}" for k, v in terms.items())
        eta = "done" if done == total else f"ETA {_duration((total - done) / rate)}"
        self.log.info("%s: iter %d/%d  loss %.3f (%s)  lr %.2g  %.2f it/s  %s", self.desc, done, total,
                      sum(terms.values()), parts, trainer.current_lr, rate, eta)
        self.window, self.last = [], now


class LossAverageHook(HookBase):
    """Mean of each loss term over the last ``window`` iterations, for the round's metrics."""

    def __init__(self, window: int = 50):
        self.window = window
        self.history: list[dict[str, float]] = []

    def after_step(self, trainer):
        self.history.append(trainer.last_losses)
        if len(self.history) > self.window:
            self.history.pop(0)

    def summary(self) -> dict[str, float]:
        if not self.history:
            return {}
        keys = self.history[-1].keys()
        return {f"train/{k}": float(np.mean([h[k] for h in self.history])) for k in keys}


class Trainer:
    def __init__(self, model: torch.nn.Module, dataset: TrainingSet, cfg: TrainerConfig, device: str = "cpu",
                 seed: int = 0, hooks: Sequence[HookBase] = ()):
        cfg.validate()
        if len(dataset) == 0:
            raise TrainingError("no labeled image to train on")
        self.model, self.dataset, self.cfg, self.device = model, dataset, cfg, torch.device(device)
        self.hooks = list(hooks)
        ranks = distributed.working_ranks()
        check_processes(cfg, ranks, self.device.type)
        sampler = InfiniteSampler(len(dataset), seed, distributed.rank() if ranks > 1 else 0, ranks,
                                  cfg.batch_size)
        self.module = self._wrap(model, cfg) if ranks > 1 else model  # what the step calls
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cfg.lr_factor)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size // ranks,
            sampler=sampler,
            collate_fn=collate,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        self.iter = 0
        self.last_loss = math.nan
        self.last_losses: dict[str, float] = {}

    def _wrap(self, model: torch.nn.Module, cfg: TrainerConfig) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (SyncBatchNorm first when asked). A model whose steps
        may leave parameters unused (a mask-IoU head fitted separately; the mask branch of a batch
        with only boxes, under point supervision) gets find_unused_parameters (one more pass over
        the autograd graph per step); the others do not need it."""
        if cfg.sync_bn:  # CUDA only: check_processes
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        unused = bool(set(getattr(model, "capabilities", ())) & {MASK_IOU_HEAD, POINT_SUPERVISION})
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)

    @property
    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train(self) -> None:
        self.model.train()
        for h in self.hooks:
            h.before_train(self)
        data_iter = iter(self.loader)
        for self.iter in range(self.cfg.iters):
            images, targets = next(data_iter)
            self.run_step(images, targets)
            for h in self.hooks:
                h.after_step(self)
        # DDP keeps the parameters equal but each process's BatchNorm statistics are its own (its
        # last batches): every process takes rank 0's, the ones the checkpoint keeps, so that pool
        # inference and evaluation shards see the model a resumed run loads.
        distributed.broadcast_model(self.model)
        for h in self.hooks:
            h.after_train(self)

    def run_step(self, images, targets) -> None:
        images = [im.to(self.device, non_blocking=True) for im in images]
        targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(self.device.type, enabled=self.use_amp):
            losses = self.module(images, targets)
        loss = sum(losses.values())
        # The terms averaged over processes, for the log and the stop (every rank stops together).
        values = distributed.all_reduce_sum(torch.stack([v.detach().float().reshape(()) for v in losses.values()]))
        values = (values / distributed.working_ranks()).tolist()
        if not math.isfinite(sum(values)):
            terms = ", ".join(f"{k}={v:.4g}" for k, v in zip(losses, values))
            error = TrainingError(f"non-finite loss at iteration {self.iter} ({terms}); lower trainer.lr or check the data")
            raise distributed.shared(error) if distributed.working_ranks() > 1 else error
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.last_loss = float(sum(values))
        self.last_losses = dict(zip(losses, values))
