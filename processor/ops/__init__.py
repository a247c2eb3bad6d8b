"""Operations around the worker: Prometheus metrics, web views (status, support), logging."""
