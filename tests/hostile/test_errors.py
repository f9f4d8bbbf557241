"""Errors a person can act on, and signals (issue 10, cases 7, 8, 10, 11).

Every failure is an exit code (2 recipe / command line, 1 run / environment, 130 / 143
signals) and at most two lines on stderr (an invalid recipe: one per problem); `--debug` or
THRESHER_DEBUG=1 adds the traceback. SIGINT / SIGTERM end a run within 5 s on both paths,
leave no manifest and no child process, and a rerun finishes the work.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import DEMO_DATA, ROOT
from thresher.cli import app
from thresher.load import load_manifest

POOL = str(DEMO_DATA / "pool_sample.jsonl.gz")


def _recipe(tmp: Path, name: str = "r.yaml", **extra) -> Path:
    recipe = {"name": "h", "sources": [{"name": "pool", "paths": [POOL], "id_field": "id"}],
              "stages": [{"type": "exact_dedup"}], "output": {"dir": "out"}}
    recipe.update(extra)
    path = tmp / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, list(args), env=env)


def _short(res, code: int, lines: int = 2) -> str:
    """The exit code is `code`, stderr is at most `lines` lines and has no traceback."""
    assert res.exit_code == code, res.output
    err = res.stderr
    assert 0 < len(err.splitlines()) <= lines, err
    assert "Traceback" not in err
    return err


# -- case 10: every param checked before work starts --------------------------------------


def test_negative_partitions_is_a_recipe_error(tmp_path):
    path = _recipe(tmp_path, output={"dir": "out", "partitions": -3})
    err = _short(_cli("validate", str(path), "--no-inputs"), 2)
    assert "output.partitions: give `auto` or a number from 1 to 10,000 (got -3)" in err
    err = _short(_cli("run", str(_recipe(tmp_path)), "--no-prefect", "--set", "output.partitions=-3"), 2)
    assert "output.partitions" in err and not (tmp_path / "out").exists()


def test_set_reaches_into_lists(tmp_path):
    path = _recipe(tmp_path)
    res = _cli("validate", str(path), "--set", "sources.0.max_bad_fraction=0.5", "--no-inputs")
    assert res.exit_code == 0, res.output
    err = _short(_cli("validate", str(path), "--set", "sources.0.max_bad_fraction=2"), 2)
    assert "sources.0.max_bad_fraction: Input should be less than or equal to 1" in err
    err = _short(_cli("run", str(path), "--no-prefect", "--set", "sources.3.max_bad_fraction=0.5"), 2)
    assert "--set sources.3.max_bad_fraction: index 3 is out of range: sources has 1 item(s)" in err
    err = _short(_cli("validate", str(path), "--set", "sources.pool.x=1"), 2)
    assert "sources is a list; name an item by its index" in err
    err = _short(_cli("validate", str(path), "--set", "name.x=1"), 2)
    assert "name is 'h', not a mapping or a list" in err


def test_validate_runs_the_reward_check(tmp_path):
    stage = {"type": "variance_filter", "params": {"policy": {"backend": "scripted"}, "reward": "nosuchmod:fn"}}
    path = _recipe(tmp_path, stages=[stage])
    err = _short(_cli("validate", str(path)), 2)
    assert "stages.0.params.reward: reward 'nosuchmod:fn': no module named 'nosuchmod'" in err


# -- case 8: YAML alias bomb -------------------------------------------------------------


def test_yaml_alias_bomb_is_refused(tmp_path):
    levels = ["    l0: &l0 [" + ", ".join(["x"] * 9) + "]"]
    levels += [f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text(f"name: bomb\nsources: [{{name: p, paths: [{POOL}]}}]\nrunner:\n  options:\n"
                    + "\n".join(levels) + "\n")
    t0 = time.perf_counter()
    err = _short(_cli("validate", str(path), "--no-inputs"), 2)
    assert "aliases expand to more than 1,000,000 values" in err and time.perf_counter() - t0 < 3
    path.write_text(f"name: ok\nsources: [{{name: p, paths: [{POOL}], normalize: &n {{nfc: true}}}},"
                    f" {{name: q, paths: [{POOL}], normalize: *n}}]\n")
    assert _cli("validate", str(path), "--no-inputs").exit_code == 0  # ordinary aliases still work


# -- case 11: environment errors ---------------------------------------------------------


def test_recipe_path_that_is_a_folder_or_not_utf8(tmp_path):
    err = _short(_cli("validate", str(tmp_path)), 2)
    assert "is a folder; give the recipe's YAML file" in err
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    err = _short(_cli("run", str(bad), "--no-prefect"), 2)
    assert "not UTF-8 text (byte 0xe9 at offset 9); save the recipe as UTF-8" in err


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    err = _short(_cli("run", str(_recipe(tmp_path)), "--no-prefect"), 1, lines=1)
    assert f"File exists: {tmp_path / 'out'}" in err and "choose another output folder (--out)" in err


def test_read_only_output_folder(tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() == 0:  # root writes anywhere: the kernel's refusal is simulated
        real = os.makedirs

        def refuse(path, *a, **k):
            if str(path).startswith(str(out)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *a, **k)

        monkeypatch.setattr(os, "makedirs", refuse)
    else:
        out.chmod(0o555)
    err = _short(_cli("run", str(_recipe(tmp_path)), "--no-prefect", "--out", str(out)), 1, lines=1)
    assert "Permission denied" in err and "choose another output folder (--out)" in err


@pytest.mark.slow
def test_full_disk_mid_run(tmp_path, monkeypatch):
    import thresher.io.shard_files as shard_files

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(shard_files, "write_atomic", full)
    err = _short(_cli("run", str(_recipe(tmp_path)), "--no-prefect"), 1, lines=1)
    assert "No space left on device" in err and "free some space" in err
    assert not (tmp_path / "out" / "latest").exists()


def test_inspect_missing_or_corrupt_manifest(tmp_path):
    err = _short(_cli("inspect", str(tmp_path / "nothing")), 1, lines=1)
    assert "is not a finished thresher run" in err
    (tmp_path / "manifest.json").write_text('{"format": "thresher-manifest/1", "na')
    err = _short(_cli("inspect", str(tmp_path)), 1, lines=1)
    assert "manifest.json is not a readable thresher manifest" in err
    (tmp_path / "manifest.json").write_text('{"format": "thresher-manifest/1"}')
    err = _short(_cli("inspect", str(tmp_path)), 1, lines=1)
    assert "(no key 'counts')" in err


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "out").write_text("not a folder")
    path = str(_recipe(tmp_path))
    for res in (_cli("--debug", "run", path, "--no-prefect"),
                _cli("run", path, "--no-prefect", env={"THRESHER_DEBUG": "1"})):
        assert res.exit_code == 1
        assert "Traceback (most recent call last)" in res.stderr and "FileExistsError" in res.stderr
        assert res.stderr.splitlines()[-1].startswith("error: File exists")


def test_unexpected_error_names_itself_and_points_at_debug(tmp_path, monkeypatch):
    import thresher.flows.local as local

    def boom(plan):
        raise RuntimeError("stage blew up\nsecond line")

    monkeypatch.setattr(local, "run_plan", boom)
    err = _short(_cli("run", str(_recipe(tmp_path)), "--no-prefect"), 1)
    assert err.splitlines() == ["run failed: RuntimeError: stage blew up",
                                "(run `thresher --debug ...` or set THRESHER_DEBUG=1 for the traceback)"]


@pytest.mark.slow
def test_busy_output_folder_then_wait(tmp_path):
    from thresher.engine.outdir import output_lock

    path = str(_recipe(tmp_path))
    with output_lock(str(tmp_path / "out")):
        err = _short(_cli("run", path, "--no-prefect"), 1, lines=1)
    assert "is in use by another thresher run" in err

    hold, held = threading.Event(), threading.Event()

    def holder():
        with output_lock(str(tmp_path / "out")):
            held.set()
            hold.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    threading.Timer(0.5, hold.set).start()
    res = _cli("run", path, "--no-prefect", "--wait")
    t.join()
    assert res.exit_code == 0, res.output
    assert load_manifest(str(tmp_path / "out"))["num_rows"] > 0


@pytest.mark.slow
def test_subprocess_errors_are_short(tmp_path):
    """Through the real entry point: no Beam import warning, no traceback, exit codes."""
    path = _recipe(tmp_path, output={"dir": "out", "partitions": -3})
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "thresher.cli", "validate", str(path)], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 2, p.stderr
    for args in (["--debug", "validate", str(tmp_path)], ["validate", str(tmp_path), "--debug"]):
        p = subprocess.run([sys.executable, "-m", "thresher.cli", *args], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=120)
        assert p.returncode == 2 and "Traceback" in p.stderr and "RecipeError" in p.stderr, p.stderr


# -- case 7: signals ---------------------------------------------------------------------


@pytest.fixture
def big(big_corpus) -> Path:
    """80,000 rows (tests/conftest.py): the Beam part of a run takes several seconds, time
    enough to interrupt it."""
    return big_corpus


def _big_recipe(big: Path, tmp: Path, **extra) -> Path:
    recipe = {"name": "big", "sources": [{"name": "pool", "paths": [str(big / "part*.jsonl.gz")], "id_field": "id"}],
              "stages": [{"type": "exact_dedup"}], "output": {"dir": "out", "shard_max_rows": 1500, "partitions": 4},
              **extra}
    path = tmp / "big.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _start(recipe: Path, prefect: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "thresher.cli", "run", str(recipe), "--prefect" if prefect else "--no-prefect"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    # Its own session, so that a "terminal Ctrl-C" can go to the whole process group.
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT, start_new_session=True)


def _interrupt(tmp: Path, recipe: Path, prefect: bool, sig: int, group: bool = False,
               min_children: int = 0) -> None:
    out = tmp / "out"
    p = _start(recipe, prefect)
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not list(out.glob("snapshots/*/_work")):
        time.sleep(0.02)
    time.sleep(1.0)  # into the Beam pipeline
    assert p.poll() is None, "the run finished before it could be interrupted"
    children = psutil.Process(p.pid).children(recursive=True)
    while len(children) < min_children and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
        children = psutil.Process(p.pid).children(recursive=True)
    assert len(children) >= min_children, [c.cmdline()[:3] for c in children]
    t0 = time.perf_counter()
    os.killpg(p.pid, sig) if group else p.send_signal(sig)
    try:
        code = p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    seconds = time.perf_counter() - t0
    err = p.stderr.read()
    print(f"{'prefect' if prefect else 'local'} {signal.Signals(sig).name}: exit {code} after {seconds:.2f} s")
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err[-3000:]
    assert seconds < 5, f"took {seconds:.1f} s to stop"
    name = signal.Signals(sig).name
    assert err.splitlines()[-1] == (f"interrupted ({name}): the run stopped unfinished, no manifest written; "
                                    "rerun to finish it"), err[-3000:]
    assert "Traceback" not in err and "ConnectError" not in err
    assert not (out / "latest").exists()
    gone, alive = psutil.wait_procs(children, timeout=2)
    assert not alive, [c.pid for c in alive]  # Prefect's server, Beam's workers: ended too


def _rerun_completes(tmp: Path, recipe: Path) -> None:
    p = _start(recipe, prefect=False)
    assert p.wait(timeout=300) == 0, p.stderr.read()[-3000:]
    assert load_manifest(str(tmp / "out"))["num_rows"] == 80_000


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_local_run(big, tmp_path, sig):
    recipe = _big_recipe(big, tmp_path)
    _interrupt(tmp_path, recipe, prefect=False, sig=sig)
    if sig == signal.SIGINT:
        _rerun_completes(tmp_path, recipe)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_prefect_run(big, tmp_path, sig):
    recipe = _big_recipe(big, tmp_path)
    # Ctrl-C in a terminal interrupts the whole process group, Prefect's server with it.
    _interrupt(tmp_path, recipe, prefect=True, sig=sig, group=sig == signal.SIGINT)
    if sig == signal.SIGTERM:
        _rerun_completes(tmp_path, recipe)


@pytest.mark.slow
def test_signal_ends_dask_worker_processes(big, tmp_path):
    """A LocalCluster's worker processes (the local parallel path) are children: they end with
    the run, and print nothing."""
    pytest.importorskip("dask.distributed")
    recipe = _big_recipe(big, tmp_path, runner={"runner": "dask", "options": {"dask_workers": 2}})
    # interrupted once both workers run: multiprocessing's resource tracker, the forkserver
    # and the two workers it forked
    _interrupt(tmp_path, recipe, prefect=False, sig=signal.SIGTERM, min_children=4)
