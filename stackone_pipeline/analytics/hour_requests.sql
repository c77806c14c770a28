-- The hours being derived (temp table batch_hours: at most a day of them) of request_logs, read once
-- (the zone maps on `hour` skip every other hour, so the cost does not grow with history), with
-- the error definition (stackone/records.py: IS_ERROR_SQL) applied once.
CREATE OR REPLACE TEMP VIEW hour_requests AS
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
    {{is_error}} AS is_error,
    {{is_timeout}} AS is_timeout
FROM request_logs
WHERE hour IN (SELECT hour FROM batch_hours)
