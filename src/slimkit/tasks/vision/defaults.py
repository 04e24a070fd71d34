"""The vision task's own plan and search space, used by `slimkit run` without a plan file and by
`slimkit auto`: physical channel pruning of the CNN with distillation, then static INT8."""

CNN_PLAN_YAML = """\
version: 1
steps:
- method: prune.structured
  ratio: 0.5
  steps: 2
  recover: distill
  epochs: 1.0
  targets: {names: [conv1, conv2, fc1]}
- method: quantize.static_int8
"""

CNN_SPACE_YAML = """\
steps:
- method: prune.structured
  optional: true
  params:
    ratio: {float: [0.25, 0.75]}
  fixed: {steps: 1, recover: distill, epochs: 1.0, targets: {names: [conv1, conv2, fc1]}}
- method: quantize.static_int8
  optional: true
"""
