"""The causal-LM task's default plan and search space (placeholders until measured)."""

LM_PLAN_YAML = """\
version: 1
steps:
- method: quantize.weight_only
  bits: 4
  group_size: 64
  algorithm: gptq
"""

LM_SPACE_YAML = """\
steps:
- method: quantize.weight_only
  params:
    bits: {choice: [4, 3]}
    algorithm: {choice: [rtn, gptq, awq]}
  fixed: {group_size: 64}
"""
