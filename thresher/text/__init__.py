"""Text primitives shared by stages: DSIR's tokenisation (`tokenize`), the one token and
n-gram hasher (`hashing`) and hashed n-gram counts per text (`ngrams`).

`ngram_features`, `importance_resample` and `decontaminate` all hash with `hashing`, so one
scheme, tested once, defines every n-gram hash in thresher.
"""
