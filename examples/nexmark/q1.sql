-- Query 1: currency conversion (dollars to euros).
CREATE SINK nexmark_q1 WITH (connector = 'blackhole') AS
SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid;
