-- Query 12: bids per bidder per 10-second window. Flink's version windows
-- by processing time; Sluice windows by event time (the same counts on a
-- replay).
CREATE SINK nexmark_q12 WITH (connector = 'blackhole') AS
SELECT B.bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) B
GROUP BY B.bidder, window_start, window_end;
