"""faiss indexes over embeddings: build, save, load, query.

Vectors are L2-normalised embeddings (the `embed` stage's column), so every index here uses
inner product, which is cosine similarity.

* `flat`  — `IndexFlatIP`: exact; memory n·d·4 bytes; a query scans every vector.
* `ivf`   — `IndexIVFFlat`: k-means into `nlist` lists, a query scans `nprobe` of them;
            approximate, same memory as flat plus the centroids, much faster queries.
* `ivfpq` — `IndexIVFPQ`: IVF with product-quantised codes (`pq_m` bytes per vector at
            8 bits a code): approximate scores, ~d·4/pq_m times less memory.
* `auto`  — `flat` below `ivf_min_rows` vectors, else `ivf`.

On a machine where `faiss` has GPU support (`thresher[gpu]` installs faiss-gpu) and sees a
GPU, training, adding and searching run there; indexes are always saved in CPU form, so a
saved index loads anywhere.

Files: `<name>.faiss` (faiss's own serialisation) and, beside it, `<name>.ids.arrow`
(Arrow IPC stream, one `id` column: row i of the index is `ids[i]`).

faiss is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

import numpy as np
import pyarrow as pa

from thresher.io.atomic import write_atomic, write_bytes_atomic

KINDS = ("auto", "flat", "ivf", "ivfpq")
IDS_SUFFIX = ".ids.arrow"
# faiss warns (and clusters poorly) with fewer than 39 training points per list.
_MIN_POINTS_PER_LIST = 39


FAISS_MISSING = ("faiss is not installed: `pip install 'thresher[cpu]'` (faiss-cpu) or "
                 "`pip install 'thresher[gpu]'` (faiss-gpu, in an environment without faiss-cpu)")


def faiss_module():
    """The `faiss` module, or an ImportError that says how to install it.

    faiss is an extra (cpu or gpu build), not a base dependency: both builds provide the same
    module and must never be installed together.
    """
    try:
        import faiss  # noqa: F401 (the one real import)
    except ImportError:
        raise ImportError(FAISS_MISSING) from None
    return faiss


def faiss_problem() -> str | None:
    """For stages' `check()`: None when faiss imports, else how to install it."""
    import importlib.util

    return None if importlib.util.find_spec("faiss") else FAISS_MISSING


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    faiss = faiss_module()

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def as_matrix(vectors: Any) -> np.ndarray:
    """A C-contiguous float32 (n, d) array, as faiss wants it."""
    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {arr.shape}")
    return arr


