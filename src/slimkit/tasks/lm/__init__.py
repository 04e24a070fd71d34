"""The causal language-model task (perplexity, KL divergence and top-1 agreement)."""
