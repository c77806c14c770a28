SELECT
    hour,
    provider,
    count(*) AS requests,
    count(*) FILTER (WHERE is_error) AS errors,
    count(*) FILTER (WHERE is_error) / count(*) AS error_rate,
    quantile_cont(duration_ms, 0.95) AS p95_ms,
    count(*) FILTER (WHERE is_error) / count(*) <= $provider_error_rate AS healthy,
    $provider_error_rate AS error_rate_threshold,
    $project::VARCHAR AS project
FROM hour_requests
GROUP BY hour, provider
