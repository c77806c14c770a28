SELECT
    hour,
    account_id,
    provider,
    count(*) AS requests,
    count(*) FILTER (WHERE is_error) AS errors,
    count(*) FILTER (WHERE is_error) / count(*) AS error_rate,
    $project::VARCHAR AS project
FROM hour_requests
GROUP BY hour, account_id, provider
