"""The claim rules that keep one configuration to one training (archbench.search.claims), on
hand-built trials: the expected decisions follow from the rules' definition in the module doc."""
from datetime import datetime, timedelta

import optuna
import pytest

from archbench.search import claims
from archbench.search.claims import Decision, config_key, decide

S = optuna.trial.TrialState
T0 = datetime(2026, 1, 1)


def trial(number, state, key=None, start=None, **attrs):
    ua = dict(attrs)
    if key is not None:
        ua[claims.KEY] = key
    return optuna.trial.FrozenTrial(
        number=number, state=state, value=None, values=[1.0] if state == S.COMPLETE else None,
        datetime_start=None if state == S.WAITING else T0 + timedelta(seconds=start if start is not None else number),
        datetime_complete=None, params={}, distributions={}, user_attrs=ua, system_attrs={},
        intermediate_values={}, trial_id=number)


def test_a_finished_configuration_is_reused_from_its_first_trial():
    ts = [trial(0, S.COMPLETE, "a"), trial(1, S.COMPLETE, "a", **{claims.REUSED: 0}), trial(2, S.RUNNING, "a")]
    d = decide(ts, 2, "a", target=10)
    assert d.action == "reuse" and d.earlier.number == 0


def test_a_pruned_configuration_is_reused_too():
    ts = [trial(0, S.PRUNED, "a"), trial(1, S.RUNNING, "a")]
    assert decide(ts, 1, "a", target=10).action == "reuse"


def test_a_configuration_running_elsewhere_is_waited_for():
    ts = [trial(0, S.RUNNING, "a"), trial(1, S.RUNNING, "a")]
    assert decide(ts, 1, "a", target=10) is None
    assert decide(ts, 0, "a", target=10) == Decision("train")  # the first never waits on the second


def test_an_earlier_trial_that_has_not_claimed_yet_is_waited_for():
    ts = [trial(0, S.RUNNING), trial(1, S.RUNNING, "b")]
    assert decide(ts, 1, "b", target=10) is None


def test_a_new_configuration_trains_until_the_target_then_is_surplus():
    ts = [trial(0, S.COMPLETE, "a"), trial(1, S.PRUNED, "b"), trial(2, S.RUNNING, "c")]
    assert decide(ts, 2, "c", target=3) == Decision("train")
    assert decide(ts, 2, "c", target=2) == Decision("surplus")
    # full, but an earlier trial still runs and may fail, freeing its place: wait
    ts = [trial(0, S.COMPLETE, "a"), trial(1, S.RUNNING, "b"), trial(2, S.RUNNING, "c")]
    assert decide(ts, 2, "c", target=2) is None
    ts[1] = trial(1, S.FAIL, "b")  # killed: its configuration is free again
    assert decide(ts, 2, "c", target=2) == Decision("train")


def test_reuses_and_surplus_trials_hold_no_place():
    ts = [trial(0, S.COMPLETE, "a"), trial(1, S.COMPLETE, "a", **{claims.REUSED: 0}),
          trial(2, S.FAIL, "b", **{claims.SURPLUS: True}), trial(3, S.RUNNING, "c")]
    assert claims.distinct_finished(ts) == 1
    assert decide(ts, 3, "c", target=2) == Decision("train")


def test_a_failed_training_is_reused_but_a_killed_trial_is_retrained():
    ts = [trial(0, S.FAIL, "a", **{claims.FAILED_IN_TRAINING: True, "reason": "loss diverged"}), trial(1, S.RUNNING, "a")]
    assert decide(ts, 1, "a", target=10).action == "reuse"
    ts = [trial(0, S.FAIL, "a"), trial(1, S.RUNNING, "a")]
    assert decide(ts, 1, "a", target=10) == Decision("train")


def test_order_is_by_start_so_a_retried_trial_queued_early_waits_for_later_numbers():
    # trial 1 was queued (numbered) before trial 5, but started after it
    ts = [trial(5, S.RUNNING, "a", start=5), trial(1, S.RUNNING, "a", start=9), trial(7, S.WAITING)]
    assert decide(ts, 1, "a", target=10) is None
    assert decide(ts, 5, "a", target=10) == Decision("train")


def test_trials_of_studies_made_before_keys_get_one_from_their_spec():
    old = optuna.trial.FrozenTrial(0, S.COMPLETE, None, T0, T0, {"mixer": "shift"}, {}, {"spec": '{"x": 1}'}, {}, {}, 0,
                                   values=[1.0])
    assert claims.key_of(old) == config_key('{"x": 1}', {"mixer": "shift"})
    assert decide([old, trial(1, S.RUNNING, config_key('{"x": 1}', {}))], 1, config_key('{"x": 1}', {}), 9).action == "reuse"


def test_keys_follow_the_spec_not_the_values():
    assert config_key('{"a": 1}', {"p": 1}) == config_key('{"a": 1}', {"p": 2})
    assert config_key(None, {"p": 1}) != config_key(None, {"p": 2})


def test_settle_waits_then_decides(monkeypatch):
    """settle() polls until the earlier trial finishes, then reuses it."""
    study = optuna.create_study()
    first = study.ask()
    first.set_user_attr(claims.KEY, "k")
    second = study.ask()
    polls = []

    def sleep(_):
        polls.append(1)
        study.tell(first, 1.0)

    d = claims.settle(study, second, "k", target=5, sleep=sleep)
    assert d.action == "reuse" and d.earlier.number == 0 and len(polls) == 1


def test_space_size_counts_configurations_that_train_alike_once():
    from archbench.builder import make_spec
    from archbench.search.space import parse_space

    space = parse_space({"name": "x", "base": {"mixer": "shift", "dims": 16, "depths": 1, "img_size": 8},
                         "params": {"mixer": {"choices": ["shift", "none"]}, "depths[3]": {"low": 1, "high": 2},
                                    "mlp_ratio": {"low": 1.0, "high": 3.0, "step": 1.0}}})
    assert claims.space_size(space, make_spec(**space.base)) == 2 * 2 * 3  # analytic: the grid's size
    unbounded = parse_space({"name": "x", "base": {"mixer": "shift", "dims": 16, "depths": 1, "img_size": 8},
                             "params": {"mlp_ratio": {"low": 1.0, "high": 3.0}}})
    assert claims.space_size(unbounded, make_spec(**unbounded.base)) is None


@pytest.mark.parametrize("state", [S.COMPLETE, S.PRUNED])
def test_holds_slot(state):
    assert claims.holds_slot(trial(0, state, "a"))
    assert not claims.holds_slot(trial(0, state, "a", **{claims.REUSED: 3}))
