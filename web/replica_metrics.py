"""The PostgreSQL read replicas as this process measures them, at /metrics (scrape time).

- recsearch_replica_up{replica}: 1 while the replica answers and searches may read it when
  its lag allows, 0 while it is unreachable or not a replica (its searches read the primary).
- recsearch_replica_lag_seconds{replica}: how far behind the primary it is (the time since
  the latest primary WAL position it has replayed was measured; 0 on an idle primary), absent
  until first measured. Above RECSEARCH_REPLICA_MAX_LAG_S the replica is skipped.
- recsearch_replica_max_lag_seconds: that bound.

Nothing is exported without RECSEARCH_DATABASE_REPLICA_URL. Every worker measures the same
servers, so whichever worker serves the scrape answers for the fleet.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from engine.runtime import Runtime


class ReplicaCollector:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        router = self.runtime.replicas
        if router is None:
            return
        router.start()  # measuring already, unless this worker has served no search yet
        up = GaugeMetricFamily(
            "recsearch_replica_up",
            "1 while the read replica answers its lag measurements (0: searches skip it)",
            labels=["replica"],
        )
        lag = GaugeMetricFamily(
            "recsearch_replica_lag_seconds",
            "How far the read replica's replay is behind the primary (seconds)",
            labels=["replica"],
        )
        for replica in router.replicas:
            up.add_metric([replica.name], 1 if replica.is_up else 0)
            seconds = router.lag_s(replica)
            if seconds is not None:
                lag.add_metric([replica.name], seconds)
        bound = GaugeMetricFamily(
            "recsearch_replica_max_lag_seconds",
            "A replica further behind than this is skipped (RECSEARCH_REPLICA_MAX_LAG_S)",
        )
        bound.add_metric([], router.max_lag_s)
        yield from (up, lag, bound)
