-- Overall (all providers) figures, re-aggregated from counts, never by averaging rates.
-- The same SELECTs define views in warehouse.duckdb (over the tables) and in query.duckdb (over
-- the lake views of the same names). `-- view: <name>` starts each one.

-- view: error_rate_5m_overall
SELECT
    hour,
    bucket_start,
    sum(requests)::BIGINT AS requests,
    sum(errors)::BIGINT AS errors,
    sum(errors) / sum(requests) AS error_rate
FROM error_rate_5m
GROUP BY hour, bucket_start

-- view: error_rate_hourly_overall
SELECT
    hour,
    sum(requests)::BIGINT AS requests,
    sum(errors)::BIGINT AS errors,
    sum(errors) / sum(requests) AS error_rate,
    sum(status_4xx)::BIGINT AS status_4xx,
    sum(status_5xx)::BIGINT AS status_5xx,
    sum(timeouts)::BIGINT AS timeouts
FROM error_rate_hourly
GROUP BY hour

-- view: error_rate_hourly_by_provider
SELECT
    hour,
    provider,
    sum(requests)::BIGINT AS requests,
    sum(errors)::BIGINT AS errors,
    sum(errors) / sum(requests) AS error_rate,
    sum(status_4xx)::BIGINT AS status_4xx,
    sum(status_5xx)::BIGINT AS status_5xx,
    sum(timeouts)::BIGINT AS timeouts
FROM error_rate_hourly
GROUP BY hour, provider

-- view: latency_hourly_overall
SELECT hour, requests, p50_ms, p95_ms, p99_ms, mean_ms
FROM request_volume_hourly
WHERE requests > 0
