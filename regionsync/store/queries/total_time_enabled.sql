-- How long, in total, has a region been carrier-enabled (up to now)? (PostgreSQL)
SELECT :region_id AS region_id,
       coalesce(sum(coalesce(valid_to, now()) - valid_from), interval '0') AS enabled_for,
       count(*) AS enabled_periods
FROM region_status_intervals
WHERE region_id = :region_id
  AND carrier_enabled;
