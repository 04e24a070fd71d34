"""Text-encoder task: sentence embeddings of a BERT-like encoder (all-MiniLM-L6-v2) scored on the
Lee similarity benchmark and the women's clothing reviews; importing it loads no data."""

from .data import (
    clothing_reviews,
    domain_corpus,
    lee_background,
    lee_documents,
    lee_similarity,
    review_split,
)
from .task import TextEncoderTask, embed_ids, pad_batch

__all__ = ["TextEncoderTask", "clothing_reviews", "domain_corpus", "embed_ids",
           "lee_background", "lee_documents", "lee_similarity", "pad_batch", "review_split"]
