"""Outputs pinned (tests/equivalence.py): every fixture job, the bundled
example and a generated 20k-event workload write exactly what they wrote
before the data flow was reshaped for throughput: replica tables with their
bookkeeping, Parquet rows, notification lines, dead letters."""

import pytest

import equivalence


@pytest.mark.parametrize('name', sorted(equivalence.JOBS))
def test_outputs_equal_the_recorded_ones(name, tmp_path):
    got, want = equivalence.run_job(name, str(tmp_path)), equivalence.golden(name)
    for part in ('replica', 'parquet', 'notifications', 'dead_letters'):
        assert got[part] == want[part], f'{name}: {part} differs'
