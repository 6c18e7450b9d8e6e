"""Block configs forced onto the conv-block launchers, to measure candidate tiles.

The launchers pick each kernel's block config from the problem sizes (``conv_block_configs``
and its siblings in ``conv_block.py``). To choose those rules by measurement rather than by
guess, ``benchmarks/triton_tiles.py`` times other configs on a GPU: inside ``forced_tiles(...)``
the launchers take the given config for a kernel role instead of their own, where the role's
kernel can run it, and raise ``ValueError`` where it cannot. Plans built under a forced config
are cached under a key that includes it (``plan_key``), so leaving the block restores the
launchers' own choice. Not for models: a config the rules never pick is compiled on first use,
and ``make triton-check`` has not compiled it for sm_90.

Roles: ``"fwd"`` (``conv_block_fwd_kernel``), ``"dx"`` (``conv_block_dx_kernel``), ``"dw"``
(the weight gradient: ``conv_block_dw_runs_kernel`` where it runs, whose tiles must divide the
group's channel counts, else ``conv_block_dw_kernel``). A config is a dict of ``BLOCK_M``,
``BLOCK_N``, ``BLOCK_K`` (powers of two, at least 16: ``tl.dot``'s minimum) and ``num_warps``
(1, 2, 4, 8 or 16).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Optional

ROLES = ("fwd", "dx", "dw")
_BLOCKS = ("BLOCK_M", "BLOCK_N", "BLOCK_K")
_FORCED: Dict[str, dict] = {}
_KEY: tuple = ()  # plan_key(), kept up to date by forced_tiles (the launchers read it on every call)


def _checked(role: str, config: dict) -> dict:
    if set(config) != {*_BLOCKS, "num_warps"}:
        raise ValueError(f"forced_tiles: the {role} config must have exactly BLOCK_M, BLOCK_N, BLOCK_K and "
                         f"num_warps, got {sorted(config)}")
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
    leaves a role to the launcher). Not thread-safe; nests (the inner block's roles win)."""
    global _KEY
    given = {role: _checked(role, cfg) for role, cfg in zip(ROLES, (fwd, dx, dw)) if cfg is not None}
    saved, saved_key = dict(_FORCED), _KEY
    _FORCED.update(given)
    _KEY = tuple((role, tuple(sorted(_FORCED[role].items()))) for role in ROLES if role in _FORCED)
    try:
        yield
    finally:
        _FORCED.clear()
        _FORCED.update(saved)
        _KEY = saved_key


def forced(role: str) -> Optional[dict]:
    """The config forced for ``role`` (a copy), or None."""
    config = _FORCED.get(role)
    return dict(config) if config is not None else None


def plan_key() -> tuple:
    """What a launch plan depends on of the forced configs (empty when none is forced)."""
    return _KEY
