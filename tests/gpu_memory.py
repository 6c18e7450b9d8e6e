"""Poisoned GPU memory: outputs that a kernel does not write hold a known byte pattern.

The kernels' outputs are allocated by torch's caching allocator (``torch.empty`` in the Triton
launchers, ``at::empty`` in the CUDA bindings). ``poison(byte, sizes)`` makes every block the
allocator can hand out next hold ``byte``:

1. every free block already cached on the device (the holes between live tensors, listed by
   ``torch.cuda.memory_snapshot()``) is allocated, filled and kept until step 3;
2. new blocks of the expected output sizes (each twice: a same-sized temporary may take the
   first) and a few small-pool segments are allocated and filled: the reserve the next
   allocations are carved from, so none needs fresh, unpoisoned memory from the driver;
3. all of them are freed back to the cache, then a probe allocation of each size checks the
   pattern arrives (a harness that silently failed to poison would prove nothing); a probe
   that misses it (a remainder split off an unpoisoned block) is filled and freed, so the
   next allocation of its size gets it.

Patterns: ``NAN`` (0xFF) is NaN in every floating dtype (and -1 in int8/int16: "ReLU off", a
valid offset); ``BIG`` (0x7F) is 127 in int8 (never a valid pool-window offset below 128
taps), 32639 in int16, a huge finite value in fp32/bf16/fp64 and NaN in fp16. Neither is a
valid bool (the relu mask). A test run once per pattern catches an unwritten element of every
output dtype.

With ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` (the compute-sanitizer runs) there is no cache to
poison: ``poison`` does nothing and initcheck reports reads of unwritten memory instead.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

NAN = 0xFF
BIG = 0x7F
PATTERNS = {"nan": NAN, "big": BIG}

SMALL_POOL_LIMIT = 1 << 20  # requests up to 1 MiB come from the small pool (2 MiB segments)
SMALL_SEGMENTS = 4  # small-pool segments kept poisoned in reserve
MAX_ROUNDS = 8


def disabled_reason(env=os.environ) -> Optional[str]:
    """Why the caching allocator cannot be poisoned in this process (None: it can)."""
    if env.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        return "PYTORCH_NO_CUDA_MEMORY_CACHING=1: no cache to poison (compute-sanitizer's initcheck covers it)"
    if "expandable_segments:true" in env.get("PYTORCH_CUDA_ALLOC_CONF", "").replace(" ", "").lower():
        return "PYTORCH_CUDA_ALLOC_CONF has expandable_segments:True; poisoning assumes fixed segments"
    return None


def free_block_requests(snapshot: Iterable[dict], device: int, stream: Optional[int] = None) -> List[int]:
    """Byte sizes to request so that the free blocks of ``device`` in ``snapshot`` (the list
    ``torch.cuda.memory_snapshot()`` returns) are handed out: one request per free block,
    at most ``SMALL_POOL_LIMIT`` for small-pool blocks (a larger request would be served by
    the large pool and leave the block free). Only the blocks the allocator can give to a
    request on ``stream`` (None: any) outside a CUDA graph's private pool count."""
    requests = []
    for segment in snapshot:
        if segment.get("device", device) != device:
            continue
        if stream is not None and segment.get("stream", stream) != stream:
            continue
        if tuple(segment.get("segment_pool_id", (0, 0))) != (0, 0):
            continue
        small = segment.get("segment_type") == "small"
        for block in segment.get("blocks", ()):
            if block.get("state") != "inactive" or block.get("size", 0) <= 0:
                continue
            size = block["size"]
            requests.append(min(size, SMALL_POOL_LIMIT) if small else max(size, SMALL_POOL_LIMIT + 512))
    return requests


def reserve_requests(sizes: Sequence[int]) -> List[int]:
    """Byte sizes of the poisoned reserve for outputs of ``sizes`` bytes (see module doc)."""
    out = [SMALL_POOL_LIMIT] * (2 * SMALL_SEGMENTS)
    for size in sizes:
        if size > 0:
            out += [size, size]
    return out


def _fill(requests: Sequence[int], byte: int, device) -> List[torch.Tensor]:
    held = []
    for size in requests:
        t = torch.empty(size, dtype=torch.uint8, device=device)
        t.fill_(byte)
        held.append(t)
    return held


def poison(byte: int = NAN, sizes: Sequence[int] = (), device=None) -> Tuple[bool, str]:
    """Fill every block the allocator of ``device`` (default: current) can hand out next with
    ``byte``; ``sizes``: byte sizes of the outputs about to be allocated. Returns ``(done,
    why_not)``: not done where the allocator cannot be poisoned (see ``disabled_reason``) or
    ``device`` is not a CUDA device. Raises RuntimeError when a new allocation of one of
    ``sizes`` still does not hold ``byte`` after ``MAX_ROUNDS`` refills."""
    why = disabled_reason()
    if why:
        return False, why
    device = torch.device("cuda") if device is None else torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"{device.type} tensors: only the CUDA caching allocator is poisoned"
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
    torch.cuda.synchronize(device)
    stream = torch.cuda.current_stream(device).cuda_stream
    held: List[torch.Tensor] = []
    previous = None
    for _ in range(MAX_ROUNDS):
        requests = free_block_requests(torch.cuda.memory_snapshot(), device.index, stream)
        if not requests or requests == previous:  # done, or blocks no request can take
            break
        held += _fill(requests, byte, device)
        previous = requests
    held += _fill(reserve_requests(sizes), byte, device)
    torch.cuda.synchronize(device)
    del held
    for size in sorted({s for s in sizes if s > 0}):
        # A probe gets the block the next allocation of its size gets (best fit, same
        # stream); where it is not poisoned (a remainder split off an unpoisoned block), it
        # is filled and freed again, so that the next allocation is.
        for _ in range(MAX_ROUNDS):
            probe = torch.empty(size, dtype=torch.uint8, device=device)
            poisoned = bool((probe == byte).all())
            if not poisoned:
                probe.fill_(byte)
            del probe
            if poisoned:
                break
        else:
            raise RuntimeError(f"poisoning failed: a new {size}-byte allocation does not hold 0x{byte:02X}")
    return True, ""


def nbytes(*tensors) -> List[int]:
    """Byte sizes of the given tensors (None skipped): the ``sizes`` argument of ``poison``."""
    return [t.numel() * t.element_size() for t in tensors if t is not None]
