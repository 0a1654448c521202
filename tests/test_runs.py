"""Runs: packed sorted records, merged in key order, decoded only when reached."""

import random

from changeflow.transforms import runs as runs_module
from changeflow.transforms.runs import make_run, merge_runs, pack, unpack


def test_pack_round_trips():
    records = [(1, 'a', b'\x00'), (2, None, 3.5)]
    assert unpack(pack(records)) == records


def test_overlapping_runs_merge_in_key_order():
    rng = random.Random(3)
    values = [rng.randrange(1000) for _ in range(5000)]
    chunks = [values[i:i + 97] for i in range(0, len(values), 97)]
    merged = list(merge_runs([make_run(chunk, key=lambda x: x) for chunk in chunks],
                             key=lambda x: x))
    assert merged == sorted(values)


def test_runs_in_sequence_are_decoded_one_at_a_time(monkeypatch):
    """Runs that follow each other (a connection's payloads) never sit
    decoded together: memory holds one run, not the input."""
    runs = [make_run(list(range(start, start + 100)), key=lambda x: x)
            for start in range(0, 10_000, 100)]
    decoded, peak = [0], [0]
    real = runs_module.unpack

    def counting(data):
        decoded[0] += 1
        return real(data)
    monkeypatch.setattr(runs_module, 'unpack', counting)
    for i, value in enumerate(merge_runs(reversed(runs), key=lambda x: x)):
        assert value == i
        peak[0] = max(peak[0], decoded[0] - i // 100)
    assert decoded[0] == 100 and peak[0] <= 2
