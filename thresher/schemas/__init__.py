"""Arrow row schemas, the recipe model and the manifest layout."""
