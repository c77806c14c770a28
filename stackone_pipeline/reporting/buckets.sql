-- The window's 5-minute buckets, all providers (from the overall view: rates re-aggregated from counts).
SELECT bucket_start, requests, errors, error_rate
FROM error_rate_5m_overall
WHERE hour >= $start AND hour < $end
ORDER BY bucket_start
