SELECT
    hour, provider, action, requests,
    q[1] AS p50_ms, q[2] AS p90_ms, q[3] AS p95_ms, q[4] AS p99_ms,
    mean_ms, max_ms, $project::VARCHAR AS project
FROM (
    SELECT
        hour,
        provider,
        action,
        count(*) AS requests,
        quantile_cont(duration_ms, [0.5, 0.9, 0.95, 0.99]) AS q,
        avg(duration_ms) AS mean_ms,
        max(duration_ms) AS max_ms
    FROM hour_requests
    GROUP BY hour, provider, action
)
