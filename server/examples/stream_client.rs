//! Bench client: streams one query's rows from a running Sluice and reports
//! rows/s, in text (simple protocol) or binary (extended protocol) format.
//! Used by `bench/landed.py`; prints one JSON line.
//!
//! ```text
//! cargo run --release -p sluice-server --example stream_client -- \
//!     "host=127.0.0.1 port=6866 user=sluice password=sluice" text "SELECT * FROM trips"
//! ```

use std::time::Instant;

use futures::StreamExt;
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [conn, format, sql] = args.as_slice() else {
        anyhow::bail!("usage: stream_client CONNSTR text|binary SQL");
    };
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(connection);
    let start = Instant::now();
    let mut first_row = None;
    let mut rows: u64 = 0;
    match format.as_str() {
        "text" => {
            let stream = client.simple_query_raw(sql).await?;
            futures::pin_mut!(stream);
            while let Some(msg) = stream.next().await {
                if let SimpleQueryMessage::Row(_) = msg? {
                    rows += 1;
                    first_row.get_or_insert_with(|| start.elapsed());
                }
            }
        }
        "binary" => {
            let stmt = client.prepare(sql).await?;
            let stream = client.query_raw(&stmt, std::iter::empty::<i64>()).await?;
            futures::pin_mut!(stream);
            while let Some(row) = stream.next().await {
                row?;
                rows += 1;
                first_row.get_or_insert_with(|| start.elapsed());
            }
        }
        other => anyhow::bail!("format must be text or binary, not {other}"),
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"format\": \"{format}\", \"rows\": {rows}, \"seconds\": {secs:.3}, \"rows_per_sec\": {:.0}, \"first_row_ms\": {:.1}}}",
        rows as f64 / secs,
        first_row.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN)
    );
    Ok(())
}
