-- The three Nexmark streams from Sluice's built-in generator (one event stream
-- split by type, as Flink's nexmark connector does). Event time is date_time;
-- 'events.per.second' = '0' runs unthrottled, 'events.max' bounds the run.
CREATE STREAM person WITH (connector = 'nexmark', 'nexmark.table' = 'person', 'events.per.second' = '10000');
CREATE STREAM auction WITH (connector = 'nexmark', 'nexmark.table' = 'auction', 'events.per.second' = '10000');
CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.per.second' = '10000');
