"""Prefect flows: `curate` (validate -> run pipeline -> publish) and its scheduled serving."""