def default_nlist(n: int) -> int:
    """~4·sqrt(n) lists (faiss's rule of thumb), with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST))


def choose_kind(kind: str, n: int, ivf_min_rows: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "flat" if n < ivf_min_rows else "ivf"
    return kind


def build_index(
    vectors: Any,
    kind: str = "auto",
    *,
    ivf_min_rows: int = 100_000,
    nlist: int | None = None,
    nprobe: int = 16,
    pq_m: int | None = None,
    seed: int = 0,
    use_gpu: bool | None = None,
):
    """Build an inner-product index over `vectors` (n, d); row i of the index is vector i.

    `use_gpu=None` uses the GPU when `gpu_available()`. The returned index may live on the
    GPU; `save_index` copies it back to the CPU. IVF training is seeded (`seed`), so the same
    vectors in the same order give the same index.
    """
    faiss = faiss_module()

    x = as_matrix(vectors)
    n, d = x.shape
    kind = choose_kind(kind, n, ivf_min_rows)
    gpu = gpu_available() if use_gpu is None else bool(use_gpu)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    else:
        if n == 0:
            raise ValueError(f"an {kind} index needs training vectors; got none")
        lists = min(nlist or default_nlist(n), n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, lists, faiss.METRIC_INNER_PRODUCT)
        else:
            m = pq_m or _default_pq_m(d)
            if d % m:
                raise ValueError(f"pq_m={m} must divide the embedding dimension {d}")
            # 8-bit codes need 256·39 training vectors; fewer bits for small sets.
            nbits = int(min(8, max(4, math.floor(math.log2(max(n // _MIN_POINTS_PER_LIST, 1))))))
            index = faiss.IndexIVFPQ(quantizer, d, lists, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.nprobe = min(nprobe, lists)
    if gpu:
        index = _to_gpu(index)
        if kind != "flat" and hasattr(index, "cp"):
            index.cp.seed = seed
    if kind != "flat":
        index.train(x)
    if n:
        index.add(x)
    return index


def _default_pq_m(d: int) -> int:
    """The largest divisor of d that is at most d/8 (8 dims a code byte), e.g. 48 for 384."""
    for m in range(max(1, d // 8), 0, -1):
        if d % m == 0:
            return m
    return 1


def _to_gpu(index):
    faiss = faiss_module()

    # faiss's Python wrapper keeps `res` referenced from the GPU index it returns.
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)


def is_gpu_index(index) -> bool:
    return type(index).__name__.startswith("Gpu")


def to_cpu(index):
    faiss = faiss_module()

    return faiss.index_gpu_to_cpu(index) if is_gpu_index(index) else index


def ids_path_for(path: str) -> str:
    base = path[: -len(".faiss")] if path.endswith(".faiss") else path
    return base + IDS_SUFFIX


def save_index(index, ids: Any, path: str) -> list[str]:
    """Write `index` (CPU form) to `path` and its row ids beside it, both atomically.

    Returns the two paths written. `ids[i]` names the row of index entry i.
    """
    faiss = faiss_module()

    ids_list = [str(i) for i in (ids.tolist() if isinstance(ids, np.ndarray) else list(ids))]
    if len(ids_list) != index.ntotal:
        raise ValueError(f"{len(ids_list)} ids for an index of {index.ntotal} vectors")
    data = faiss.serialize_index(to_cpu(index))
    write_bytes_atomic(path, np.asarray(data).tobytes())
    ids_path = ids_path_for(path)
    table = pa.table({"id": pa.array(ids_list, pa.string())})

    def write(fh):
        with pa.ipc.new_stream(fh, table.schema) as w:
            w.write_table(table)

    write_atomic(ids_path, write)
    return [path, ids_path]


def load_index(path: str, use_gpu: bool | None = False):
    """Read an index saved by `save_index`: `(index, ids)` with ids a numpy array of str."""
    faiss = faiss_module()

    if not os.path.exists(path):
        raise FileNotFoundError(f"no faiss index at {path}")
    with open(path, "rb") as fh:
        index = faiss.deserialize_index(np.frombuffer(fh.read(), dtype=np.uint8))
    with open(ids_path_for(path), "rb") as fh:
        table = pa.ipc.open_stream(io.BytesIO(fh.read())).read_all()
    ids = np.asarray(table.column("id").to_pylist(), dtype=object)
    if len(ids) != index.ntotal:
        raise ValueError(f"{path}: {len(ids)} ids for an index of {index.ntotal} vectors")
    if use_gpu or (use_gpu is None and gpu_available()):
        index = _to_gpu(index)
    return index, ids


def search(index, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours by inner product: `(scores (nq, k), positions (nq, k))`.

    Positions index the index's rows (and its ids); -1 (score -inf/-3.4e38) where the index
    holds fewer than k vectors or an IVF probe found fewer.
    """
    q = as_matrix(queries)
    if q.shape[1] != index.d:
        raise ValueError(f"queries have dimension {q.shape[1]}, the index {index.d}")
    scores, positions = index.search(q, k)
    return scores, positions


def describe(index) -> dict[str, Any]:
    """Facts about an index for reports."""
    faiss = faiss_module()

    cpu = to_cpu(index)
    out: dict[str, Any] = {"ntotal": int(cpu.ntotal), "dim": int(cpu.d), "gpu": is_gpu_index(index)}
    ivf = faiss.try_extract_index_ivf(cpu)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
    if ivf is None:
        out["kind"] = "flat"
    else:
        out["kind"] = "ivfpq" if isinstance(ivf, faiss.IndexIVFPQ) else "ivf"
        out["nlist"] = int(ivf.nlist)
        out["nprobe"] = int(ivf.nprobe)
    return out
