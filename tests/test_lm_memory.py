"""Memory of a layer-by-layer compression: the causal-LM loader gives every weight its own
allocation (a memory-mapped file would stay resident while any of its tensors lives), a freed
heap is handed back, and the finite check works in pieces yet still finds a bad value."""

from __future__ import annotations

import pytest
import torch
from lm_fixtures import write_text, write_tiny_lm

from slimkit.core.compress import _all_finite, check_finite
from slimkit.core.errors import SlimkitError
from slimkit.core.heap import release_freed_memory
from slimkit.methods import layerwise

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_memory")
    text = write_text(root / "text.txt", paragraphs=40)
    single = write_tiny_lm(root / "model", text)
    from transformers import AutoModelForCausalLM

    sharded = root / "sharded"
    AutoModelForCausalLM.from_pretrained(single).save_pretrained(sharded, max_shard_size="60KB")
    return single, sharded


def _storages(model: torch.nn.Module) -> set[int]:
    return {p.untyped_storage().data_ptr() for p in model.parameters()}


@pytest.mark.parametrize("which", ["single", "sharded"])
def test_loaded_weights_equal_transformers_and_own_their_memory(folders, which):
    from transformers import AutoModelForCausalLM

    from slimkit.models.causal_lm import load_causal_lm

    folder = folders[0] if which == "single" else folders[1]
    if which == "sharded":
        assert (folder / "model.safetensors.index.json").is_file()
    ours = load_causal_lm(folder)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert ours.lm_head.weight is ours.model.embed_tokens.weight  # the tie survives
    expected = reference.state_dict()
    for name, value in ours.state_dict().items():
        assert torch.equal(value, expected[name]), name
    # One storage per tensor (the tied pair shares one), none a slice of a shared file buffer.
    assert len(_storages(ours)) == len(list(ours.parameters()))
    for p in ours.parameters():
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()
    ids = torch.tensor([[1, 5, 7, 9]])
    torch.testing.assert_close(ours(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_freed_heap_is_released_on_glibc():
    import platform

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert release_freed_memory() is expected


def test_finite_check_in_pieces_finds_a_value_in_the_last_piece():
    values = torch.zeros(10, 7)
    assert _all_finite(values, chunk=16)
    values[9, 6] = float("inf")
    assert not _all_finite(values, chunk=16)
    model = torch.nn.Linear(7, 10)
    with torch.no_grad():
        model.weight.copy_(values)
    with pytest.raises(SlimkitError, match="'weight' holds Inf \\(1 of 70 values\\)"):
        check_finite(model)


def test_next_calls_consumes_its_inputs_and_keeps_the_other_arguments():
    class Block(torch.nn.Linear):
        def forward(self, x, mask, flag):  # the arguments a decoder layer also gets
            return super().forward(x), None

    block = Block(3, 3)
    calls = [((torch.randn(2, 3), "mask"), {"flag": i}) for i in range(3)]
    inputs = [args[0] for args, _ in calls]
    out = layerwise.next_calls(block, calls)
    assert calls == []  # the caller's list is emptied as outputs are made
    assert [kwargs["flag"] for _, kwargs in out] == [0, 1, 2]
    for (args, _), x in zip(out, inputs, strict=True):
        assert args[1] == "mask"
        torch.testing.assert_close(args[0], block(x, None, 0)[0])
