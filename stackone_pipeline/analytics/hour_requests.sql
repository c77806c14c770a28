-- One hour of request_logs, read once (the zone maps on `hour` skip every other hour, so the cost
-- does not grow with history), with the error definition applied in one place.
CREATE OR REPLACE TEMP TABLE hour_requests AS
SELECT
    hour,
    event_datetime,
    to_timestamp((epoch_ms(event_datetime) // 300000) * 300) AS bucket_start,
    coalesce(account_id, 'unknown') AS account_id,
    coalesce(provider, 'unknown') AS provider,
    coalesce(service, 'unknown') AS service,
    coalesce(action, 'unknown') AS action,
    status,
    duration_ms,
    coalesce(status >= 400 OR (status IS NULL AND success = false), false) AS is_error,
    coalesce(status IS NULL AND success = false, false) AS is_timeout
FROM request_logs
WHERE hour = $hour
