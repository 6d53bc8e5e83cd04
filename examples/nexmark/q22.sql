-- Query 22: the url's first three directories.
CREATE SINK nexmark_q22 WITH (connector = 'blackhole') AS
SELECT auction, bidder, price, channel,
       split_part(url, '/', 4) AS dir1,
       split_part(url, '/', 5) AS dir2,
       split_part(url, '/', 6) AS dir3
FROM bid;
