-- Query 0: pass-through (measures the monitoring overhead).
CREATE SINK nexmark_q0 WITH (connector = 'blackhole') AS
SELECT auction, bidder, price, date_time, extra FROM bid;
