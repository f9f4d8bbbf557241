"""Fixtures for the model tests: real general_pool rows embedded once with the real MiniLM model."""

from __future__ import annotations

import pytest

from tests._general_pool import short_rows

# Handwritten paraphrases of real general_pool rows: (source id, paraphrase).
PARAPHRASES = [
    ("gutenberg:11:105", "For a while Alice and the Caterpillar stared at one another without speaking, "
     "until the Caterpillar removed the hookah from its mouth and spoke to her in a drowsy, lazy tone."),
    ("python_peps:pep-0006:4", "No changes to the syntax are allowed, and every compiled .pyc or .pyo file "
     "has to keep working without being regenerated across all bug-fix releases branched from a major version."),
    ("18f_blog:about:2", "Our projects are set up with interagency agreements, and we charge our partner "
     "agencies every month through the IPAC intra-governmental payment system."),
    ("state_union:1946-Truman:22", "Every American hopes that historians of the future will describe World "
     "War I and World War II not as two wars, but as the first and the final world wars."),
    ("inaugural:1861-Lincoln:17", "Should it be lawful for one state or several to destroy the Union, then the "
     "Union would be less perfect than it was before the Constitution, having lost its permanence."),
]


@pytest.fixture(scope="session")
def paraphrase_sources() -> list[str]:
    """The ids of the rows that `PARAPHRASES` reword, in order (the corpus's queries)."""
    return [s for s, _ in PARAPHRASES]


# The embedding backends the model tests run on: id -> (backend, precision). openvino runs the
# fp32 file only (its ONNX reader has no com.microsoft.QAttention, the int8 file's fused attention).
BACKENDS = {"torch": ("torch", "fp32"), "onnx-fp32": ("onnx", "fp32"), "onnx-int8": ("onnx", "int8"),
            "openvino-fp32": ("openvino", "fp32")}


@pytest.fixture(scope="session")
def corpus(shared_data):
    """(rows, their embeddings, the paraphrases' embeddings): 150 short rows plus the
    paraphrased ones, embedded on CPU (a few seconds: only tests marked slow use it)."""
    from thresher.models import embeddings

    rows = short_rows(shared_data, 150, must_include=tuple(s for s, _ in PARAPHRASES))
    model = embeddings.load_model(None, "cpu")
    vectors = embeddings.encode_texts(model, [r["text"] for r in rows], batch_size=64)
    queries = embeddings.encode_texts(model, [p for _, p in PARAPHRASES])
    return rows, vectors, queries


@pytest.fixture(scope="session")
def encoded(corpus):
    """backend id (`BACKENDS`) -> (rows' vectors, paraphrases' vectors) of `corpus` on that
    backend, each encoded once a session; a backend this machine lacks skips the test. The
    onnx/openvino export comes from the user's export cache (made there once, ~40 s)."""
    from thresher.models import embedding_backends, embeddings

    rows, vectors, queries = corpus
    done = {"torch": (vectors, queries)}

    def get(name: str):
        if name not in done:
            backend, precision = BACKENDS[name]
            if embedding_backends.backend_problem(backend):
                pytest.skip(embedding_backends.backend_problem(backend))
            model = embeddings.load_model(None, "cpu", backend=backend, precision=precision)
            done[name] = (embeddings.encode_texts(model, [r["text"] for r in rows]),
                          embeddings.encode_texts(model, [p for _, p in PARAPHRASES]))
        return done[name]

    return get
