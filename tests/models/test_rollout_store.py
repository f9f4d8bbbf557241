"""The rollout store: keys, first-write-wins, shared run budgets, and several processes
writing one SQLite file at once."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from thresher.models.rollout_store import RolloutStore, rollout_key


def test_keys_are_stable_and_first_write_wins(tmp_path):
    k = rollout_key("m", "p", {"t": 0.7, "stop": []}, 3, 0)
    assert k == rollout_key("m", "p", {"stop": [], "t": 0.7}, "3", 0)  # param order and sample type don't matter
    assert k != rollout_key("m", "p", {"t": 0.7, "stop": []}, 3, 1)
    store = RolloutStore(str(tmp_path / "s" / "r.sqlite"))
    rec = {"key": k, "model": "m", "prompt": "p", "params": {}, "sample": 3, "seed": 0, "text": "first"}
    store.put_many([rec])
    store.put_many([{**rec, "text": "second"}])
    assert store.get_many([k, "missing"])[k].text == "first" and len(store) == 1
    store.set_rewards({k: 1})
    assert store.get_many([k])[k].reward == 1.0
    assert [store.reserve("run", 4, 10), store.reserve("run", 4, 10), store.reserve("run", 4, 10)] == [4, 4, 2]
    assert store.reserve("other", 0, 10) == 0
    store.close()


def _writer(path: str, worker: int, n: int, budget_out) -> None:
    store = RolloutStore(path)
    for i in range(0, n, 10):
        store.put_many([{"key": f"{worker}-{j}", "model": "m", "prompt": "p", "params": {}, "sample": j, "seed": 0,
                         "text": f"t{worker}-{j}"} for j in range(i, i + 10)])
        budget_out.put(store.reserve("run", 7, 500))


@pytest.mark.slow
def test_store_is_safe_for_concurrent_processes(tmp_path):
    path = str(tmp_path / "r.sqlite")
    q = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_writer, args=(path, w, 200, q)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = RolloutStore(path)
    assert len(store) == 800
    got = store.get_many([f"{w}-{j}" for w in range(4) for j in range(200)])
    assert got["3-199"].text == "t3-199" and len(got) == 800
    granted = [q.get() for _ in range(80)]
    assert sum(granted) == 500  # 80 asks of 7 = 560 wanted; the shared budget never overspends


