"""The text-encoder task's own plan and search space (the plan is recipes/minilm.yaml's content,
kept identical by a test), used by `slimkit run` without a plan file and by `slimkit auto`."""

MINILM_PLAN_YAML = """\
version: 1
steps:
- method: truncate.layers
  container: encoder.layer
  indices: [1, 3, 5]
  recover: none
- method: truncate.vocab
- method: distill.encoder
  epochs: 3.0
  lr: 0.0003
  batch_size: 32
"""

# Depth first (what costs latency), the vocabulary (what costs bytes), a short distillation to
# recover, int8 last. Every slot but the distillation is optional.
ENCODER_SPACE_YAML = """\
steps:
- method: truncate.layers
  optional: true
  params:
    drop: {int: [1, 4]}
  fixed: {container: encoder.layer, recover: none}
- method: truncate.vocab
  optional: true
- method: distill.encoder
  params:
    epochs: {choice: [0.5, 1.0]}
  fixed: {lr: 0.0002, batch_size: 32}
- method: quantize.dynamic_int8
  optional: true
"""
