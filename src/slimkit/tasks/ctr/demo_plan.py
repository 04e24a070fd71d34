"""The demo's embedded plan for a CTR model (kept identical to recipes/demo.yaml by a test).

Order follows how models are deployed: sparsify while training, remove a tower block, distill the
smaller model from the teacher, then quantize last, once the float weights are final.
"""

DEMO_PLAN_YAML = """\
version: 1
steps:
- method: prune.magnitude
  sparsity: 0.8
  scope: layer
  schedule: gradual
  epochs: 2.0
  lr: 0.0005
  targets:
    names: [tower.*, head, cross.*]
- method: truncate.layers
  container: tower
  drop: 1
  recover: distill
  epochs: 1.0
  lr: 0.0005
- method: distill.logits
  temperature: 2.0
  alpha: 0.5
  epochs: 1.0
  lr: 0.0003
- method: quantize.dynamic_int8
- method: quantize.embedding
  bits: 4
"""
