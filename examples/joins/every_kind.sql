-- Every kind of continuous join, top-N and OVER aggregate Sluice runs, over
-- a bounded run of the built-in Nexmark generator. Run it with psql against
-- a fresh server:
--   psql -h 127.0.0.1 -p 5433 -U sluice -f examples/joins/every_kind.sql
-- Each view is a job; the last statements show how many rows each holds.
-- (The generator's clock starts when the streams are created, so the windows
-- fall on other events each run and windowed counts differ from run to run.)

-- A second of watermark delay on each: the generator's tasks interleave, and
-- rows behind the watermark would be dropped as late.
CREATE STREAM person (WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
  WITH (connector = 'nexmark', 'nexmark.table' = 'person', 'events.max' = '50000', 'events.per.second' = '0');
CREATE STREAM auction (WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
  WITH (connector = 'nexmark', 'nexmark.table' = 'auction', 'events.max' = '50000', 'events.per.second' = '0');
CREATE STREAM bid (WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
  WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.max' = '50000', 'events.per.second' = '0');

-- Regular equi-joins: inner, outer (NULL-padded rows retracted on a first
-- match), and over updating inputs (two GROUP BY results).
CREATE MATERIALIZED VIEW j_inner AS
  SELECT p.name, p.city, a.id FROM auction a JOIN person p ON a.seller = p.id WHERE a.category = 10;
CREATE MATERIALIZED VIEW j_left AS
  SELECT p.id, a.id AS auction FROM person p LEFT JOIN auction a ON a.seller = p.id AND a.category = 10;
CREATE MATERIALIZED VIEW j_full_updating AS
  SELECT s.seller, s.auctions, b.bidder, b.bids
  FROM (SELECT seller, count(*) AS auctions FROM auction GROUP BY seller) s
  FULL JOIN (SELECT bidder, count(*) AS bids FROM bid GROUP BY bidder) b ON s.seller = b.bidder;
-- Semi and anti joins (EXISTS / NOT EXISTS).
CREATE MATERIALIZED VIEW j_semi AS
  SELECT p.id FROM person p WHERE EXISTS (SELECT 1 FROM auction a WHERE a.seller = p.id);
CREATE MATERIALIZED VIEW j_anti AS
  SELECT p.id FROM person p WHERE NOT EXISTS (SELECT 1 FROM auction a WHERE a.seller = p.id);
-- Interval join (state dropped as watermarks pass the bounds; keeps the
-- bids' event time, so an OVER aggregate can follow), feeding Nexmark q4's
-- aggregates.
CREATE MATERIALIZED VIEW j_interval AS
  SELECT a.id, max(b.price) AS final FROM auction a JOIN bid b
    ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires GROUP BY a.id;
CREATE MATERIALIZED VIEW j_interval_over AS
  SELECT b.auction, b.date_time, count(*) OVER w AS recent
  FROM auction a JOIN bid b ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires
  WINDOW w AS (PARTITION BY b.auction ORDER BY b.date_time
    RANGE BETWEEN INTERVAL '1' SECOND PRECEDING AND CURRENT ROW);
-- Window join: both inputs on the same tumbling windows.
CREATE MATERIALIZED VIEW j_window AS
  SELECT p.window_start, p.id, p.name, a.reserve
  FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) p
  JOIN TUMBLE(auction, date_time, INTERVAL '10' SECOND) a
    ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end;
-- Temporal join by event time (each auction with its seller as of the
-- auction), the same as an ASOF JOIN, and the processing-time form.
CREATE MATERIALIZED VIEW j_temporal AS
  SELECT a.id, p.name FROM auction a
  LEFT JOIN person FOR SYSTEM_TIME AS OF a.date_time AS p ON a.seller = p.id;
CREATE MATERIALIZED VIEW j_asof AS
  SELECT a.id, p.name FROM auction a ASOF JOIN person p
    MATCH_CONDITION (a.date_time >= p.date_time) ON a.seller = p.id;
CREATE MATERIALIZED VIEW j_lookup AS
  SELECT a.id, p.name FROM auction a
  LEFT JOIN person FOR SYSTEM_TIME AS OF PROCTIME() AS p ON a.seller = p.id;
-- Lookup join against a table (here a materialized view; an external table
-- or a sink's landed data the same way), read again every 2 seconds.
CREATE MATERIALIZED VIEW sellers AS SELECT seller, count(*) AS n FROM auction GROUP BY seller;
SET streaming.lookup_refresh = '2s';
CREATE MATERIALIZED VIEW j_lookup_table AS
  SELECT b.auction, b.price, s.n FROM bid b JOIN auction a ON b.auction = a.id
  LEFT JOIN sellers FOR SYSTEM_TIME AS OF PROCTIME() AS s ON a.seller = s.seller;
SET streaming.lookup_refresh = 'off';
-- Three-way join on one key (Nexmark q23's shape).
CREATE MATERIALIZED VIEW j_three_way AS
  SELECT p.id, a.id AS auction, b.price FROM person p
  JOIN auction a ON a.seller = p.id JOIN bid b ON b.bidder = p.id;
-- Top-N and deduplication.
CREATE MATERIALIZED VIEW top3 AS
  SELECT * FROM (SELECT auction, bidder, price,
    ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, bidder) AS rn FROM bid) WHERE rn <= 3;
CREATE MATERIALIZED VIEW last_bid AS
  SELECT * FROM (SELECT auction, bidder, price, date_time,
    ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC) AS rn FROM bid) WHERE rn = 1;
-- OVER aggregates and CUMULATE windows.
CREATE MATERIALIZED VIEW recent_avg AS
  SELECT bidder, avg(price) OVER (PARTITION BY bidder ORDER BY date_time
    ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS a FROM bid;
CREATE MATERIALIZED VIEW cumulative AS
  SELECT window_start, window_end, count(*) AS bids
  FROM CUMULATE(bid, date_time, INTERVAL '1' SECOND, INTERVAL '10' SECOND) GROUP BY 1, 2;

SELECT pg_sleep(5);
-- Every job but j_lookup_table (which reads its table again) is finished,
-- and late_rows is 0 everywhere with these delays.
SHOW JOBS;
SELECT 'j_inner' AS view, count(*) AS rows FROM j_inner
UNION ALL SELECT 'j_left', count(*) FROM j_left
UNION ALL SELECT 'j_full_updating', count(*) FROM j_full_updating
UNION ALL SELECT 'j_semi', count(*) FROM j_semi
UNION ALL SELECT 'j_anti', count(*) FROM j_anti
UNION ALL SELECT 'j_interval', count(*) FROM j_interval
UNION ALL SELECT 'j_interval_over', count(*) FROM j_interval_over
UNION ALL SELECT 'j_window', count(*) FROM j_window
UNION ALL SELECT 'j_temporal', count(*) FROM j_temporal
UNION ALL SELECT 'j_asof', count(*) FROM j_asof
UNION ALL SELECT 'j_lookup', count(*) FROM j_lookup
UNION ALL SELECT 'j_lookup_table', count(*) FROM j_lookup_table
UNION ALL SELECT 'j_three_way', count(*) FROM j_three_way
UNION ALL SELECT 'top3', count(*) FROM top3
UNION ALL SELECT 'last_bid', count(*) FROM last_bid
UNION ALL SELECT 'recent_avg', count(*) FROM recent_avg
UNION ALL SELECT 'cumulative', count(*) FROM cumulative;
