"""The byte corpus: deterministic file order, whole files held out, splits that add up, and the
unigram baseline against a plain-Python count."""
import collections
import math

import pytest
import torch

from ngl_profile.quality.data import VOCAB_SIZE, load_corpus


@pytest.fixture
def tree(tmp_path):
    # written in reverse name order: the corpus must not depend on the directory's listing order
    for i in reversed(range(6)):
        (tmp_path / f"m{i}.py").write_bytes(bytes([97 + i]) * (100 + 10 * i) + b"\n")
    (tmp_path / "notes.txt").write_bytes(b"not python")
    return tmp_path


def test_files_in_name_order_every_kth_held_out(tree):
    c = load_corpus(directory=tree, heldout_every=3)
    sizes = [101 + 10 * i for i in range(6)]
    held = [sizes[2], sizes[5]]  # m2.py and m5.py: every third file in name order
    assert c.facts["files"] == 6 and c.facts["first_file"] == "m0.py" and c.facts["last_file"] == "m5.py"
    assert c.facts["bytes"] == sum(sizes)
    assert c.facts["train_bytes"] == sum(sizes) - sum(held) == c.train.numel()
    assert c.tune.numel() + c.test.numel() == sum(held)
    assert bytes(c.train[:101].tolist()) == b"a" * 100 + b"\n"
    assert set(c.train.tolist()) == {ord(ch) for ch in "abde\n"}  # no byte of a held-out file in train
    assert load_corpus(directory=tree, heldout_every=3).facts["sha256"] == c.facts["sha256"]


def test_max_bytes_takes_whole_files(tree):
    c = load_corpus(max_bytes=101 + 111 + 121 + 5, directory=tree, heldout_every=3)
    assert c.facts["files"] == 3 and c.facts["bytes"] == 101 + 111 + 121


def test_unigram_loss_matches_a_plain_count(tree):
    c = load_corpus(directory=tree, heldout_every=2)
    counts = collections.Counter(c.train.tolist())
    total = sum(counts.values()) + VOCAB_SIZE
    test = c.test.tolist()
    expected = -sum(math.log((counts[b] + 1) / total) for b in test) / len(test)
    assert c.unigram_loss("test") == pytest.approx(expected, rel=1e-12)


def test_batches_and_windows(tree):
    c = load_corpus(directory=tree, heldout_every=2)
    a = c.batch(4, 16, torch.Generator().manual_seed(7))
    b = c.batch(4, 16, torch.Generator().manual_seed(7))
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["input_ids"].shape == (4, 16)
    assert torch.equal(a["labels"], a["input_ids"])
    w = c.eval_windows("test", 16, 3)
    assert w.shape == (3, 16) and torch.equal(w.flatten(), c.test[:48].long())
    with pytest.raises(ValueError, match="fewer than one sequence"):
        c.eval_windows("tune", 10_000, 1)


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="no .py files"):
        load_corpus(directory=tmp_path)
    with pytest.raises(ValueError, match="heldout_every"):
        load_corpus(heldout_every=1)
