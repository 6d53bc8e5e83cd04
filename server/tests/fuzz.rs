//! A protocol fuzz test: random and mutated frames, before and after login,
//! over thousands of connections. The server stays up, logs no panic,
//! keeps its memory bounded, and a healthy session beside the fuzzing keeps
//! answering.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::SluiceProcess;

/// xorshift64*: a small seeded generator, so a failure can be replayed
/// (`SLUICE_FUZZ_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Up to `max` random bytes (at least one).
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn startup(user: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for kv in ["user", user, "database", "sluice"] {
        body.extend_from_slice(kv.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend(body);
    msg
}

/// Well-formed frontend messages the mutations start from.
fn seeds() -> Vec<Vec<u8>> {
    let mut bind = Vec::new();
    bind.extend_from_slice(b"\0s1\0"); // portal "", statement "s1"
    bind.extend_from_slice(&1i16.to_be_bytes()); // one format code
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes()); // one value
    bind.extend_from_slice(&1i32.to_be_bytes());
    bind.push(b'7');
    bind.extend_from_slice(&1i16.to_be_bytes()); // one result format
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut parse = b"s1\0SELECT $1::bigint + 1\0".to_vec();
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&20i32.to_be_bytes());
    let mut execute = b"\0".to_vec();
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut sasl = b"SCRAM-SHA-256\0".to_vec();
    sasl.extend_from_slice(&8i32.to_be_bytes());
    sasl.extend_from_slice(b"n,,n=,r=");
    vec![
        frame(b'Q', b"SELECT 1\0"),
        frame(b'Q', b"SELECT * FROM generate_series(1, 3)\0"),
        frame(b'Q', b"-- only a comment\0"),
        frame(b'P', &parse),
        frame(b'B', &bind),
        frame(b'D', b"Ss1\0"),
        frame(b'D', b"P\0"),
        frame(b'E', &execute),
        frame(b'S', b""),
        frame(b'H', b""),
        frame(b'C', b"Ss1\0"),
        frame(b'd', b"1\t2\n"),
        frame(b'c', b""),
        frame(b'f', b"failed\0"),
        frame(b'p', b"sluice\0"),
        frame(b'p', &sasl),
        frame(b'F', &[0, 0, 0, 1]),
    ]
}

/// One mutated frame (or a few raw bytes).
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut f = seeds[rng.below(seeds.len())].clone();
    match rng.below(9) {
        // Flip some bytes anywhere, the header included.
        0 | 1 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(f.len());
                f[i] ^= 1 << rng.below(8);
            }
        }
        // A length field that lies, small or large (at most 64 KB more, so
        // a connection does not wait for a body that never comes forever).
        2 => {
            let len = match rng.below(4) {
                0 => rng.below(4) as i32,
                1 => -(rng.below(1000) as i32) - 1,
                2 => (f.len() - 1 + rng.below(65536)) as i32,
                _ => rng.below(f.len().max(5)) as i32,
            };
            f[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // The body cut short, the length fixed up to match.
        3 => {
            let keep = 5 + rng.below(f.len() - 4);
            f.truncate(keep);
            let len = (f.len() - 1) as i32;
            f[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // Random body bytes under a valid header.
        4 => {
            let body = rng.bytes(64);
            f = frame(f[0], &body);
        }
        // Any type byte.
        5 => f[0] = rng.next() as u8,
        // Random bytes inserted in the body.
        6 => {
            let at = 5 + rng.below(f.len() - 4);
            let extra = rng.bytes(16);
            f.splice(at..at, extra);
            let len = (f.len() - 1) as i32;
            f[1..5].copy_from_slice(&len.to_be_bytes());
        }
        // Pure noise.
        7 => f = rng.bytes(32),
        // Unchanged.
        _ => {}
    }
    f
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `frames` on one connection (after `prefix`), reading whatever
/// comes back without waiting for it; stops when the server closes.
fn blast(port: u16, prefix: &[u8], frames: &[Vec<u8>]) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 65536];
    if s.write_all(prefix).is_err() {
        return;
    }
    for f in frames {
        if s.write_all(f).is_err() {
            return;
        }
        if let Ok(0) = s.read(&mut buf) {
            return;
        }
    }
}

fn fuzz(
    p: &SluiceProcess,
    log: &std::path::Path,
    prefix: &[u8],
    connections: usize,
    per: usize,
    seed: u64,
) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&p.conn_string(), tokio_postgres::NoTls))
        .unwrap();
    rt.spawn(conn);
    let seeds = seeds();
    let mut rng = Rng(seed);
    let pid = p.child.id();
    let mut sent = 0;
    let mut peak = 0;
    for c in 0..connections {
        let frames: Vec<Vec<u8>> = (0..per).map(|_| mutate(&mut rng, &seeds)).collect();
        sent += frames.len();
        blast(p.port, prefix, &frames);
        if c % 100 == 0 {
            // The healthy session answers throughout.
            let n: i64 = rt
                .block_on(client.query_one("SELECT 40 + 2", &[]))
                .unwrap_or_else(|e| panic!("seed {seed}, connection {c}: healthy session failed: {e}"))
                .get(0);
            assert_eq!(n, 42);
            peak = peak.max(rss_kb(pid));
        }
    }
    assert!(
        p.child.id() == pid && std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "the server died (seed {seed})"
    );
    let logged = std::fs::read_to_string(log).unwrap();
    assert!(
        !logged.contains("panicked"),
        "seed {seed}: a panic was logged:\n{logged}"
    );
    // Bounded memory: no frame is buffered for long, nothing accumulates.
    assert!(peak < 1024 * 1024, "seed {seed}: RSS reached {peak} kB");
    eprintln!("seed {seed}: {sent} frames over {connections} connections, peak RSS {peak} kB");
    sent
}

fn seed() -> u64 {
    std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

#[test]
fn mutated_frames_before_and_after_login() {
    let dir = tempfile::tempdir().unwrap();
    let seed = seed();
    // Before login: the default SCRAM server, frames after a startup
    // message (and without one).
    // (No brake on failed logins: the fuzzer fails thousands.)
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        "login_failures_per_minute = 0\n[users]\nsluice = \"sluice\"\n",
    )
    .unwrap();
    let log = dir.path().join("scram.log");
    let p = SluiceProcess::start_logging(
        &dir.path().join("scram"),
        &log,
        &[
            ("SLUICE_LOG", "error"),
            ("SLUICE_CONFIG", config.to_str().unwrap()),
        ],
    );
    let before = fuzz(&p, &log, &startup("sluice"), 1_000, 30, seed);
    let raw = fuzz(&p, &log, b"", 200, 10, seed ^ 0x9e37);
    drop(p);
    // After login: trust, so every frame reaches the query handlers.
    let log = dir.path().join("trust.log");
    let p = SluiceProcess::start_logging(
        &dir.path().join("trust"),
        &log,
        &[("SLUICE_LOG", "error"), ("SLUICE_AUTH", "trust")],
    );
    let after = fuzz(&p, &log, &startup("sluice"), 1_500, 50, seed ^ 0x5bd1);
    assert!(before + raw + after >= 100_000);
}
