-- The hour's overall volume, errors and latency, scored against the same hour of day on the
-- previous $baseline_days days. Only those (at most $baseline_days) rows of this table are read,
-- so the cost does not grow with history. Median and MAD (not mean and standard deviation) keep
-- one past spike, outage or error burst from moving the baseline. The scale has a floor of
-- sqrt(baseline), the Poisson noise of a count, so perfectly flat history (MAD = 0) does not turn
-- every small wobble into an anomaly. No score, hence no anomaly, below $min_history_days days.
WITH cur AS (
    SELECT
        count(*) AS requests,
        count(*) FILTER (WHERE is_error) AS errors,
        quantile_cont(duration_ms, [0.5, 0.95, 0.99]) AS q,
        avg(duration_ms) AS mean_ms
    FROM hour_requests
),
history AS (
    SELECT requests
    FROM request_volume_hourly
    WHERE hour IN (SELECT $hour::TIMESTAMPTZ - to_days(d::INTEGER) FROM range(1, $baseline_days + 1) AS r(d))
),
base AS (
    SELECT count(*) AS history_days, quantile_cont(requests, 0.5) AS baseline FROM history
),
spread AS (
    SELECT quantile_cont(abs(history.requests - base.baseline), 0.5) AS mad FROM history, base
),
scored AS (
    SELECT
        cur.*, base.history_days, base.baseline, spread.mad,
        CASE WHEN base.history_days >= $min_history_days THEN
            (cur.requests - base.baseline) / greatest(1.4826 * spread.mad, sqrt(base.baseline), 1.0)
        END AS score
    FROM cur, base, spread
)
SELECT
    $hour::TIMESTAMPTZ AS hour,
    requests,
    errors,
    CASE WHEN requests > 0 THEN errors / requests END AS error_rate,
    q[1] AS p50_ms,
    q[2] AS p95_ms,
    q[3] AS p99_ms,
    mean_ms,
    history_days::INTEGER AS history_days,
    baseline,
    mad,
    score,
    coalesce(abs(score) > $volume_score, false) AS anomaly,
    $volume_score AS score_threshold
FROM scored
