"""Beam stages and transforms. `build.py` assembles one pipeline from a recipe."""
