import pytest
import torch

import logging

from alseg.engine import trainer as trainer_module
from alseg.engine.trainer import LogProgressHook, Trainer, TrainerConfig
from alseg.errors import ConfigError, TrainingError


def test_lr_schedule_warmup_then_steps():
    c = TrainerConfig(iters=100, warmup_iters=10, warmup_factor=0.1, steps=[0.5, 0.8], gamma=0.1)
    assert c.lr_factor(0) == pytest.approx(0.1)
    assert c.lr_factor(5) == pytest.approx(0.1 * 0.5 + 0.5)
    assert c.lr_factor(10) == 1.0 and c.lr_factor(49) == 1.0
    assert c.lr_factor(50) == pytest.approx(0.1) and c.lr_factor(80) == pytest.approx(0.01)


@pytest.mark.parametrize("field, value", [("iters", 0), ("lr", -1.0), ("momentum", 1.0), ("steps", [1.5])])
def test_invalid_trainer_values(field, value):
    with pytest.raises(ConfigError, match=f"trainer.schedule.{field}"):
        TrainerConfig(**{field: value}).validate()


class _NanModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, images, targets):
        return {"loss_mask": self.w * float("nan")}


class _OneItem(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, key):
        return torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4)}


def test_nan_loss_stops_with_a_clear_error():
    t = Trainer(_NanModel(), _OneItem(), TrainerConfig(iters=3, warmup_iters=0))
    with pytest.raises(TrainingError, match="non-finite loss at iteration 0 .*loss_mask=nan"):
        t.train()


class _FakeTrainer:
    """What LogProgressHook reads from a Trainer."""

    def __init__(self, iters):
        self.cfg = TrainerConfig(iters=iters, batch_size=2, lr=0.01)
        self.iter, self.last_losses, self.current_lr = 0, {}, 0.01


def test_progress_lines_average_the_losses_since_the_last_line(monkeypatch, caplog):
    clock = iter(range(0, 1000, 2))  # 2 s per call: 1 iteration per 2 s -> 0.50 it/s
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    t, hook = _FakeTrainer(5), LogProgressHook("round 3 train", every=2, max_seconds=1e9)
    with caplog.at_level(logging.INFO, logger="alseg.engine.trainer"):
        hook.before_train(t)
        for i, (a, b) in enumerate([(1.0, 0.5), (3.0, 1.5), (2.0, 0.0), (4.0, 2.0), (5.0, 1.0)]):
            t.iter, t.last_losses = i, {"loss_a": a, "loss_b": b}
            hook.after_step(t)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "round 3 train: 5 iterations, batch 2, base lr 0.01",
        "round 3 train: iter 2/5  loss 3.000 (loss_a 2.000, loss_b 1.000)  lr 0.01  0.50 it/s  ETA 0m06s",
        "round 3 train: iter 4/5  loss 4.000 (loss_a 3.000, loss_b 1.000)  lr 0.01  0.50 it/s  ETA 0m02s",
        "round 3 train: iter 5/5  loss 6.000 (loss_a 5.000, loss_b 1.000)  lr 0.01  0.50 it/s  done",
    ]


def test_a_slow_training_logs_at_least_every_max_seconds(monkeypatch, caplog):
    clock = iter(range(0, 100000, 70))  # 70 s per iteration
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    t, hook = _FakeTrainer(1000), LogProgressHook("train", every=50, max_seconds=60)
    with caplog.at_level(logging.INFO, logger="alseg.engine.trainer"):
        hook.before_train(t)
        for i in range(3):
            t.iter, t.last_losses = i, {"loss": 1.0}
            hook.after_step(t)
    assert [r.getMessage().split("  ")[0] for r in caplog.records[1:]] == [
        "train: iter 1/1000", "train: iter 2/1000", "train: iter 3/1000"]
    assert caplog.records[-1].getMessage().endswith("ETA 19h23m")


def test_log_every_must_be_positive():
    with pytest.raises(ConfigError, match="trainer.log_every"):
        LogProgressHook(every=0)
