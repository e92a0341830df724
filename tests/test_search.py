"""Optuna search: space validation, a tiny study, resume, constraints, plots."""
import json
import textwrap
import time

import pytest

from archbench.cli import main
from archbench.search.space import load_space

SPACES = __import__("pathlib").Path(__file__).resolve().parent.parent / "search_spaces"


def test_shipped_spaces_load():
    for path in SPACES.glob("*.yaml"):
        space = load_space(path)
        assert space.params and space.objectives


def test_tiny_space_runs_4_trials_quickly_and_resumes(tmp_path, capsys):
    argv = ["search", str(SPACES / "tiny.yaml"), "--trials", "4", "--results-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["distinct"] == 4
    # seconds per trial: the trials' own time, not process start-up (the whole command takes
    # about 35 s alone on the 2-core machine; CI runs tests two at a time on those 2 cores)
    trials = _study_trials(tmp_path)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials if t.datetime_complete)
    assert spent < 40, spent
    # the same command again: nothing repeated; asking for 6 adds exactly 2
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["trials"] == first["trials"]
    assert main(argv[:3] + ["6"] + argv[4:]) == 0
    more = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert more["distinct"] == 6
    _assert_trained_once(_study_trials(tmp_path))  # the resumed study drew no configuration again


def _assert_trained_once(trials):
    """No configuration trained (or pruned) twice: every trial holding a result has its own key."""
    from archbench.search import claims

    keys = [claims.key_of(t) for t in trials if claims.holds_slot(t)]
    assert len(keys) == len(set(keys)), keys
    for t in trials:  # and every other finished trial points at the one it reused
        if t.state.name in ("COMPLETE", "PRUNED") and not claims.holds_slot(t):
            assert claims.REUSED in t.user_attrs
    return len(keys)


