"""Pareto-aware successive halving (archbench.search.halving) on a hand-built study: trials with
known costs and learning curves, run one after another through Optuna's ask/tell. The expected
stops are worked out by hand from the rule's definition (in each comment)."""
import json
import textwrap

import optuna
import pytest

from archbench.cli import main
from archbench.search.halving import RUNGS, ParetoHalving, default_rungs

S = optuna.trial.TrialState


def simulate(rule, trials):
    """trials: [(gmacs, curve)] run in order; returns {number: Stop} and the study."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    stops = {}
    for gmacs, curve in trials:
        t = study.ask()
        t.set_user_attr("gmacs", gmacs)
        t.set_user_attr("params", 1000.0)
        for epoch, top1 in enumerate(curve, 1):
            if epoch in rule.rungs:
                t.set_user_attr(RUNGS, {**t.user_attrs.get(RUNGS, {}), str(epoch): top1})
            stop = rule.should_stop(study.get_trials(deepcopy=False), t.number, {"gmacs": gmacs, "params": 1000.0},
                                    epoch, top1)
            if stop:
                stops[t.number] = stop
                study.tell(t, state=S.PRUNED)
                break
        else:
            t.set_user_attr("top1", curve[-1])
            t.set_user_attr("trained", True)
            study.tell(t, [curve[-1], gmacs])
    return stops, study


def test_the_rule_stops_exactly_the_trials_it_should():
    rule = ParetoHalving(("gmacs", "params"), rungs=(1, 2), eta=2, min_finished=2)
    stops, _ = simulate(rule, [
        (1.0, [50, 60, 70, 80]),   # 0: nothing cheaper: runs to the end
        (2.0, [40, 50, 60, 70]),   # 1: one cheaper peer (< eta) and one finished (< min_finished): runs
        (0.5, [30, 40, 50, 60]),   # 2: the cheapest: never stopped
        # 3: epoch 1, peers 0/1/2 at 50/40/30, top ceil(3/2) = 2 kept → bar 40; 35 < 40: rank stop
        (3.0, [35, 45, 55, 90]),
        # 4: epoch 1 passes (bar 40; 55 + gain 30 = 85 > 80); epoch 2: peers at 60/50/40 → bar 50, 58 passes
        # rank, but every finished trial gained 20 after epoch 2 and 58 + 20 = 78 < trial 0's final 80: front stop
        (3.0, [55, 58, 66, 75]),
        (0.25, [10, 20, 30, 40]),  # 5: cheaper than all: never stopped, however poor
    ])
    assert {n: (s.rung, s.rule) for n, s in stops.items()} == {3: (1, "rank"), 4: (2, "front")}
    assert stops[3].compared == (0, 1, 2) and "below the top 1/2 (≥ 40.00)" in stops[3].reason
    assert stops[4].compared == (0,) and "trial #0's final 80.00" in stops[4].reason and "+20.00" in stops[4].reason


def test_a_trial_is_never_stopped_when_no_trial_is_cheaper():
    rule = ParetoHalving(("gmacs", "params"), rungs=(1, 2), eta=2, min_finished=1)
    # each trial is cheaper than every earlier one: no peers, so none stops, though each is worse
    stops, _ = simulate(rule, [(10.0 - i, [90 - 10 * i, 91 - 10 * i, 92 - 10 * i]) for i in range(6)])
    assert stops == {}


def test_a_peer_must_be_no_more_costly_in_every_objective():
    rule = ParetoHalving(("gmacs", "params"), rungs=(1,), eta=1, min_finished=99)
    trials = [optuna.trial.create_trial(state=S.COMPLETE, values=[90.0, 1.0],
                                        user_attrs={"gmacs": 1.0, "params": 5000.0, RUNGS: {"1": 90.0}})]
    for i, t in enumerate(trials):
        t.number = i
    # cheaper in GMACs but larger in parameters: not a peer, so not compared
    assert rule.should_stop(trials, 9, {"gmacs": 2.0, "params": 1000.0}, 1, 10.0) is None
    assert rule.should_stop(trials, 9, {"gmacs": 2.0, "params": 6000.0}, 1, 10.0).rule == "rank"
    assert rule.should_stop(trials, 9, {"gmacs": 2.0, "params": 6000.0}, 2, 10.0) is None  # not a rung


def test_default_rungs_double_below_the_last_epoch():
    assert default_rungs(8) == (1, 2, 4) and default_rungs(9) == (1, 2, 4, 8) and default_rungs(1) == ()


def test_a_pareto_search_with_two_workers_records_why_it_stopped_trials(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""
        name: pareto
        base: {mixer: shift, ffn: mlp, dims: 16, depths: 1, img_size: 8}
        params:
          mixer: {choices: [shift, none]}
          mlp_ratio: {choices: [1.0, 2.0, 3.0]}
          dims: {choices: [12, 16]}
        objectives: [top1, gmacs]
        dataset: {name: digits, limit_train: 300, limit_test: 100}
        recipe: {epochs: 3, batch_size: 100}
        sampler: {name: random, seed: 0}
        pruner: {name: pareto, eta: 2, rungs: [1, 2]}
        """))
    assert main(["search", str(path), "--trials", "6", "--workers", "2", "--results-dir", str(tmp_path),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["distinct"] == 6
    import pandas as pd
    df = pd.read_parquet(tmp_path / "pareto.parquet")
    for _, r in df[(df["state"] == "PRUNED") & df["reused_from"].isna()].iterrows():
        assert r["reason"].startswith("stopped at epoch") and r["stopped_at"] in (1, 2)  # where, and against whom
    # the rungs every trial recorded (read by the other worker's trials)
    assert all(json.loads(h) for h in df["rungs"] if h)


@pytest.mark.parametrize("pruner,needle", [
    ("{name: median}", "pruner 'median' needs one objective"),
    ("{name: pareto, eta: 1}", "eta must be an integer >= 2, got 1"),
    ("{name: pareto, rungs: [0]}", "rungs must be a list of epochs >= 1"),
    ("{name: pareto, etta: 3}", "unknown key(s) etta"),
])
def test_bad_pruners_are_refused(tmp_path, capsys, pruner, needle):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nparams:\n  mixer: {{choices: [shift]}}\nobjectives: [top1, gmacs]\npruner: {pruner}\n")
    assert main(["search", str(path), "--trials", "1", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
