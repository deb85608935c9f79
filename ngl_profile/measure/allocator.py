"""PyTorch's CUDA caching allocator, replayed over an allocation sequence: the bytes it would
reserve (what nvidia-smi shows besides the context), which the tensor sizes alone do not give.

The rules, as c10/cuda/CUDACachingAllocator.cpp applies them with the default configuration
(pytorch/pytorch source, read at commit 001074d2; the constants and defaults checked against the
c10/core/AllocatorConfig.h that torch 2.13 installs):

  round_size            a request is rounded up to a multiple of kMinBlockSize = 512 B (at least
                        512); roundup_power2_divisions is unset by default, so no power-of-2 rounding
  get_pool              rounded size ≤ kSmallSize = 1 MiB: the small pool, else the large one
  get_free_block        best fit: the smallest free block of the pool that is large enough, the lowest
                        address among equals (BlockComparatorSize: size, then pointer)
  get_allocation_size   no free block fits: cudaMalloc a segment of kSmallBuffer = 2 MiB (small
                        pool), kLargeBuffer = 20 MiB (large_segment_size, for requests < kMinLargeAlloc
                        = 10 MiB), or the request rounded up to kRoundLarge = 2 MiB
  should_split          the block is split when what remains is ≥ 512 B (small pool) or > 1 MiB (large
                        pool; max_split_size is unlimited by default); an unsplit block is handed out
                        whole and counts whole as allocated
  free_block            a freed block merges with its free neighbours of the same segment and returns
                        to its pool; segments are never given back to the driver...
  malloc (retry)        ...unless cudaMalloc fails: then release_cached_blocks frees every cached
                        segment that is entirely free (both pools) and the cudaMalloc is retried once;
                        if that fails too, the allocation raises OutOfMemoryError
                        (release_available_cached_blocks does nothing while max_split_size is unlimited)

Not modelled: expandable_segments, garbage_collection_threshold, CUDA graphs' private pools, other
streams (everything is on one stream) and recordStream's deferred frees, and allocations the
caller never saw (cuBLAS workspaces and kernels' scratch buffers, which go through the same
allocator). cudaMalloc is taken to fail exactly when reserved + segment > the limit given.
"""
from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass

__all__ = ["CachingAllocatorModel", "AllocatorReplay", "replay", "round_size", "allocation_size", "RULES_SOURCE",
           "K_MIN_BLOCK_SIZE", "K_SMALL_SIZE", "K_SMALL_BUFFER", "K_LARGE_BUFFER", "K_MIN_LARGE_ALLOC",
           "K_ROUND_LARGE"]

RULES_SOURCE = ("PyTorch's CUDACachingAllocator rules (c10/cuda/CUDACachingAllocator.cpp at pytorch 001074d2, "
                "torch 2.13 defaults)")

MiB = 1 << 20
K_MIN_BLOCK_SIZE = 512
K_SMALL_SIZE = 1 * MiB
K_SMALL_BUFFER = 2 * MiB
K_LARGE_BUFFER = 20 * MiB
K_MIN_LARGE_ALLOC = 10 * MiB
K_ROUND_LARGE = 2 * MiB


