"""The text quality mode trains on: the Python standard library's own top-level .py sources, read
as bytes (every Python installation ships them, so nothing is downloaded), one token per byte.

Files are taken in sorted name order, so the stream is the same on every run of one Python
version; another version ships other sources, so the corpus records the version, the files and a
digest (results of two corpora are not like for like). Every `heldout_every`-th file (in that
order) is held out — whole files, so no held-out sequence was half seen in training — and the
held-out bytes are split in two halves: the first tunes the learning rate, the second is the test
set every reported held-out loss is measured on.
"""
from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ByteCorpus", "VOCAB_SIZE", "load_corpus", "stdlib_dir"]

VOCAB_SIZE = 256
"""one token per byte value; no special tokens (files are concatenated as they are)"""


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True, slots=True)
class ByteCorpus:
    train: torch.Tensor
    """uint8 bytes of the training files, concatenated"""
    tune: torch.Tensor
    """first half of the held-out bytes: what the learning-rate sweep judges by"""
    test: torch.Tensor
    """second half: every reported held-out loss"""
    facts: dict
    """where it came from: directory, python version, file count, bytes per split, sha256"""

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> dict:
        """batch_size windows of seq_len bytes at random offsets of the training stream (labels are
        the inputs: transformers shifts them for next-token prediction)."""
        starts = torch.randint(0, self.train.numel() - seq_len, (batch_size,), generator=generator)
        ids = torch.stack([self.train[s:s + seq_len] for s in starts.tolist()]).long()
        return {"input_ids": ids, "labels": ids}

    def eval_windows(self, split: str, seq_len: int, count: int) -> torch.Tensor:
        """The first `count` non-overlapping windows of a held-out split (fixed: every optimizer and
        seed is judged on the same bytes), as (count, seq_len) token ids."""
        data = {"tune": self.tune, "test": self.test}[split]
        n = min(count, data.numel() // seq_len)
        if n < 1:
            raise ValueError(f"the {split} split has {data.numel()} bytes, fewer than one sequence of {seq_len}")
        return data[:n * seq_len].view(n, seq_len).long()

    def unigram_loss(self, split: str = "test") -> float:
        """Cross-entropy (nats/byte) on a held-out split of the training bytes' frequencies (add-one
        smoothed): what a model that ignores context achieves; training must beat it."""
        counts = torch.bincount(self.train.long(), minlength=VOCAB_SIZE).double() + 1
        logp = (counts / counts.sum()).log()
        data = {"tune": self.tune, "test": self.test}[split].long()
        return float(-logp[data].mean())


def load_corpus(max_bytes: int = 0, heldout_every: int = 10, directory: str | Path | None = None) -> ByteCorpus:
    """The corpus, at most `max_bytes` of files (0: all; whole files, in order, until the cap)."""
    if not isinstance(heldout_every, int) or heldout_every < 2:
        raise ValueError(f"heldout_every must be an integer ≥ 2; got {heldout_every!r}")
    root = Path(directory) if directory is not None else stdlib_dir()
    files = sorted(root.glob("*.py"))
    if not files:
        raise ValueError(f"no .py files in {root}: quality mode needs the Python standard library's sources")
    train, held, names, total = [], [], [], 0
    digest = hashlib.sha256()
    for i, f in enumerate(files):
        data = f.read_bytes()
        if max_bytes and total + len(data) > max_bytes and names:
            break
        (held if i % heldout_every == heldout_every - 1 else train).append(data)
        names.append(f.name)
        digest.update(f.name.encode() + b"\0" + data)
        total += len(data)
    if not held:
        raise ValueError(f"max_bytes {max_bytes} keeps {len(names)} file(s): too few to hold every "
                         f"{heldout_every}th out; raise max_bytes")
    held_bytes = b"".join(held)
    half = len(held_bytes) // 2
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    facts = {"source": "Python standard library, top-level *.py, sorted by name", "directory": str(root),
             "python": sys.version.split()[0], "files": len(names), "first_file": names[0], "last_file": names[-1],
             "bytes": total, "train_bytes": total - len(held_bytes), "tune_bytes": half,
             "test_bytes": len(held_bytes) - half, "heldout_every": heldout_every, "sha256": digest.hexdigest(),
             "uniform_loss": math.log(VOCAB_SIZE)}
    return ByteCorpus(train=as_tensor(b"".join(train)), tune=as_tensor(held_bytes[:half]),
                      test=as_tensor(held_bytes[half:]), facts=facts)
