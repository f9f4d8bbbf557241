"""Corrupt-input fuzzing for the readers (issue 10): read each generated file the way a
run does, in a worker process, and check the promise.

The promise under test: for every file, either the run fails with a message naming the file,
or every record the file really holds is written or quarantined (with file, line, reason) —
never fewer rows in silence.

* `read_like_a_run(case)` plans and reads the file the way the pipeline does (`plan_reads`,
  then the read DoFn of `thresher.io.ingest`, counters off) and reports rows, quarantine and
  the failure signal.
* `run_cases(cases)` runs truth (`tests.hostile.fuzz_truth`) + read for every case in worker
  subprocess (a segfault, e.g. on 20,000 levels of nesting or a corrupt memory-mapped Arrow
  file, or a hang is reported against its file, and the worker restarts for the rest);
  `violations(results)` checks the invariants, `overfailures` lists intact files that failed
  as a whole, and `summarize` prints both per format and kind.

Failure signal assumed (thresher/io/ingest.py, `_ReadDoFn`, as of this writing): planning
raises `InputError` naming the file, or reading emits a quarantine record with `line == -1`
and a reason starting "file unreadable"; an exception that escapes the DoFn counts as a
loud failure only when its message names the file.

Run by hand: `python -m tests.hostile.fuzz_read [n_per_format] [seed] [formats]` generates the
files (`tests.hostile.fuzz_files`) and prints a summary.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa

from tests.hostile.fuzz_files import FORMATS, make_cases
from tests.hostile.fuzz_truth import expected_row_numbers, truth

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------
# Reading the way a run does


def read_like_a_run(case: dict) -> dict:
    """Plan and read one file like the pipeline; rows, quarantine and failure signals."""
    from thresher.core import rows
    from thresher.io import ingest
    from thresher.io.readers import jsonl
    from thresher.recipe.load import validate_recipe

    path = case["path"]
    if case.get("json_block") and hasattr(jsonl, "JSON_BLOCK"):
        jsonl.JSON_BLOCK = case["json_block"]
    res: dict = {"rows": 0, "quarantined": 0, "fail": None, "uncaught": None, "bad_q": [], "invalid_written": 0,
                 "q_reasons": [], "row_nos": []}
    source = {"name": "fz", "paths": [path], "text_field": "text", "id_field": "id"}
    if case["fmt"] == "hf":
        source["format"] = "hf_disk"
    recipe = validate_recipe({"sources": [source]}, base_dir=str(Path(path).parent))
    try:
        tasks, _ = ingest.plan_reads(recipe, with_hashes=False)
    except ingest.InputError as exc:
        res["fail"] = {"where": "plan", "msg": str(exc), "names_file": path in str(exc)}
        return res
    except Exception as exc:  # noqa: BLE001 - what a run would show
        res["uncaught"] = f"plan: {type(exc).__name__}: {str(exc)[:300]}"
        res["uncaught_names_file"] = path in str(exc)
        return res
    dofn_cls = getattr(ingest, "_ReadDoFn", None)
    for task in tasks:
        try:
            if dofn_cls is not None:
                outputs = dofn_cls(case["batch_rows"], False).process(task)
            else:
                outputs = ((b, q) for pair in ingest.read_task(task, case["batch_rows"]) for b, q in [pair])
            for out in outputs:
                if isinstance(out, tuple):
                    pairs = [("rows", out[0]), ("q", out[1])]
                elif hasattr(out, "tag"):  # beam TaggedOutput
                    pairs = [("q" if out.tag == ingest.QUARANTINE_TAG else "rows", out.value)]
                else:
                    pairs = [("rows", out)]
                for what, b in pairs:
                    if b is None or not b.num_rows:
                        continue
                    if what == "rows":
                        res["rows"] += b.num_rows
                        res["row_nos"] += b.column(rows.SOURCE_ROW).to_pylist()
                        try:
                            b.validate(full=True)
                        except pa.ArrowInvalid as exc:
                            res["invalid_written"] += 1
                            res.setdefault("invalid_example", str(exc)[:200])
                    else:
                        _take_quarantine(res, path, b)
        except Exception as exc:  # noqa: BLE001 - escaped the read DoFn: the run would crash
            msg = f"{type(exc).__name__}: {str(exc)[:300]}"
            if path in str(exc) and "\n" not in str(exc).strip():
                res["fail"] = {"where": "raise", "msg": msg, "names_file": True}
            else:
                res["uncaught"] = msg
            return res
    return res


def _take_quarantine(res: dict, path: str, q: pa.RecordBatch) -> None:
    from thresher.core import rows

    cols = {name: q.column(name).to_pylist() for name in q.schema.names if name != "raw"}
    none = [None] * q.num_rows
    for i in range(q.num_rows):
        f = cols.get(rows.SOURCE_FILE, none)[i]
        line = cols.get(rows.SOURCE_ROW, none)[i]
        reason = cols.get("reason", [None] * q.num_rows)[i]
        if reason and reason.startswith("file unreadable"):
            msg = f"{f}: {reason}"
            one_line = "\n" not in reason.strip()
            # The run reports `source <name>: <reason>` (ingest.failed_reads): the reason itself
            # must name the file.
            res["fail"] = {"where": "quarantine", "msg": msg[:400],
                           "names_file": f == path and path in reason and one_line}
            continue
        res["quarantined"] += 1
        res["row_nos"].append(line)
        if len(res["q_reasons"]) < 5:
            res["q_reasons"].append(reason)
        if not (f == path and isinstance(line, int) and line >= 0 and reason):
            res["bad_q"].append({"file": f, "line": line, "reason": reason})


def _read_forked(case: dict) -> dict:
    """`read_like_a_run` in a forked child, so that a segfault (pyarrow's JSON parser on
    deep nesting) is this file's result instead of the worker's death."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            data = json.dumps(read_like_a_run(case)).encode()
        except BaseException as exc:  # noqa: BLE001
            data = json.dumps({"uncaught": f"{type(exc).__name__}: {str(exc)[:300]}"}).encode()
        with os.fdopen(w, "wb") as fh:
            fh.write(data)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"crash": f"killed by signal {os.WTERMSIG(status)} while reading (deep nesting, forked reader)"}
    return json.loads(data) if data else {"crash": f"reader child exited {os.WEXITSTATUS(status)} silently"}


