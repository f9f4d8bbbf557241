"""Selectors: stages that score rows and decide keep/drop with a reason.

Always imported as `thresher.selectors` (a top-level `selectors` would shadow the standard
library module that asyncio needs).
"""