def round_size(nbytes: int) -> int:
    """The block size a request of `nbytes` takes (round_size)."""
    if nbytes < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    return -(-nbytes // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE


def allocation_size(size: int) -> int:
    """The segment cudaMalloc'd for a rounded request no cached block can hold (get_allocation_size)."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return -(-size // K_ROUND_LARGE) * K_ROUND_LARGE


class _Block:
    __slots__ = ("addr", "size", "free", "small", "prev", "next")

    def __init__(self, addr, size, small, prev=None, next=None):
        self.addr, self.size, self.small, self.free = addr, size, small, True
        self.prev, self.next = prev, next


@dataclass(frozen=True, slots=True)
class AllocatorReplay:
    """What the allocator would have reserved over the sequence."""

    peak_reserved_bytes: int
    """the largest sum of segments (torch.cuda.max_memory_reserved)"""
    allocated_at_peak_bytes: int
    """bytes in allocated blocks (rounded sizes) when the reserved peak was reached"""
    peak_allocated_bytes: int
    """the largest sum of allocated blocks (torch.cuda.max_memory_allocated)"""
    segments_at_peak: int
    alloc_retries: int
    """cudaMallocs that failed and were retried after freeing the cached segments (num_alloc_retries)"""
    oom_at_event: int | None = None
    """index of the allocation that ran out of memory (the replay stops there), None if none did"""
    oom_request_bytes: int | None = None


class CachingAllocatorModel:
    """alloc(key, nbytes) / free(key) in program order; `limit_bytes` is what cudaMalloc can give
    in all (None: no limit, segments are only ever added)."""

    def __init__(self, limit_bytes: int | None = None):
        self.limit_bytes = limit_bytes
        self._pools = {True: [], False: []}  # small? → sorted [(size, addr, block)] of free blocks
        self._live: dict = {}  # key → allocated _Block
        self._next_addr = 0  # segments get fresh, increasing addresses (cudaMalloc's are unknown)
        self.reserved = self.allocated = self.segments = 0
        self.peak_reserved = self.allocated_at_peak = self.peak_allocated = self.segments_at_peak = 0
        self.retries = 0

    def alloc(self, key, nbytes: int) -> bool:
        """False if it ran out of memory (nothing changes then). A zero-byte storage takes no block."""
        if nbytes <= 0:
            return True
        # round_size, inlined: this runs once per event (tens of thousands for a 7B step)
        size = K_MIN_BLOCK_SIZE if nbytes < K_MIN_BLOCK_SIZE else -(-nbytes // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE
        small = size <= K_SMALL_SIZE
        pool = self._pools[small]
        i = bisect_left(pool, (size, -1))
        if i < len(pool):
            block = pool.pop(i)[2]
        else:
            block = self._new_segment(size, small)
            if block is None:
                return False
        remaining = block.size - size
        if remaining >= K_MIN_BLOCK_SIZE if small else remaining > K_SMALL_SIZE:
            rest = _Block(block.addr + size, remaining, small, block, block.next)
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            insort(pool, (remaining, rest.addr, rest))
        block.free = False
        self._live[key] = block
        self.allocated += block.size
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.reserved > self.peak_reserved:  # reserved only grows here, by a new segment
            self.peak_reserved, self.allocated_at_peak, self.segments_at_peak = \
                self.reserved, self.allocated, self.segments
        return True

    def free(self, key) -> None:
        block = self._live.pop(key, None)
        if block is None:  # a zero-byte storage, or one that was never allocated here
            return
        self.allocated -= block.size
        block.free = True
        pool = self._pools[block.small]
        prev, nxt = block.prev, block.next
        if prev is not None and prev.free:
            del pool[bisect_left(pool, (prev.size, prev.addr))]
            block.addr, block.size, block.prev = prev.addr, prev.size + block.size, prev.prev
            if block.prev is not None:
                block.prev.next = block
        if nxt is not None and nxt.free:
            del pool[bisect_left(pool, (nxt.size, nxt.addr))]
            block.size += nxt.size
            block.next = nxt.next
            if block.next is not None:
                block.next.prev = block
        insort(pool, (block.size, block.addr, block))

    def _new_segment(self, size: int, small: bool) -> _Block | None:
        seg = allocation_size(size)
        if self.limit_bytes is not None and self.reserved + seg > self.limit_bytes:
            self.retries += 1
            self._release_cached()
            if self.reserved + seg > self.limit_bytes:
                return None
        block = _Block(self._next_addr, seg, small)
        self._next_addr += seg
        self.reserved += seg
        self.segments += 1
        return block

    def _release_cached(self) -> None:
        """release_cached_blocks: every cached segment that is one whole free block goes back."""
        for small, pool in self._pools.items():
            keep = []
            for entry in pool:
                b = entry[2]
                if b.prev is None and b.next is None:
                    self.reserved -= b.size
                    self.segments -= 1
                else:
                    keep.append(entry)
            self._pools[small] = keep

    def result(self, oom_at_event=None, oom_request_bytes=None) -> AllocatorReplay:
        return AllocatorReplay(peak_reserved_bytes=self.peak_reserved, allocated_at_peak_bytes=self.allocated_at_peak,
                               peak_allocated_bytes=self.peak_allocated, segments_at_peak=self.segments_at_peak,
                               alloc_retries=self.retries, oom_at_event=oom_at_event,
                               oom_request_bytes=oom_request_bytes)


def replay(events, limit_bytes: int | None = None) -> AllocatorReplay:
    """Replay a flat sequence of (key, nbytes) pairs: nbytes > 0 allocates, < 0 frees that key (the
    form MemorySnapshot.events has). With a limit, the first allocation that cannot be met ends it."""
    model = CachingAllocatorModel(limit_bytes)
    alloc, free = model.alloc, model.free
    it = iter(events)
    for i, (key, n) in enumerate(zip(it, it)):
        if n > 0:
            if not alloc(key, n):
                return model.result(oom_at_event=i, oom_request_bytes=n)
        else:
            free(key)
    return model.result()
