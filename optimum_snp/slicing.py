"""Apply a pruning plan: copy the kept rows/columns of every coupled tensor into an SNP model of the new shape.

Pure slicing: no scoring here. Works on stock ViT/DeiT models and on SNP models (pruning can be repeated).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from .adapters import get_adapter
from .plan import PruningPlan


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Returns the SNP model that keeps exactly the indices in `plan`; `model` itself is left unchanged."""
    adapter = get_adapter(model)
    source_dims = adapter.layer_dims()
    plan.validate(adapter.hidden_size, source_dims)
    plan = plan.normalized()
    removed = plan.removed_blocks(source_dims)
    if removed and not adapter.supports_block_removal:
        raise ValueError(
            f"The plan removes whole blocks ({removed[:3]}{'...' if len(removed) > 3 else ''}: layer, block), which "
            f"{type(model).__name__}'s pruned family cannot express; keep at least one head and one MLP unit per layer."
        )

    keep = _kept_indices(adapter, plan, source_dims)
    state = {name: _slice(tensor, keep.get(name, ())) for name, tensor in model.state_dict().items()}

    config = adapter.pruned_config(len(plan.hidden), plan.layer_dims())
    with torch.device("meta"):
        pruned = adapter.snp_class()(config)
    if removed:  # the removed blocks' tensors (all of them, norms included) have no place in the pruned model
        kept = pruned.state_dict().keys()
        state = {name: tensor for name, tensor in state.items() if name in kept}
    pruned.load_state_dict(state, strict=True, assign=True)
    source_buffers = dict(model.named_buffers())
    for name, buffer in list(pruned.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (e.g. BERT's position_ids) are not in the state dict: copy them
            owner, _, leaf = name.rpartition(".")
            pruned.get_submodule(owner)._buffers[leaf] = source_buffers[name].detach().clone()
    if hasattr(pruned, "tie_weights"):  # assign=True replaced tied tensors (e.g. a masked-LM decoder) by copies
        pruned.tie_weights()
    for param in pruned.parameters():
        param.requires_grad_(True)
    pruned.train(model.training)
    if getattr(model, "name_or_path", None):
        pruned.name_or_path = model.name_or_path
    return pruned


def sliced_parameters(model: nn.Module, plan: PruningPlan, names: list[str]) -> dict[str, torch.Tensor]:
    """The tensors `names` of `model` (its state-dict names) as `apply_plan(model, plan)` would hold them (copies)."""
    adapter = get_adapter(model)
    keep = _kept_indices(adapter, plan.normalized(), adapter.layer_dims())
    state = model.state_dict()
    return {name: _slice(state[name], keep.get(name, ())) for name in names}


def _kept_indices(adapter, plan: PruningPlan, source_dims) -> dict[str, list[tuple[int, list[int]]]]:
    """Parameter name -> [(axis, kept indices)] for every tensor the (normalized) plan cuts."""
    keep: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for name, axis in adapter.hidden_group():
        keep[name].append((axis, plan.hidden))
    for idx, (lp, dims) in enumerate(zip(plan.layers, source_dims, strict=True)):
        groups = adapter.layer_groups(idx)
        rows = {"qk": lp.qk_rows(dims), "v": lp.v_rows(dims), "mlp": lp.mlp, "heads": lp.heads}
        for group, members in groups.items():
            for name, axis in members:
                keep[name].append((axis, rows[group]))
    return keep


def _slice(tensor: torch.Tensor, keep) -> torch.Tensor:
    for axis, indices in keep:
        tensor = tensor.index_select(axis, torch.as_tensor(indices, dtype=torch.long, device=tensor.device))
    return tensor.detach().clone()
