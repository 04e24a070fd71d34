"""How to cut a model: submodule get/set, structural edits that the artifact loader replays."""

from .edits import apply_edit, drop_blocks, mark_masked, restore_masks, swap_module
from .modules import get_submodule, import_object, set_submodule

__all__ = ["apply_edit", "drop_blocks", "get_submodule", "import_object", "mark_masked",
           "restore_masks", "set_submodule", "swap_module"]
