-- Query 19: the 10 highest bids per auction (top-N).
CREATE SINK nexmark_q19 WITH (connector = 'blackhole') AS
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC) AS rank_number
    FROM bid
)
WHERE rank_number <= 10;
