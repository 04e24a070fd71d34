"""The causal-LM task's own plan (recipes/smollm2-w4.yaml's steps, kept identical by a test) and
search space, used by `slimkit run` without a plan file and by `slimkit auto`."""

LM_PLAN_YAML = """\
version: 1
steps:
- method: quantize.weight_only
  bits: 4
  group_size: 32
  param_bits: 6
  algorithm: gptq
  calibration_batches: 8
  embedding_bits: 4
  embedding_group_size: 32
"""

# Bits and the storage of group parameters set the size; the algorithm the quality per bit.
LM_SPACE_YAML = """\
steps:
- method: quantize.weight_only
  params:
    bits: {choice: [4, 3]}
    algorithm: {choice: [rtn, gptq]}
    param_bits: {choice: [0, 6]}
    embedding_bits: {choice: [0, 4]}
  fixed: {group_size: 32, embedding_group_size: 32}
"""
