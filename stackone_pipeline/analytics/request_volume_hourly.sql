-- Each hour's overall volume, errors and latency, scored against the same hour of day on the
-- previous $baseline_days days. Only those (at most $baseline_days) rows of this table are read
-- per hour, so the cost does not grow with history. Median and MAD (not mean and standard
-- deviation) keep one past spike, outage or error burst from moving the baseline. The scale has a
-- floor of sqrt(baseline), the Poisson noise of a count, so perfectly flat history (MAD = 0) does
-- not turn every small wobble into an anomaly. No score, hence no anomaly, below $min_history_days
-- days. Every hour of batch_hours gets a row, one without requests too. The hours of one batch lie
-- within one day, so none is in another's history: derive.py derives batches oldest first.
WITH cur AS (
    SELECT
        b.hour,
        count(r.hour) AS requests,
        count(r.hour) FILTER (WHERE r.is_error) AS errors,
        quantile_cont(r.duration_ms, [0.5, 0.95, 0.99]) AS q,
        avg(r.duration_ms) AS mean_ms
    FROM batch_hours AS b
    LEFT JOIN hour_requests AS r ON r.hour = b.hour
    GROUP BY b.hour
),
history AS (
    SELECT b.hour, v.requests
    FROM batch_hours AS b, range(1, $baseline_days + 1) AS r(d), request_volume_hourly AS v
    WHERE v.hour = b.hour - to_days(d::INTEGER)
),
base AS (
    SELECT b.hour, count(h.requests) AS history_days, quantile_cont(h.requests, 0.5) AS baseline
    FROM batch_hours AS b
    LEFT JOIN history AS h ON h.hour = b.hour
    GROUP BY b.hour
),
spread AS (
    SELECT base.hour, quantile_cont(abs(h.requests - base.baseline), 0.5) AS mad
    FROM base
    LEFT JOIN history AS h ON h.hour = base.hour
    GROUP BY base.hour
),
scored AS (
    SELECT
        cur.*, base.history_days, base.baseline, spread.mad,
        CASE WHEN base.history_days >= $min_history_days THEN
            (cur.requests - base.baseline) / greatest(1.4826 * spread.mad, sqrt(base.baseline), 1.0)
        END AS score
    FROM cur
    JOIN base USING (hour)
    JOIN spread USING (hour)
)
SELECT
    hour,
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
    $volume_score AS score_threshold,
    $project::VARCHAR AS project
FROM scored
