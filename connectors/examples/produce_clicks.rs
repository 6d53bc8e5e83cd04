//! Produces JSON page clicks to a Kafka topic (creating the topic first), for
//! `examples/clickstream/`.
//!
//! ```text
//! cargo run --release -p sluice-connectors --example produce_clicks -- \
//!     --brokers 127.0.0.1:9092 --topic clicks --partitions 4 --records 200000 --bad-every 10000
//! ```
//!
//! `--bad-every N` makes every Nth record malformed (truncated JSON, a
//! wrong type, invalid UTF-8 in turn), for the dead letter topic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() {
    let brokers = arg("--brokers", "127.0.0.1:9092");
    let topic = arg("--topic", "clicks");
    let partitions: i32 = arg("--partitions", "4").parse().expect("--partitions");
    let records: u64 = arg("--records", "200000").parse().expect("--records");
    let bad_every: u64 = arg("--bad-every", "0").parse().expect("--bad-every");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    for r in created {
        if let Err((t, e)) = r {
            // An existing topic is fine if it has enough partitions; the
            // first record sent to a missing partition fails below.
            eprintln!("topic {t}: {e} (continuing)");
        }
    }
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    // Event times spread evenly over the last ten minutes.
    let span = 600_000u64;
    let pages = [
        "/",
        "/search",
        "/product/1",
        "/product/2",
        "/product/3",
        "/cart",
        "/checkout",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..records {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let page = pages[(state % pages.len() as u64) as usize];
        let ts = now - span + i * span / records.max(1);
        let mut payload = format!(
            r#"{{"user_id": {}, "page": "{page}", "ts": {ts}}}"#,
            state % 10_000
        )
        .into_bytes();
        if bad_every > 0 && i % bad_every == bad_every - 1 {
            payload = match (i / bad_every) % 3 {
                0 => payload[..payload.len() / 2].to_vec(),
                1 => format!(r#"{{"user_id": "someone", "page": "{page}", "ts": {ts}}}"#).into_bytes(),
                _ => [&b"{\"user_id\": 1, \"page\": \""[..], &[0xff, 0xfe], &b"\"}"[..]].concat(),
            };
        }
        let rec = BaseRecord::<(), Vec<u8>>::to(&topic)
            .payload(&payload)
            .partition((i % partitions as u64) as i32);
        sluice_connectors::kafka::send_waiting(&producer, rec)
            .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    println!("produced {records} clicks to {topic} ({partitions} partitions) on {brokers}");
}
