"""Base schedules as functions of samples, at their boundaries."""
import math

import pytest

from gluon_elastic.schedule import Schedule, epochs


def test_epochs_to_samples():
    assert epochs(2, 4000) == 8000
    assert epochs(0.5, 4000) == 2000
    with pytest.raises(ValueError, match="samples_per_epoch"):
        epochs(1, 0)


def test_warmup_is_linear_from_warmup_lr():
    schedule = Schedule("constant", base_lr=0.4, warmup_samples=1000, warmup_lr=0.1)
    assert schedule(0) == 0.1
    assert schedule(500) == pytest.approx(0.25)
    assert schedule(1000) == 0.4
    assert schedule(10 ** 9) == 0.4


def test_step_decay_at_boundaries():
    schedule = Schedule("step", base_lr=1.0, step_samples=[100, 200], step_factor=0.1)
    assert schedule(99) == 1.0
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(199) == pytest.approx(0.1)
    assert schedule(200) == pytest.approx(0.01)


def test_cosine_endpoints_and_midpoint():
    schedule = Schedule("cosine", base_lr=1.0, total_samples=1100, warmup_samples=100,
                        final_lr=0.2)
    assert schedule(100) == 1.0
    assert schedule(600) == pytest.approx(0.6)
    assert schedule(1100) == pytest.approx(0.2)
    assert schedule(5000) == pytest.approx(0.2)
    assert schedule(350) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)


def test_poly_closed_form():
    schedule = Schedule("poly", base_lr=0.5, total_samples=1000, power=0.9)
    assert schedule(0) == 0.5
    assert schedule(250) == pytest.approx(0.5 * 0.75 ** 0.9)
    assert schedule(1000) == 0.0


def test_linear_closed_form_after_warmup():
    # GluonCV's 'linear' mode: base_lr * (1 - T / N) over the post-warmup span, here to final_lr.
    schedule = Schedule("linear", base_lr=0.4, total_samples=1100, warmup_samples=100,
                        final_lr=0.1)
    assert schedule(50) == pytest.approx(0.2)
    assert schedule(100) == pytest.approx(0.4)
    assert schedule(350) == pytest.approx(0.1 + 0.3 * 0.75)
    assert schedule(1100) == pytest.approx(0.1)
    assert schedule(2000) == pytest.approx(0.1)


def test_lr_at_an_epoch_does_not_depend_on_the_world():
    # 3 epochs of 4,000 samples reached with 8 workers x 32 or with 2 workers x 32.
    schedule = Schedule("step", base_lr=0.1, step_samples=[epochs(3, 4000)])
    for global_batch_size in (256, 64):
        steps = math.ceil(epochs(3, 4000) / global_batch_size)
        progress = min(steps * global_batch_size, epochs(3, 4000))
        assert schedule(progress) == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs, name", [
    ({"mode": "exp"}, "schedule mode"),
    ({"base_lr": -0.1}, "base_lr"),
    ({"warmup_lr": -1.0}, "warmup_lr"),
    ({"mode": "cosine"}, "total_samples"),
    ({"mode": "poly", "total_samples": 10, "warmup_samples": 10}, "total_samples"),
    ({"mode": "linear"}, "total_samples"),
    ({"warmup_samples": -5}, "warmup_samples"),
    ({"mode": "step", "step_samples": [200, 100]}, "step_samples"),
    ({"mode": "step", "step_factor": 0}, "step_factor"),
])
def test_schedule_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Schedule(**kwargs)


def test_negative_progress_is_rejected():
    with pytest.raises(ValueError, match="progress"):
        Schedule()(-1)
