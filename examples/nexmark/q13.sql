-- Query 13: bounded side input join (stream enrichment). The side input is a
-- file of (key, value) JSON lines read as a bounded stream (in the data
-- directory under nexmark/side_input/, see README.md); Flink
-- spells it a lookup join FOR SYSTEM_TIME AS OF PROCTIME(), which Sluice does
-- not parse yet: here it is a regular join, holding both inputs per key.
CREATE STREAM side_input (key BIGINT, value VARCHAR)
    WITH (connector = 'filesystem', path = 'nexmark/side_input', format = 'json', 'scan.mode' = 'bounded');
CREATE SINK nexmark_q13 WITH (connector = 'blackhole') AS
SELECT B.auction, B.bidder, B.price, B.date_time, S.value
FROM bid B JOIN side_input S ON MOD(B.auction, 10000) = S.key;
