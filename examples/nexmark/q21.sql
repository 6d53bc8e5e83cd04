-- Query 21: channel ids (from the channel name or the url's channel_id).
CREATE SINK nexmark_q21 WITH (connector = 'blackhole') AS
SELECT auction, bidder, price, channel,
       CASE
           WHEN lower(channel) = 'apple' THEN '0'
           WHEN lower(channel) = 'google' THEN '1'
           WHEN lower(channel) = 'facebook' THEN '2'
           WHEN lower(channel) = 'baidu' THEN '3'
           ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2]
       END AS channel_id
FROM bid
WHERE regexp_like(url, 'channel_id=') OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu');
