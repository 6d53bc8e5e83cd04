-- Query 10: log to a partitioned file system (Parquet in the data
-- directory, Hive-style dt=/hm= directories).
CREATE SINK nexmark_q10 WITH (connector = 'filesystem', path = 'nexmark/q10', format = 'parquet',
                              partition_by = 'dt,hm') AS
SELECT auction, bidder, price, date_time, extra,
       to_char(date_time, '%Y-%m-%d') AS dt, to_char(date_time, '%H:%M') AS hm
FROM bid;
