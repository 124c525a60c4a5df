-- How long, in total, has a region been carrier-enabled (up to now), in each account that has it? (PostgreSQL)
SELECT r.account,
       r.id AS region_id,
       coalesce(sum(coalesce(i.valid_to, now()) - i.valid_from), interval '0') AS enabled_for,
       count(i.valid_from) AS enabled_periods
FROM regions AS r
LEFT JOIN region_status_intervals AS i
       ON i.account = r.account AND i.region_id = r.id AND i.carrier_enabled
WHERE r.id = :region_id
GROUP BY r.account, r.id
ORDER BY r.account;