def _space(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_constraint_violating_specs_are_never_trained(tmp_path, capsys):
    path = _space(tmp_path, """
        name: budget
        base: {mixer: shift, ffn: mlp, dims: 16, depths: 1, img_size: 8}
        params:
          dims: {choices: [16, 64]}
        constraints: {max_params: 20000}
        dataset: {name: digits, limit_train: 200, limit_test: 100}
        recipe: {epochs: 1, batch_size: 100}
        sampler: {name: random, seed: 1}
        """)
    assert main(["search", str(path), "--trials", "6", "--results-dir", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    assert main(["results", "budget", "--results-dir", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    big = [r for r in rows if r["param_dims"] == 64]
    small = [r for r in rows if r["param_dims"] == 16]
    assert big and small
    assert all(not r["trained"] and r["top1"] is None and "over budget" in r["reason"] for r in big)
    assert all(r["trained"] for r in small if r["state"] == "COMPLETE")
    for r in small:  # both counters and the provenance in every trained trial's row
        if r["trained"]:
            assert r["gmacs_ptflops"] == pytest.approx(r["gmacs"], rel=1e-2)
            assert json.loads(r["provenance"])["torch"]
            assert r["peak_mem_mb"] is not None and r["peak_mem_mb"] >= 0


def test_plot_holds_the_trained_trials(tmp_path, capsys):
    assert main(["search", str(SPACES / "tiny.yaml"), "--trials", "3", "--results-dir", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    assert main(["plot", "tiny", "--x", "params", "--y", "top1", "--results-dir", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    import pandas as pd
    df = pd.read_parquet(tmp_path / "tiny.parquet")
    trained = df[(df["state"] == "COMPLETE") & df["trained"]]
    assert info["points"] == len(trained)
    assert (tmp_path / "tiny_top1_vs_params.png").stat().st_size > 1000
    assert set(info["front"]) <= set(trained["trial"])


@pytest.mark.parametrize("text,needle", [
    ("name: x\nparams:\n  mixer: {choices: [shift]\n", "malformed YAML"),
    ("name: x\nparams:\n  depth: {low: 1, high: 2}\n", "s.yaml:3: unknown parameter 'depth'"),
    ("name: x\nparams:\n  mlp_ratio: {low: 4.0, high: 1.0}\n", "empty range, low=4.0 > high=1.0"),
    ("name: x\nparams:\n  mixer: {choices: []}\n", "choices must be a non-empty list"),
    ("name: x\nparams:\n  mixer: {choices: [shift]}\nobjectives: [accuracy]\n", "objectives ['accuracy']"),
    ("name: x\nbase: {mixer: shfit}\nparams:\n  mlp_ratio: {low: 1.0, high: 2.0}\n", "unknown token mixer 'shfit'"),
    # a typo among the choices is refused at load, not met as pruned trials counted toward --trials
    ("name: x\nparams:\n  mixer: {choices: [shift, transformer]}\n",
     "parameter 'mixer', value 'transformer': unknown token mixer 'transformer'"),
    ("name: x\nparams:\n  ffn: {choices: [mlp, msfn]}\n", "did you mean 'msffn'?"),
    ("name: x\nparams:\n  mixer_options.gama: {choices: [0.1]}\n", "msa has no option 'gama'; allowed: attn_drop"),
    ("name: x\nparams:\n  mixer: {choices: [shift]}\nrecipe: {learning_rate: 0.1}\n",
     "unknown recipe field 'learning_rate'; known: accum_steps, augment"),
])
def test_bad_spaces_are_one_line_exit_2(tmp_path, capsys, text, needle):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert main(["search", str(path), "--trials", "1", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.db"))  # no half-created study


def test_plot_refuses_a_missing_overlay_and_keeps_dots_in_its_stem(tmp_path, capsys):
    assert main(["search", str(SPACES / "tiny.yaml"), "--trials", "1", "--results-dir", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    assert main(["plot", "tiny", "--results-dir", str(tmp_path), "--overlay", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "--overlay" in err and "missing" in err and len(err.strip().splitlines()) == 1
    assert main(["plot", "tiny", "--results-dir", str(tmp_path), "--out", str(tmp_path / "front.v2")]) == 0
    assert (tmp_path / "front.v2.png").exists() and (tmp_path / "front.v2.svg").exists()
    out = capsys.readouterr().out.strip()  # without --json, one line for a person
    assert out.startswith(f"wrote {tmp_path / 'front.v2.png'} and ") and "Pareto front: trial(s) " in out
    (tmp_path / "afile").write_text("")
    assert main(["plot", "tiny", "--results-dir", str(tmp_path), "--out", str(tmp_path / "afile" / "p")]) == 2
    assert main(["search", str(SPACES / "tiny.yaml"), "--trials", "1", "--results-dir", str(tmp_path / "afile")]) == 2


def test_unreachable_storage_is_refused(tmp_path, capsys):
    assert main(["search", str(SPACES / "tiny.yaml"), "--trials", "1",
                 "--storage", "postgresql://nobody@127.0.0.1:9/none", "--results-dir", str(tmp_path)]) == 2
    assert "cannot open storage" in capsys.readouterr().err


def _study_trials(tmp_path, name="tiny"):
    import optuna
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / (name + '.db')}")
    return study.get_trials(deepcopy=False)


def test_two_workers_train_no_configuration_twice_and_stop_at_the_target(tmp_path, capsys):
    argv = ["search", str(SPACES / "tiny.yaml"), "--trials", "4", "--workers", "2", "--results-dir", str(tmp_path),
            "--json"]
    assert main(argv) == 0
    trials = _study_trials(tmp_path)
    assert _assert_trained_once(trials) == 4  # exactly --trials configurations
    assert all(t.state.name != "RUNNING" for t in trials)


def test_a_space_smaller_than_trials_reuses_results_and_says_it_is_exhausted(tmp_path, capsys, monkeypatch):
    path = _space(tmp_path, """
        name: three
        base: {mixer: shift, ffn: mlp, dims: 16, depths: 1, img_size: 8}
        params:
          mlp_ratio: {choices: [1.0, 2.0, 3.0]}
        dataset: {name: digits, limit_train: 200, limit_test: 100}
        recipe: {epochs: 1, batch_size: 100}
        sampler: {name: random, seed: 0}
        """)
    assert main(["search", str(path), "--trials", "5", "--results-dir", str(tmp_path), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["distinct"] == summary["space_size"] == 3
    assert "space exhausted: it holds 3 distinct configurations" in err
    trials = _study_trials(tmp_path, "three")
    assert _assert_trained_once(trials) == 3
    # seed 0 of the random sampler draws a configuration twice before it has all three: reused, not retrained
    import pandas as pd
    df = pd.read_parquet(tmp_path / "three.parquet")
    reused = df[df["reused_from"].notna()]
    assert len(reused) == summary["reused"] >= 1
    for _, r in reused.iterrows():
        first = df[df["trial"] == r["reused_from"]].iloc[0]
        assert r["config_key"] == first["config_key"] and r["top1"] == first["top1"] and not r["trained"]
        assert r["reason"].startswith(f"same configuration as trial {int(r['reused_from'])}")
    # the printed table names each trial's sampled values: trials of one mixer and FFN are told apart
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["results", "three", "--results-dir", str(tmp_path)]) == 0
    cells = [line.split("│") for line in capsys.readouterr().out.splitlines() if line.startswith("│")]
    sampled = {int(c[1].strip().removeprefix("★ ")): c[5].strip() for c in cells}
    assert sampled == {r["trial"]: f"mlp_ratio={r['param_mlp_ratio']:g}" for _, r in df.iterrows()}


def test_two_processes_starting_one_new_study_share_it(tmp_path):
    """Both create the SQLite file at once (the creation race), then fill the study together."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "archbench", "search", str(SPACES / "tiny.yaml"), "--trials", "4",
           "--results-dir", str(tmp_path), "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert _assert_trained_once(_study_trials(tmp_path)) == 4


def test_a_killed_search_leaves_no_worker_and_resumes_with_its_trials(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "archbench", "search", str(SPACES / "tiny.yaml"), "--trials", "6",
           "--results-dir", str(tmp_path), "--json"]
    log = open(tmp_path / "search.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    done_before, running = [], []
    while time.time() < deadline:
        time.sleep(0.5)
        if not (tmp_path / "tiny.db").exists():
            continue
        try:
            trials = _study_trials(tmp_path)
        except Exception:  # noqa: BLE001 - the study may not exist yet
            continue
        done_before = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        running = [t for t in trials if t.state.name == "RUNNING" and "worker" in t.user_attrs]
        if len(done_before) >= 2 and running:
            break
        if proc.poll() is not None:
            break
    assert len(done_before) >= 2 and running, (tmp_path / "search.log").read_text()[-2000:]
    worker = int(running[0].user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(proc.pid, signal.SIGKILL)  # the command only, mid-trial: its worker must not train on unowned
    proc.wait()
    log.close()
    gone = time.time() + 10
    while time.time() < gone and _alive(worker):
        time.sleep(0.2)
    assert not _alive(worker), f"worker {worker} outlived its killed parent"
    kept = {t.number: (t.state.name, t.values) for t in done_before}
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    after = _study_trials(tmp_path)
    assert {t.number: (t.state.name, t.values) for t in after if t.number in kept} == kept  # all kept
    assert _assert_trained_once(after) == 6
    killed = next(t for t in after if t.number == running[0].number)
    assert killed.state.name == "FAIL"
    import optuna
    from archbench.search.report import trials_table
    df = trials_table(optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}"))
    assert "stopped mid-trial" in df.set_index("trial").loc[killed.number, "reason"]


def _alive(pid: int) -> bool:
    """In the process table and not a zombie (an orphan's zombie waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def postgres_url():
    """A real PostgreSQL server on loopback, started for the test and stopped after it."""
    import os
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = next((d for d in ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin")
                   if os.path.exists(f"{d}/pg_ctl")), None)
    if bindir is None or shutil.which("runuser") is None or os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI must have PostgreSQL (.ci/run installs Debian's postgresql) and run as root")
        pytest.skip("needs Debian's postgresql and root (to run the server as the postgres user)")
    pytest.importorskip("psycopg2")
    data = tempfile.mkdtemp(prefix="archbench-pg-")
    shutil.chown(data, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def pg(*args):
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    pg(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "postgres")
    pg(f"{bindir}/pg_ctl", "-D", data, "-w", "-l", f"{data}/log", "-o",
       f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_on_a_postgresql_storage(tmp_path, capsys, postgres_url):
    argv = ["search", str(SPACES / "tiny.yaml"), "--trials", "4", "--workers", "2", "--storage", postgres_url,
            "--results-dir", str(tmp_path), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    import optuna
    trials = optuna.load_study(study_name="tiny", storage=postgres_url).get_trials(deepcopy=False)
    assert len({t.number for t in trials}) == len(trials)
    assert _assert_trained_once(trials) == out["distinct"] == 4
    assert all(t.state.name != "RUNNING" for t in trials)
    # the same command resumes from the server: nothing new
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trials"] == out["trials"]


def test_unsatisfiable_constraints_are_refused_before_any_study(tmp_path, capsys):
    path = _space(tmp_path, """
        name: impossible
        base: {mixer: shift, ffn: mlp, dims: 16, depths: 1, img_size: 8}
        params:
          dims: {choices: [16, 32]}
        constraints: {max_params: 100}
        dataset: {name: digits, limit_train: 200, limit_test: 100}
        recipe: {epochs: 1, batch_size: 100}
        """)
    assert main(["search", str(path), "--trials", "2", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "look unsatisfiable" in err and "closest" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.db"))


def test_trials_keep_checkpoints_per_configuration(tmp_path, capsys):
    # --checkpoint-dir: one folder per trained configuration (a retried trial resumes there;
    # a configuration sampled again returns its finished row instead of training again)
    ckpt = tmp_path / "ck"
    argv = ["search", str(SPACES / "tiny.yaml"), "--trials", "4", "--results-dir", str(tmp_path), "--json",
            "--checkpoint-dir", str(ckpt)]
    assert main(argv) == 0
    capsys.readouterr()
    # every configuration that started training (finished or pruned), over-budget ones never do
    trained = {t.user_attrs["spec"] for t in _study_trials(tmp_path)
               if "spec" in t.user_attrs and t.user_attrs.get("trained", True)}
    folders = sorted(p for p in ckpt.iterdir())
    assert len(folders) == len(trained) >= 1
    assert all((f / "row.json").exists() or (f / "last.pt").exists() for f in folders)


def test_a_recipe_preset_in_a_space(tmp_path, capsys):
    path = _space(tmp_path, """
        name: preset
        base: {mixer: shift, ffn: mlp, dims: 16, depths: 1, img_size: 8}
        params: {mixer: {choices: [shift, none]}}
        objectives: [top1]
        dataset: {name: digits, limit_train: 200, limit_test: 100}
        recipe: {name: nope}
    """)
    assert main(["search", str(path), "--trials", "1", "--results-dir", str(tmp_path)]) == 2
    assert "recipe: unknown recipe 'nope'; known: small, deit, shiftvit" in capsys.readouterr().err


def test_a_search_in_which_no_trial_completed_exits_1_with_a_line(tmp_path, capsys):
    path = _space(tmp_path, """
        name: none_ok
        base: {mixer: shift, ffn: mlp, dims: 16, depths: 1, img_size: 8}
        params:
          patch_size: {choices: [3]}
        dataset: {name: digits, limit_train: 200, limit_test: 100}
        """)
    assert main(["search", str(path), "--trials", "1", "--results-dir", str(tmp_path), "--json"]) == 1
    assert "error: no trial of study 'none_ok' completed (1 pruned, 0 failed)" in capsys.readouterr().err


def test_cpu_workers_share_the_cores_out():
    """Each CPU worker's PyTorch pool is the cores divided among the workers (at least one), so
    N workers never run N pools of all the cores (spinning in each other's barriers: a 6-trial
    tiny search with 2 workers on this project's 2-core machine took 17.3 s, 14.4 s shared out);
    GPU workers keep PyTorch's default."""
    import os

    from archbench.search.run import worker_threads

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert worker_threads("cpu", 1) == cores
    for n in range(1, cores + 3):
        t = worker_threads("cpu", n)
        assert t >= 1 and (t * n <= cores or t == 1)
    assert worker_threads("cuda", 2) is None and worker_threads("cuda:1", 1) is None
