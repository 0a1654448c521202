"""Reading a finished job's counters."""

from typing import Dict, Optional

from apache_beam.metrics.metric import MetricsFilter

__all__ = ['counter_totals']


def counter_totals(result, namespace: Optional[str] = None) -> Dict[str, int]:
    """Each counter summed over the steps that report it.

    Keys are ``namespace.name``, or just ``name`` when ``namespace`` is given
    (then only that namespace's counters). Committed values where the runner
    has them, attempted ones otherwise.
    """
    metrics_filter = MetricsFilter()
    if namespace is not None:
        metrics_filter = metrics_filter.with_namespace(namespace)
    totals: Dict[str, int] = {}
    for counter in result.metrics().query(metrics_filter)['counters']:
        metric = counter.key.metric
        name = metric.name if namespace is not None else f'{metric.namespace}.{metric.name}'
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[name] = totals.get(name, 0) + (value or 0)
    return totals
