"""What every model's ``.train()`` settles before Lightning starts (``plan_training``)."""

from __future__ import annotations

import pytest

from scdl.models._training import plan_training


def test_plan_training_defaults_and_ddp():
    kwargs = {"strategy": "ddp"}
    epochs = plan_training(1_000, None, batch_size=128, train_size=None, trainer_kwargs=kwargs)
    assert epochs == 400  # 4,000 steps of 128 on 1,000 cells, capped at 400
    assert kwargs == {"strategy": "ddp_find_unused_parameters_true", "check_val_every_n_epoch": 20}
    kwargs = {"strategy": "ddp_spawn"}
    assert plan_training(10_000, 7, batch_size=64, train_size=1.0, trainer_kwargs=kwargs) == 7
    assert kwargs == {"strategy": "ddp_spawn"}  # no validation, other strategies untouched


@pytest.mark.parametrize(("epochs", "batch"), [(0, 128), (5, 5_000)])
def test_plan_training_refuses(epochs, batch):
    with pytest.raises(ValueError, match="max_epochs|batch_size"):
        plan_training(1_000, epochs, batch_size=batch, train_size=0.9, trainer_kwargs={})
