-- Query 23: bids of people who also sell (a three-way join, two regular joins
-- on the bidder).
CREATE SINK nexmark_q23 WITH (connector = 'blackhole') AS
SELECT bidder, price, channel, url, B.extra AS bid_extra,
       P.id AS person_id, name, email_address, credit_card, city, state, P.extra AS person_extra,
       item_name, description, initial_bid, reserve, A.date_time AS auction_date_time, expires, seller,
       category, A.extra AS auction_extra
FROM bid B
JOIN person P ON P.id = B.bidder
JOIN auction A ON A.seller = B.bidder;