def _worker(cases_file: str) -> None:
    """Subprocess: for each case, print START, then one RESULT line (truth + read)."""
    cases = json.loads(Path(cases_file).read_text())
    for case in cases:
        print("START", case["idx"], case["fmt"], flush=True)
        t0 = time.monotonic()
        try:
            out = {"truth": truth(case)}
            out["expect_rows"] = expected_row_numbers(case, out["truth"])
        except Exception as exc:  # noqa: BLE001 - a bug of this harness, not of the readers
            out = {"truth_error": f"{type(exc).__name__}: {exc}"[:300], "truth": None}
        print("READING", flush=True)  # a crash from here on is the reader's
        if case["kind"].startswith("deep") and hasattr(os, "fork"):
            out.update(_read_forked(case))
        else:
            out.update(read_like_a_run(case))
        out["secs"] = round(time.monotonic() - t0, 3)
        print("RESULT " + json.dumps({"key": [case["fmt"], case["idx"]], **out}), flush=True)


def run_cases(cases: list[dict], work: Path, per_file_timeout: float = 120.0, workers: int = 1) -> dict[tuple, dict]:
    """Truth + read of every case in worker subprocesses; a crash or hang is the current
    file's result ("crash"/"hang") and a fresh worker goes on with the rest.

    `workers` > 1 deals the cases round-robin to that many independent chains of workers (the
    files are independent). Each worker costs a start-up (imports, ~2 s of CPU), so it pays
    only for many files: 1,400 files took 28 s of worker CPU in one chain, 33 s in two, i.e.
    ~17 s of wall time on 2 idle cores; 76 files took 5 s in one and 9 s in two."""
    results: dict[tuple, dict] = {}
    errors: list[BaseException] = []

    def serve(chunk: list[dict], tag: str) -> None:
        try:
            results.update(_run_serially(chunk, work, tag, per_file_timeout))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(cases[w::workers], f"w{w}")) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _run_serially(cases: list[dict], work: Path, tag: str, per_file_timeout: float) -> dict[tuple, dict]:
    """One worker subprocess at a time reads `cases` in order; a fresh one replaces a dead one."""
    results: dict[tuple, dict] = {}
    todo = list(cases)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"}
    attempt = 0
    while todo:
        attempt += 1
        cf = work / f"cases_{tag}_{attempt}.json"
        cf.write_text(json.dumps(todo))
        # stderr to a file: the readers log every failure there, and a full pipe would block.
        err_path = work / f"worker_{tag}_{attempt}.stderr"
        with open(err_path, "wb") as err_fh:
            proc = subprocess.Popen([sys.executable, "-m", "tests.hostile.fuzz_read", "--worker", str(cf)], cwd=ROOT,
                                    env=env, stdout=subprocess.PIPE, stderr=err_fh)
        current = None
        reading = False
        buf = b""
        deadline = time.monotonic() + per_file_timeout + 30  # + start-up
        hung = False
        while True:
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                hung = True
                proc.kill()
                break
            chunk = os.read(proc.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith("START "):
                    _, idx, fmt = text.split(" ", 2)
                    current = (fmt, int(idx))
                    reading = False
                    deadline = time.monotonic() + per_file_timeout
                elif text == "READING":
                    reading = True
                elif text.startswith("RESULT "):
                    r_ = json.loads(text[7:])
                    results[tuple(r_["key"])] = r_
                    current = None
        proc.communicate()
        err = err_path.read_bytes()
        done = {(c["fmt"], c["idx"]) for c in todo} & set(results)
        if current is not None:
            text = err.decode(errors="replace")
            text = text[text.rfind("Fatal Python error"):] if "Fatal Python error" in text else text[-3000:]
            tail = [ln.strip() for ln in text.splitlines()
                    if ln.strip().startswith(("File ", "Fatal Python error"))][:6]
            results[current] = {"key": list(current), "stderr_tail": tail,
                                "crash": ("hang" if hung else f"exit {proc.returncode}")
                                + (" while reading" if reading else " in the ground truth (pyarrow itself)")}
            done.add(current)
        elif proc.returncode != 0 and len(done) == 0:
            raise RuntimeError(f"fuzz worker failed to start: {err.decode(errors='replace')[-2000:]}")
        todo = [c for c in todo if (c["fmt"], c["idx"]) not in done]
    return results


# ---------------------------------------------------------------------------------------
# Invariants


def violations(cases: list[dict], results: dict[tuple, dict]) -> list[dict]:
    """One entry per file that breaks the promise: {case, category, detail}."""
    out = []
    for c in cases:
        r = results[(c["fmt"], c["idx"])]

        def bad(category: str, detail: str, c=c) -> None:
            out.append({"fmt": c["fmt"], "kind": c["kind"], "category": category, "detail": detail,
                        "path": c["path"], "seed": c["seed"], "written": c["written"]})

        if r.get("truth_error"):
            bad("harness", f"ground truth failed: {r['truth_error']}")
            continue
        if "crash" in r:
            bad("crash", f"reader process died ({r['crash']}): {' | '.join(r.get('stderr_tail', []))[-300:]}")
            continue
        if r.get("uncaught"):
            bad("uncaught", f"exception escaped reading (run dies with a traceback): {r['uncaught']}")
            continue
        if r["bad_q"]:
            bad("quarantine-record", f"quarantine record without file/line/reason: {r['bad_q'][:2]}")
        if r["invalid_written"]:
            bad("invalid-utf8-written", f"{r['invalid_written']} written batch(es) fail validation: "
                                        f"{r.get('invalid_example')}")
        fail = r.get("fail")
        if fail is not None:
            if not fail["names_file"]:
                bad("unnamed-failure", f"failure does not name the file on one line: {fail['msg'][:200]}")
            continue
        if r["truth"] is None:
            bad("silent-corrupt", f"broken container read without failure: {r['rows']} rows + "
                                  f"{r['quarantined']} quarantined, {c['written']} written")
        elif r["rows"] + r["quarantined"] != r["truth"]:
            bad("count", f"{r['rows']} rows + {r['quarantined']} quarantined != {r['truth']} records held "
                         f"({c['written']} written); reasons {r['q_reasons'][:3]}")
        else:
            # Each record once, under its own number (rows and quarantine together).
            got = Counter(r["row_nos"])
            dups = sorted(k for k, v in got.items() if v > 1)
            exp = r.get("expect_rows")
            if dups:
                bad("row-numbers", f"row numbers given twice: {dups[:5]}")
            elif exp is not None and set(got) != set(exp):
                missing, extra = sorted(set(exp) - set(got)), sorted(set(got) - set(exp))
                bad("row-numbers", f"row numbers differ from the file's records: missing {missing[:5]}, "
                                   f"not records {extra[:5]}")
    return out


def overfailures(cases: list[dict], results: dict[tuple, dict]) -> list[dict]:
    """Files that failed as a whole though their container is intact (plain JSONL/CSV records
    that should have been quarantined one by one): not a broken promise, but worth knowing."""
    out = []
    for c in cases:
        r = results[(c["fmt"], c["idx"])]
        if "crash" not in r and r.get("fail") and r.get("truth") is not None:
            out.append({"fmt": c["fmt"], "kind": c["kind"], "path": c["path"], "seed": c["seed"],
                        "where": r["fail"]["where"], "category": "whole-file-failure", "msg": r["fail"]["msg"][:300]})
    return out


def summarize(cases: list[dict], results: dict[tuple, dict]) -> str:
    viol = violations(cases, results)
    by = Counter((c["fmt"], c["kind"]) for c in cases)
    vby: dict[tuple, list] = defaultdict(list)
    for v in viol:
        vby[(v["fmt"], v["kind"])].append(v)
    outcome: dict[tuple, Counter] = defaultdict(Counter)
    for c in cases:
        r = results[(c["fmt"], c["idx"])]
        outcome[(c["fmt"], c["kind"])]["crash" if "crash" in r else "failed" if r.get("fail") else
                                       "uncaught" if r.get("uncaught") else "read"] += 1
    lines = []
    for key in sorted(by):
        vs = vby.get(key, [])
        cats = Counter(v["category"] for v in vs)
        ex = f"  e.g. {vs[0]['path'].rsplit('/', 1)[-1]} (seed {vs[0]['seed']}): {vs[0]['detail'][:220]}" if vs else ""
        lines.append(f"{key[0]:10s} {key[1]:16s} {len(vs):3d}/{by[key]:3d} bad {dict(outcome[key])} "
                     f"{dict(cats) or ''}{ex}")
    of = overfailures(cases, results)
    lines.append(f"-- {len(viol)} violations over {len(cases)} files; {len(of)} intact files failed as a whole")
    ofby: dict[tuple, list] = defaultdict(list)
    for o in of:
        ofby[(o["fmt"], o["kind"])].append(o)
    for key, os_ in sorted(ofby.items()):
        lines.append(f"   overfail {key[0]} {key[1]} x{len(os_)}: {os_[0]['msg'].split(': ', 1)[-1][:240]!r}")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
        sys.exit(0)
    import tempfile

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1234
    fmts = sys.argv[3].split(",") if len(sys.argv) > 3 else FORMATS
    big = os.environ.get("FUZZ_SMALL_HUGE") is None
    with tempfile.TemporaryDirectory() as d:
        t0 = time.monotonic()
        cases = [c for f in fmts for c in make_cases(Path(d) / "files", f, n, seed, None if big else [])]
        t1 = time.monotonic()
        res = run_cases(cases, Path(d))
        print(f"generate {t1 - t0:.1f}s, read {time.monotonic() - t1:.1f}s")
        print(summarize(cases, res))
