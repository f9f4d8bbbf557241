"""thresher: data curation and selection pipelines for LLM training data.

Heavy libraries (Beam, torch, sentence-transformers, Prefect) are imported lazily by the
modules that need them, so `import thresher` stays cheap.
"""

__version__ = "0.1.0"
