"""Block configs forced onto the conv-block launchers, to measure candidate tiles.

The launchers pick each kernel's block config from the problem sizes (``conv_block_configs``
and its siblings in ``conv_block.py``). To choose those rules by measurement rather than by
guess, ``benchmarks/triton_tiles.py`` times other configs on a GPU: inside ``forced_tiles(...)``
the launchers take the given config for a kernel role instead of their own, where the role's
kernel can run it, and raise ``ValueError`` where it cannot. Plans built under a forced config
are cached under a key that includes it (``current().key``), so leaving the block restores the
launchers' own choice. Not for models: a config the rules never pick is compiled on first use,
and ``make triton-check`` has not compiled it for sm_90.

Roles: ``"fwd"`` (``conv_block_fwd_kernel``), ``"dx"`` (``conv_block_dx_kernel``), ``"dw"``
(the weight gradient: ``conv_block_dw_runs_kernel`` where it runs, whose tiles must divide the
group's channel counts, else ``conv_block_dw_kernel``). A config is a dict of ``BLOCK_M``,
``BLOCK_N``, ``BLOCK_K`` (powers of two, at least 16: ``tl.dot``'s minimum) and ``num_warps``
(1, 2, 4, 8 or 16); a forward config may add ``TAP_ROWS`` (a bool: the forward's tiles hold
every tap of their pooled outputs, ``conv_block_fwd_kernel``; absent is False, the tap loop).
A forced BLOCK_K decides the forward's and the input gradient's runs of
channels as the launchers' own does (``conv_block.channel_run``): one that does not divide a
group's channels makes that kernel gather instead.
"""

from __future__ import annotations

import contextlib
from typing import Dict, NamedTuple, Optional

ROLES = ("fwd", "dx", "dw")
_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")


class Forced(NamedTuple):
    """The forced configs (role -> config; not to be mutated) and the plan-key part they make."""

    key: tuple
    configs: Dict[str, dict]


NONE = Forced((), {})
# Replaced whole, never changed in place, so a launcher that reads it once per call sees one
# consistent state (its plan's key and its configs) even while another thread enters a block.
_STATE: Forced = NONE


def _checked(role: str, config: dict) -> dict:
    optional = {"TAP_ROWS"} if role == "fwd" else set()
    if not {*_BLOCKS, "num_warps"} <= set(config) <= {*_BLOCKS, "num_warps", *optional}:
        raise ValueError(f"forced_tiles: the {role} config must have exactly BLOCK_M, BLOCK_N, BLOCK_K and "
                         f"num_warps" + (" (and optionally TAP_ROWS)" if optional else "") + f", got {sorted(config)}")
    if not isinstance(config.get("TAP_ROWS", False), bool):
        raise ValueError(f"forced_tiles: fwd TAP_ROWS must be a bool, got {config['TAP_ROWS']!r}")
    for name in _BLOCKS:
        v = config[name]
        if not isinstance(v, int) or v < 16 or v & (v - 1):
            raise ValueError(f"forced_tiles: {role} {name} must be a power of two >= 16, got {v!r}")
    if config["num_warps"] not in (1, 2, 4, 8, 16):
        raise ValueError(f"forced_tiles: {role} num_warps must be 1, 2, 4, 8 or 16, got {config['num_warps']!r}")
    return dict(config)


@contextlib.contextmanager
def forced_tiles(fwd: Optional[dict] = None, dx: Optional[dict] = None, dw: Optional[dict] = None):
    """Within the block, the conv-block launchers use these configs for the roles given (None
    leaves a role to the launcher). Nests (the inner block's roles win). Process-wide, not
    per thread (autograd runs backwards on threads of its own): not for concurrent use."""
    global _STATE
    given = {role: _checked(role, cfg) for role, cfg in zip(ROLES, (fwd, dx, dw)) if cfg is not None}
    saved = _STATE
    try:
        configs = {**saved.configs, **given}
        _STATE = Forced(tuple((role, tuple(sorted(configs[role].items()))) for role in ROLES if role in configs),
                        configs)
        yield
    finally:
        _STATE = saved


def current() -> Forced:
    """The forced configs now (``NONE`` outside any block): read once per launch plan lookup."""
    return _STATE
