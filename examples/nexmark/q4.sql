-- Query 4: average closing price per category. The BETWEEN makes it an
-- interval join: auctions are dropped once the bids' watermark passes their
-- expiry, bids once the auctions' watermark passes their time.
CREATE SINK nexmark_q4 WITH (connector = 'blackhole') AS
SELECT Q.category, AVG(Q.final) AS avg_final
FROM (
    SELECT MAX(B.price) AS final, A.category
    FROM auction A, bid B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.category
) Q
GROUP BY Q.category;
