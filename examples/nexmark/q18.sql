-- Query 18: each bidder's last bid per auction (deduplication, rn = 1 by
-- time descending).
CREATE SINK nexmark_q18 WITH (connector = 'blackhole') AS
SELECT auction, bidder, price, channel, url, date_time, extra
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rank_number
    FROM bid
)
WHERE rank_number <= 1;
