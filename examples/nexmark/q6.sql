-- Query 6: average selling price per seller over their last 10 closed
-- auctions: an OVER aggregate over the winning bids, a top 1 per auction
-- whose result updates as higher bids come. OVER over an updating input is
-- refused with 0A000 (Flink refuses this query as well).
CREATE SINK nexmark_q6 WITH (connector = 'blackhole') AS
SELECT Q.seller,
       AVG(Q.price) OVER (PARTITION BY Q.seller ORDER BY Q.date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW)
           AS avg_price
FROM (
    SELECT * FROM (
        SELECT A.id, A.seller, B.price, B.date_time,
               ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC) AS rownum
        FROM auction AS A, bid AS B
        WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    )
    WHERE rownum <= 1
) AS Q;
