"""The shared elastic flags: parsed values, rejected values, trainer keyword arguments."""
import argparse

import pytest

from gluon_elastic import flags


def parser():
    result = argparse.ArgumentParser()
    flags.add_elastic_args(result, local_batch_size=16, lr=0.2)
    return result


def test_defaults_and_trainer_kwargs():
    args = parser().parse_args(["--ramp-per-k", "2.5", "--transition", "immediate"])
    assert (args.local_batch_size, args.lr, args.ramp_per_k) == (16, 0.2, 2.5)
    assert flags.trainer_kwargs(args) == {
        "local_batch_size": 16, "global_batch_size": None, "batch_policy": "fixed_local",
        "base_batch_size": None, "scaling": "linear", "transition": "immediate",
        "ramp_iters": None, "ramp_per_k": 2.5, "shrink": "immediate", "momentum_correction": True}


@pytest.mark.parametrize("argv, message", [
    (["--local-batch-size", "0"], "--local-batch-size: expected a positive integer, got '0'"),
    (["--ramp-iters", "-1"], "--ramp-iters: expected an integer >= 0, got '-1'"),
    (["--ramp-iters", "1.5"], "--ramp-iters: expected an integer >= 0, got '1.5'"),
    (["--lr", "nan"], "--lr: expected a number >= 0, got 'nan'"),
    (["--emulate-schedule", "1:8"], "epochs must start at 0"),
    (["--emulate-schedule", "0:8,5"], "EPOCH:WORLD_SIZE"),
])
def test_bad_values_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_world_schedule():
    schedule = flags.parse_world_schedule("0:8,30:128,60:16")
    assert schedule == [(0, 8), (30, 128), (60, 16)]
    assert [flags.world_at(schedule, e) for e in (0, 29, 30, 59, 60, 90)] == [8, 8, 128, 128, 16, 16]


def test_contradictory_flags_are_named():
    with pytest.raises(ValueError, match="--ramp-iters or --ramp-per-k"):
        flags.trainer_kwargs(parser().parse_args(["--ramp-iters", "4", "--ramp-per-k", "2"]))
    with pytest.raises(ValueError, match="--global-batch-size"):
        flags.trainer_kwargs(parser().parse_args(["--batch-policy", "fixed_global"]))
