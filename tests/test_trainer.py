import pytest
import torch

from alseg.engine.trainer import Trainer, TrainerConfig
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
