"""The default search space of `slimkit auto` for CTR models (kept identical to
recipes/search-ctr.yaml by a test; copy that file to extend it).

The slots follow the demo plan's order (sparsify while training, drop tower blocks, distill,
rebuild the embedding tables with fewer rows (hashing, hot rows kept), quantize last) and each
is optional, so the search also tries leaving a step out. Sensitivity
probes narrow the two per-layer steps before the first trial.
"""

CTR_SPACE_YAML = """\
steps:
- method: prune.magnitude
  optional: true
  params:
    sparsity: {float: [0.5, 0.95]}
  fixed: {scope: layer, schedule: gradual, epochs: 1.0, lr: 0.0005,
          targets: {names: [tower.*, head, cross.*]}}
  sensitivity: {sparsity: 0.95, schedule: oneshot, epochs: 0.0}
- method: truncate.layers
  optional: true
  params:
    drop: {int: [1, 2]}
  fixed: {container: tower, recover: distill, epochs: 1.0, lr: 0.0005}
- method: distill.logits
  optional: true
  params:
    temperature: {choice: [1.0, 2.0, 4.0]}
    epochs: {choice: [1.0, 2.0]}
  fixed: {alpha: 0.5, lr: 0.0003}
- method: truncate.embedding_hash
  optional: true
  params:
    budget: {float: [0.25, 0.75]}
  fixed: {hot: 0.5}
- method: quantize.dynamic_int8
  optional: true
- method: quantize.embedding
  optional: true
  params:
    bits: {choice: [8, 4, 2]}
  sensitivity: {bits: 2}
"""
