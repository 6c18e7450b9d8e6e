"""Forward-mode AD helpers shared by the autograd Functions and the functional layer."""

from __future__ import annotations

from torch.autograd import forward_ad as _forward_ad


def forward_ad_active() -> bool:
    """Whether a forward-mode AD dual level (``torch.autograd.forward_ad.dual_level``) is open."""
    return _forward_ad._current_level >= 0


def check_no_tangents(node: str, *tensors) -> None:
    """Raise ``NotImplementedError`` when a backward runs on tensors with tangents (forward mode
    over reverse mode, e.g. a Hessian-vector product as the tangent of a gradient): the
    backward ops do not propagate them, and a gradient without its tangent would be wrong."""
    if not forward_ad_active():
        return
    for t in tensors:
        if t is not None and _forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(
                f"{node}: forward-mode AD through the backward (forward over reverse) is not supported; "
                "differentiate the gradient in reverse mode (create_graph=True) instead"
            )
