SELECT
    hour,
    provider,
    service,
    count(*) AS requests,
    count(*) FILTER (WHERE is_error) AS errors,
    count(*) FILTER (WHERE is_error) / count(*) AS error_rate,
    count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS status_4xx,
    count(*) FILTER (WHERE status BETWEEN 500 AND 599) AS status_5xx,
    count(*) FILTER (WHERE is_timeout) AS timeouts,
    $project::VARCHAR AS project
FROM hour_requests
GROUP BY hour, provider, service
