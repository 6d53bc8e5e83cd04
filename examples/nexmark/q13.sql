-- Query 13: bounded side input join (stream enrichment). The side input is a
-- file of (key, value) JSON lines read as a bounded stream (in the data
-- directory under nexmark/side_input/, see README.md), joined as Flink does,
-- FOR SYSTEM_TIME AS OF PROCTIME(): bids meet the side input once it is read
-- whole, and only the side input is held.
CREATE STREAM side_input (key BIGINT, value VARCHAR)
    WITH (connector = 'filesystem', path = 'nexmark/side_input', format = 'json', 'scan.mode' = 'bounded');
CREATE SINK nexmark_q13 WITH (connector = 'blackhole') AS
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B JOIN side_input FOR SYSTEM_TIME AS OF PROCTIME() AS S ON MOD(B.auction, 10000) = S.key;
