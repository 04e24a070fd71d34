"""How to cut a model: submodule get/set, structural edits that the artifact loader replays."""

from .edits import (
    MASK,
    apply_edit,
    attach_masks,
    detach_masks,
    drop_blocks,
    is_masked,
    mark_masked,
    restore_masks,
    swap_module,
    training_masks,
)
from .modules import get_submodule, set_submodule
from .resize_rules import register_resize_rule
from .shrink import cut_tensors

__all__ = ["MASK", "apply_edit", "attach_masks", "cut_tensors", "detach_masks", "drop_blocks",
           "get_submodule", "is_masked", "mark_masked", "register_resize_rule", "restore_masks",
           "set_submodule", "swap_module", "training_masks"]
