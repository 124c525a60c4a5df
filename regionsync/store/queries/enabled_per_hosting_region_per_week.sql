-- How many regions were carrier-enabled per account and hosting region, week by week?
-- Counted on the last day of each week (Monday to Sunday, UTC), or today for this week. (PostgreSQL)
SELECT account,
       date_trunc('week', day)::date AS week,
       hosting_region,
       count(*) AS enabled_regions
FROM region_status_daily
WHERE present
  AND carrier_enabled
  AND day = least(date_trunc('week', day)::date + 6, (now() AT TIME ZONE 'UTC')::date)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
