"""Pipeline helpers for tests: local runs on the FnApiRunner (no Prism download)."""

from apache_beam.testing.test_pipeline import TestPipeline


def local_pipeline(**kwargs):
    """A TestPipeline on the FnApiRunner, the runner changeflow uses locally."""
    return TestPipeline(runner='FnApiRunner', **kwargs)
