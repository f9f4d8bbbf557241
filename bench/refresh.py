"""Bench: a scheduled refresh against the full run it refreshes, and one-off start-up time.

    .venv/bin/python bench/refresh.py [--rows 2000] [--append 0.05] [--no-prefect-server]

One command, each step a real `thresher run` subprocess (process start-up counts):

1. full      — a recipe (exact_dedup -> embed (backend onnx, whose vectors the row cache reuses)
               -> ngram_features) over `--rows` pool rows, into a
               fresh output folder with a cold row cache;
2. unchanged — the same command again: must answer "up to date" without a new snapshot;
3. refresh   — `--append` (5 %) new rows appended to the input file, then the same command:
               a new snapshot that embeds only the new rows (the manifest's cache hits/misses);
4. check     — a from-scratch run (cache off) over the appended input into another folder: its
               shards must equal the refresh's byte for byte (sha256).

Then the start-up time of a 2-row recipe (exact_dedup only; median of 3): `thresher run` with no Prefect API
configured (the default path: no server is started), and, unless `--no-prefect-server`, with
PREFECT_API_URL pointing at a real `prefect server` this bench starts on loopback (and stops by
PID). Prints wall seconds and ratios to the full run (goals: unchanged <= 0.1x, refresh <= 0.3x;
2-row start-up <= 5 s without a Prefect API).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POOL = Path(os.environ.get("THRESHER_SHARED_DATA", ROOT.parent / "shared" / "data")) / "general_pool" / "pool.jsonl.gz"
THRESHER = [sys.executable, "-m", "thresher.cli"]
sys.path.insert(0, str(ROOT))
from thresher.testing.ports import free_port  # noqa: E402


def pool_rows(n: int) -> list[dict]:
    if not POOL.exists():
        sys.exit(f"needs {POOL} (the shared data beside the project); set THRESHER_SHARED_DATA")
    out = []
    with gzip.open(POOL, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            out.append({"id": r["id"], "text": r["text"]})
            if len(out) == n:
                break
    if len(out) < n:
        sys.exit(f"{POOL} has only {len(out)} rows; ask for fewer with --rows")
    return out


def write_rows(path: Path, rows: list[dict], mode: str = "w") -> None:
    with open(path, mode, encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def recipe(path: Path, data: str, out: str, cache: bool = True) -> Path:
    path.write_text(json.dumps({
        "name": "bench-refresh",
        "sources": [{"name": "pool", "paths": [data]}],
        "stages": [{"type": "exact_dedup"}, {"type": "embed", "params": {"device": "cpu", "backend": "onnx"}},
                   {"type": "ngram_features"}],
        "output": {"dir": out},
        "cache": {"enabled": cache},
    }))
    return path


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return dt, p.stdout + p.stderr


def latest_manifest(out: Path) -> dict:
    with open(out / "latest" / "manifest.json") as fh:
        return json.load(fh)


def shard_hashes(out: Path) -> list[str]:
    m = latest_manifest(out)
    return [hashlib.sha256((out / "latest" / s["path"]).read_bytes()).hexdigest() for s in m["shards"]]


def start_prefect_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    sys.exit("prefect server did not become healthy in 180 s")


def startup(work: Path, env: dict, n: int = 3) -> float:
    data = work / "two.jsonl"
    write_rows(data, [{"id": "a", "text": "hello world"}, {"id": "b", "text": "a second row"}])
    r = work / "two.yaml"  # a one-off run: ingest, exact dedup, shards (no model to load)
    r.write_text(json.dumps({"sources": [{"name": "two", "paths": [str(data)]}], "stages": [{"type": "exact_dedup"}],
                             "output": {"dir": str(work / "two-out")}}))
    times = [timed([*THRESHER, "run", str(r), "--force"], env)[0] for _ in range(n)]
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--append", type=float, default=0.05)
    ap.add_argument("--no-prefect-server", action="store_true", help="Skip the start-up time with a Prefect API.")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("PREFECT_API_URL", None)
    work = Path(tempfile.mkdtemp(prefix="thresher-bench-refresh-"))
    try:
        n_new = max(1, int(args.rows * args.append))
        rows = pool_rows(args.rows + n_new)
        data = work / "pool.jsonl"
        write_rows(data, rows[:args.rows])
        out = work / "out"
        r = recipe(work / "recipe.yaml", str(data), str(out))

        t_full, _ = timed([*THRESHER, "run", str(r)], env)
        t_same, said = timed([*THRESHER, "run", str(r)], env)
        if "up to date" not in said:
            sys.exit(f"the unchanged rerun was not 'up to date':\n{said[-2000:]}")
        write_rows(data, rows[args.rows:], mode="a")
        t_refresh, _ = timed([*THRESHER, "run", str(r)], env)
        m = latest_manifest(out)
        cache = m["cache"]["by_stage"].get("embed", {})

        scratch = work / "scratch"
        timed([*THRESHER, "run", str(recipe(work / "scratch.yaml", str(data), str(scratch), cache=False))], env)
        same = shard_hashes(out) == shard_hashes(scratch)

        print(f"rows: {args.rows} + {n_new} appended ({args.append:.0%}); recipe: exact_dedup -> "
              "embed (onnx int8, cpu) -> ngram_features")
        print(f"full run            {t_full:7.2f} s   1.00x")
        print(f"unchanged rerun     {t_same:7.2f} s   {t_same / t_full:.2f}x   (goal <= 0.10x)  'up to date'")
        print(f"refresh (+{args.append:.0%} rows)  {t_refresh:7.2f} s   {t_refresh / t_full:.2f}x   (goal <= 0.30x)  "
              f"embed cache hits {cache.get('hits', 0)}, misses {cache.get('misses', 0)}")
        print(f"refresh == from-scratch run over the same input, byte for byte: {same}")

        t_local = startup(work, env)
        print(f"2-row start-up, no Prefect API (default path)   {t_local:6.2f} s   (goal <= 5 s)")
        if not args.no_prefect_server:
            proc, url = start_prefect_server(work / "prefect-home")
            try:
                t_prefect = startup(work, {**env, "PREFECT_API_URL": url, "PREFECT_HOME": str(work / "prefect-home")})
                print(f"2-row start-up, PREFECT_API_URL set (flow run)  {t_prefect:6.2f} s")
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
        if not same or cache.get("misses", 0) > n_new:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
