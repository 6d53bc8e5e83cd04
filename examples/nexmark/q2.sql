-- Query 2: selection (bids on some auctions).
CREATE SINK nexmark_q2 WITH (connector = 'blackhole') AS
SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0;
