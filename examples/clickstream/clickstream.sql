-- Collect: the clicks topic as a stream (JSON records, event time `ts`).
CREATE STREAM clicks (user_id BIGINT, page TEXT, ts TIMESTAMP(3),
                      WATERMARK FOR ts AS ts - INTERVAL '5 seconds')
WITH (connector = 'kafka', topic = 'clicks', 'properties.bootstrap.servers' = 'BROKERS',
      'scan.startup.mode' = 'earliest-offset', format = 'json',
      -- a malformed record goes to the clicks_bad topic with its error and position
      'bad_records' = 'dead_letter', 'dead_letter.topic' = 'clicks_bad');

-- Process and store: views per page per minute, landed as Hive-partitioned Parquet
-- in the data directory (a relative path), readable as the table page_views.
CREATE SINK page_views WITH (connector = 'filesystem', path = 'lake/page_views',
                             format = 'parquet', partition_by = 'dt',
                             'sink.rolling-policy.rollover-interval' = '5s') AS
  SELECT page, window_start, count(*) AS views, to_char(window_start, '%Y-%m-%d') AS dt
  FROM TUMBLE(clicks, ts, INTERVAL '1 minute') GROUP BY page, window_start;

-- A live total per page, upserted into Kafka.
CREATE SINK page_totals WITH (connector = 'kafka', topic = 'page_totals',
       'properties.bootstrap.servers' = 'BROKERS', format = 'json', 'sink.mode' = 'upsert',
       key = 'page') AS
  SELECT page, count(*) AS views FROM clicks GROUP BY page;

SHOW JOBS;

-- Analyse: wait for the first files to land, then query them Hive-style.
\! sleep 8
SELECT page, sum(views) AS views FROM page_views GROUP BY page ORDER BY views DESC LIMIT 5;
SELECT dt, count(*) AS minutes_x_pages, sum(views) AS views FROM page_views GROUP BY dt;

-- The malformed clicks, each with its error and position (Kafka headers), read
-- back from the dead letter topic.
CREATE STREAM clicks_bad (raw BYTEA, why TEXT METADATA FROM 'headers')
WITH (connector = 'kafka', topic = 'clicks_bad', 'properties.bootstrap.servers' = 'BROKERS',
      format = 'raw');
SELECT why FROM clicks_bad LIMIT 3;
