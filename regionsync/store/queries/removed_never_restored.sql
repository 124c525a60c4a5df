-- Which regions disappeared from the API and never came back?
SELECT id AS region_id, display_name, hosting_region, removed_at
FROM regions
WHERE removed_at IS NOT NULL
ORDER BY removed_at, id;
