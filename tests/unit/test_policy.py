"""Scaling rules, batch policies and transitions against their closed forms."""
import math

import pytest

from gluon_elastic.policy import BatchPolicy, Transition, auto_ramp_length, lr_scale


@pytest.mark.parametrize("rule, expected", [("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)])
def test_lr_scale_rules(rule, expected):
    assert lr_scale(rule, 1024, 256) == expected


def test_lr_scale_at_base_is_one():
    for rule in ("none", "linear", "sqrt"):
        assert lr_scale(rule, 256, 256) == 1.0


@pytest.mark.parametrize("args, name", [
    (("cubic", 8, 8), "scaling rule"),
    (("linear", 0, 8), "global_batch_size"),
    (("linear", 8, -1), "base_batch_size"),
    (("linear", 8.5, 8), "global_batch_size"),
])
def test_lr_scale_rejects_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        lr_scale(*args)


def test_fixed_local_policy():
    policy = BatchPolicy("fixed_local", local_batch_size=32)
    assert policy.global_batch_size(1) == 32
    assert policy.global_batch_size(5) == 160
    assert policy.local_batch_sizes(3) == [32, 32, 32]
    assert policy.local_batch_size(3, rank=2) == 32


def test_fixed_global_policy_splits_remainder_to_first_ranks():
    policy = BatchPolicy("fixed_global", global_batch_size=256)
    assert policy.global_batch_size(3) == 256
    assert policy.local_batch_sizes(3) == [86, 85, 85]
    assert sum(policy.local_batch_sizes(7)) == 256
    assert policy.local_batch_sizes(256) == [1] * 256
    with pytest.raises(ValueError, match="world_size 257"):
        policy.local_batch_sizes(257)


@pytest.mark.parametrize("kwargs, name", [
    ({"name": "fixed"}, "batch policy"),
    ({"name": "fixed_local"}, "local_batch_size"),
    ({"name": "fixed_local", "local_batch_size": 0}, "local_batch_size"),
    ({"name": "fixed_local", "local_batch_size": -3}, "local_batch_size"),
    ({"name": "fixed_global", "global_batch_size": 0}, "global_batch_size"),
])
def test_batch_policy_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BatchPolicy(**kwargs)


def test_batch_policy_rejects_bad_world_size():
    with pytest.raises(ValueError, match="world_size"):
        BatchPolicy("fixed_local", local_batch_size=4).global_batch_size(0)


def test_immediate_transition_jumps_at_the_change():
    transition = Transition("immediate")
    transition.reset(1.0)
    info = transition.change(10, 4.0)
    assert info == {"k": 4.0, "from_multiplier": 1.0, "target_multiplier": 4.0, "ramp_len": 0}
    assert transition.multiplier(9) == 1.0
    assert transition.multiplier(10) == 4.0
    assert transition.multiplier(1000) == 4.0


def test_dynamic_ramp_follows_equation_6():
    # gamma_t = 1 + ((t - t0) / T) (k - 1) for t - t0 < T, k afterwards; eta = 0.5, k = 4, T = 8.
    transition = Transition("dynamic", ramp_iters=8)
    transition.reset(0.5)
    transition.change(20, 2.0)
    for t in range(20, 40):
        gamma = 1 + ((t - 20) / 8) * (4 - 1) if t - 20 < 8 else 4
        assert transition.multiplier(t) == pytest.approx(0.5 * gamma, rel=1e-15)
    assert transition.in_ramp(20) and transition.in_ramp(27) and not transition.in_ramp(28)


def test_ramp_proportional_to_k():
    transition = Transition("dynamic", ramp_per_k=8)
    transition.reset(1.0)
    assert transition.change(0, 16.0)["ramp_len"] == 128
    assert Transition("dynamic", ramp_per_k=2.5, shrink="ramp").ramp_length(0.25) == 10


def test_shrink_is_immediate_by_default_and_can_ramp():
    immediate = Transition("dynamic", ramp_iters=10)
    immediate.reset(8.0)
    assert immediate.change(5, 2.0)["ramp_len"] == 0
    assert immediate.multiplier(5) == 2.0
    ramp = Transition("dynamic", ramp_iters=10, shrink="ramp")
    ramp.reset(8.0)
    assert ramp.change(5, 2.0)["ramp_len"] == 10
    assert ramp.multiplier(10) == pytest.approx(8.0 + 0.5 * (2.0 - 8.0))


def test_change_mid_ramp_starts_from_multiplier_in_use():
    transition = Transition("dynamic", ramp_iters=10)
    transition.reset(1.0)
    transition.change(0, 3.0)
    # Step 4 used 1 + 4/10 * 2 = 1.8; a change arriving before step 5 starts from it.
    info = transition.change(5, 0.9 * 2)
    assert info["from_multiplier"] == pytest.approx(1.8)
    assert info["k"] == pytest.approx(1.0)
    assert info["ramp_len"] == 0


@pytest.mark.parametrize("targets, shrink, in_use, k, ramp_len", [
    ((4.0, 3.0), "immediate", 1 + 7 / 32 * 3, 3.0 / (1 + 7 / 32 * 3), 14),   # shrink read as growth
    ((4.0, 1.0), "immediate", 1 + 7 / 32 * 3, 1.0 / (1 + 7 / 32 * 3), 0),    # a real shrink: cut
    ((0.25, 0.5), "ramp", 1 - 7 / 32 * 0.75, 0.5 / (1 - 7 / 32 * 0.75), 13),  # growth read as shrink
    ((0.25, 0.5), "immediate", 0.25, 2.0, 16),
])
def test_second_change_mid_ramp_is_judged_against_the_multiplier_in_use(targets, shrink, in_use,
                                                                        k, ramp_len):
    """The table of gluon_elastic.policy's docstring and the README."""
    transition = Transition("dynamic", ramp_per_k=8, shrink=shrink)
    transition.reset(1.0)
    transition.change(0, targets[0])
    info = transition.change(8, targets[1])
    assert info["from_multiplier"] == pytest.approx(in_use)
    assert info["k"] == pytest.approx(k)
    assert info["ramp_len"] == ramp_len
    assert transition.multiplier(8 + ramp_len) == targets[1]


def test_two_changes_before_any_step_keep_the_multiplier_in_use():
    transition = Transition("immediate")
    transition.reset(1.0)
    transition.change(7, 2.0)
    info = transition.change(7, 3.0)
    assert info["from_multiplier"] == 1.0 and info["k"] == 3.0


def test_zero_ramp_is_immediate():
    transition = Transition("dynamic", ramp_iters=0)
    transition.reset(1.0)
    transition.change(3, 2.0)
    assert transition.multiplier(3) == 2.0


def test_transition_state_round_trip():
    transition = Transition("dynamic", ramp_iters=6)
    transition.reset(1.0)
    transition.change(4, 2.5)
    copy = Transition("dynamic", ramp_iters=6)
    copy.load_state_dict(transition.state_dict())
    assert [copy.multiplier(t) for t in range(15)] == [transition.multiplier(t) for t in range(15)]


@pytest.mark.parametrize("kwargs, name", [
    ({"kind": "gradual"}, "transition"),
    ({"ramp_iters": -1}, "ramp_iters"),
    ({"ramp_iters": 2.5}, "ramp_iters"),
    ({"ramp_per_k": -1.0}, "ramp_per_k"),
    ({"ramp_iters": 4, "ramp_per_k": 2.0}, "ramp_iters or ramp_per_k"),
    ({"shrink": "slow"}, "shrink"),
    ({"initial_multiplier": 0}, "initial_multiplier"),
])
def test_transition_rejects_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Transition(**kwargs)


def test_sqrt_rule_value():
    assert lr_scale("sqrt", 512, 128) == math.sqrt(4)


# ----------------------------------------------------------------------------------- AdaScale
def test_adascale_estimates_are_unbiased_on_known_gradients():
    """Expectation over many draws equals the true per-sample variance and squared mean."""
    import numpy as np
    from gluon_elastic.policy import adascale_estimates

    rng = np.random.RandomState(0)
    mean, noise, sizes = np.array([1.0, -2.0, 0.5]), 1.5, [4, 4, 3]   # unequal per-worker batches
    estimates = []
    for _ in range(4000):
        sums = [(mean + noise * rng.randn(size, 3)).sum(axis=0) for size in sizes]
        total = np.sum(sums, axis=0)
        estimates.append(adascale_estimates(
            sum((g ** 2).sum() / b for g, b in zip(sums, sizes)), (total ** 2).sum(),
            sum(sizes), len(sizes)))
    variance, mean_sq = np.mean(estimates, axis=0)
    assert variance == pytest.approx(3 * noise ** 2, rel=0.03)      # trace over 3 dimensions
    assert mean_sq == pytest.approx((mean ** 2).sum(), rel=0.03)


def test_adascale_estimates_need_two_workers():
    from gluon_elastic.policy import adascale_estimates
    assert adascale_estimates(5.0, 5.0, 4, 1) is None


@pytest.mark.parametrize("variance, mean_sq, scale, expected", [
    (8.0, 1.0, 1.0, 1.0),            # scale 1: exactly 1
    (8.0, 0.0, 4.0, 4.0),            # pure noise: linear scaling
    (0.0, 1.0, 4.0, 1.0),            # no noise: no gain
    (-1.0, 1.0, 4.0, 1.0),           # negative variance estimates count as 0
    (8.0, 1.0, 4.0, (2.0 + 1.0) / (2.0 / 4.0 + 1.0)),   # sigma^2 = 8 / base batch 4 = 2
    (0.0, 0.0, 4.0, 1.0),            # no signal at all
])
def test_adascale_gain_closed_form(variance, mean_sq, scale, expected):
    from gluon_elastic.policy import adascale_gain
    assert adascale_gain(variance, mean_sq, scale, base_batch_size=4) == expected


def test_adascale_smoothing_and_scale_one():
    from gluon_elastic.policy import AdaScale
    adascale = AdaScale(base_batch_size=2)
    assert adascale.gain(3.0) == 1.0                     # no estimate yet
    adascale.observe(10.0, 16.0, 4, 2, scale=2.0)         # first estimate taken as it is
    assert (adascale.variance, adascale.mean_sq) == (10.0 - 4.0, 1.0 - 6.0 / 4)
    adascale.observe(14.0, 16.0, 4, 2, scale=2.0)         # then theta = 1 - 2/1000
    theta = 1 - 2 / 1000
    assert adascale.variance == pytest.approx(theta * 6.0 + (1 - theta) * 10.0)
    assert adascale.gain(1.0) == 1.0
    adascale.observe(1.0, 1.0, 1, 1, scale=1.0)           # one worker: nothing learned
    assert adascale.variance == pytest.approx(theta * 6.0 + (1 - theta) * 10.0)
    restored = AdaScale(base_batch_size=2)
    restored.load_state_dict(adascale.state_dict())
    assert restored.gain(2.0) == adascale.gain(2.0)


@pytest.mark.parametrize("k, momentum, expected", [
    (16.0, 0.9, 135), (8.0, 0.9, 63), (4.0, 0.9, 27), (2.0, 0.9, 9), (1.0, 0.9, 0),
    (0.25, 0.9, 27),                      # a shrink by 4 ramps as long as a growth by 4
    (16.0, 0.0, 0), (2.0, 0.5, 1), (3.0, 0.99, 198), (1.5, 0.9, 5),  # 4.5 rounds up
])
def test_auto_ramp_length_closed_form(k, momentum, expected):
    # T = ceil((max(k, 1/k) - 1) * mu / (1 - mu)).
    assert auto_ramp_length(k, momentum) == expected


def test_auto_ramp_is_the_shortest_that_keeps_the_stale_buffer_below_the_old_lr():
    # The derivation's condition gamma_t * mu^t <= 1 for every t >= 1 holds at T and fails at T - 1.
    def holds(T, k, mu):
        return all((1 + min(t / T, 1.0) * (k - 1)) * mu ** t <= 1 + 1e-12 for t in range(1, 2000))

    for k in (2.0, 4.0, 8.0, 16.0, 1.5):
        for mu in (0.5, 0.9, 0.95):
            T = auto_ramp_length(k, mu)
            assert T >= 1 and holds(T, k, mu)
            if T > 1:
                assert not holds(T - 1, k, mu)


def test_transition_auto_ramp_uses_momentum_and_k():
    transition = Transition("dynamic", ramp_iters="auto", momentum=0.9)
    info = transition.change(10, 16.0)
    assert (info["k"], info["ramp_len"]) == (16.0, 135)
    # gamma at the first step is the old multiplier, then moves by 15/135 per step.
    assert transition.multiplier(10) == 1.0
    assert transition.multiplier(11) == pytest.approx(1 + 15 / 135)
    assert transition.multiplier(145) == 16.0
    # A shrink is cut at once by default; with shrink='ramp' it ramps over T(1/k).
    assert transition.change(200, 4.0)["ramp_len"] == 0
    ramping = Transition("dynamic", ramp_iters="auto", momentum=0.9, shrink="ramp",
                         initial_multiplier=8.0)
    assert ramping.change(0, 2.0)["ramp_len"] == 27
    assert "momentum=0.9" in repr(ramping)
    assert Transition("immediate", ramp_iters="auto", momentum=0.9).change(0, 16.0)["ramp_len"] == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"ramp_iters": "auto"}, "pass momentum="),
    ({"ramp_iters": "auto", "momentum": 1.0}, "momentum must be"),
    ({"ramp_iters": "auto", "momentum": -0.1}, "momentum must be"),
    ({"ramp_iters": "automatic", "momentum": 0.9}, "ramp_iters"),
    ({"ramp_iters": "auto", "ramp_per_k": 2.0, "momentum": 0.9}, "not both"),
])
def test_transition_auto_ramp_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Transition("dynamic", **kwargs)
