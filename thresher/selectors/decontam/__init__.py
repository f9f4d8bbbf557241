"""Helpers of the `decontaminate` selector: benchmark loading, n-gram index, embedding index."""
