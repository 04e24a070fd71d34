"""Run a causal LM exported by lm_onnx.export_causal_lm in ONNX Runtime: a prefill, then one
token per call, with the key/value cache kept between calls as the session returned it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OrtCausalLM:
    """A CPU InferenceSession of an exported causal LM, with the cache layout read from the
    file's own inputs (past_key_values.{i}.key: [batch, kv_heads, past, head_dim])."""

    def __init__(self, path: str | Path, *, threads: int | None = None,
                 options: dict[str, str] | None = None) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        from .runtime import available_cores

        so = ort.SessionOptions()
        so.intra_op_num_threads = available_cores() if threads is None else threads
        so.inter_op_num_threads = 1
        for key, value in (options or {}).items():
            so.add_session_config_entry(key, value)
        self._bind(ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]))

    @classmethod
    def from_session(cls, session: Any) -> OrtCausalLM:
        """A runner over an open session of an exported causal LM."""
        runner = cls.__new__(cls)
        runner._bind(session)
        return runner

    def _bind(self, session: Any) -> None:
        self.session = session
        self.cache_names = [i.name for i in self.session.get_inputs()
                            if i.name.startswith("past_key_values.")]
        first = self.session.get_inputs()[3].shape
        self.kv_heads, self.head_dim = int(first[1]), int(first[3])

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
                for _ in self.cache_names]

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray,
             cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits for `input_ids` [batch, seq] after the cached positions, and the new cache.

        Positions count the unmasked tokens before each one (as transformers' generate does),
        so left padding in `attention_mask` [batch, past + seq] shifts nothing."""
        seq = input_ids.shape[1]
        positions = np.cumsum(attention_mask, axis=1) - 1
        positions = np.where(attention_mask == 0, 1, positions)[:, -seq:]
        feed: dict[str, Any] = {"input_ids": input_ids.astype(np.int64),
                                "attention_mask": attention_mask.astype(np.int64),
                                "position_ids": positions.astype(np.int64)}
        feed.update(zip(self.cache_names, cache, strict=True))
        logits, *present = self.session.run(None, feed)
        return logits, present

    def greedy(self, input_ids: np.ndarray, new_tokens: int) -> np.ndarray:
        """Greedy continuation [batch, new_tokens] of a prompt without padding."""
        batch = input_ids.shape[0]
        mask = np.ones_like(input_ids, dtype=np.int64)
        logits, cache = self.step(input_ids, mask, self.empty_cache(batch))
        out = []
        for i in range(new_tokens):
            token = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
            out.append(token)
            if i + 1 == new_tokens:
                break  # the last token's own logits are not needed
            mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
            logits, cache = self.step(token, mask, cache)
        return np.concatenate(out, axis=1)
