"""Two-tower retrieval: user and item towers trained with in-batch negatives, ranked over the
full item catalogue (the `two-tower` task)."""
