-- Which regions disappeared from an account's API answers and never came back?
SELECT account, id AS region_id, display_name, hosting_region, removed_at
FROM regions
WHERE removed_at IS NOT NULL
ORDER BY account, removed_at, id;
