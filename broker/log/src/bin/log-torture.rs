//! Crash-test child: appends to a topic with fsync=always from several
//! concurrent tasks and prints `ack <offset> <seq>` for every record once
//! its append is acknowledged. The crash test SIGKILLs it at random
//! moments and checks the log against what was printed.
//!
//! Usage: `log-torture <data-dir> <first-seq> [<key-file>]`; with a key
//! file the records are encrypted at rest. Bounded: stops after 200 000
//! records or 60 seconds.

use std::{
    io::Write,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use mesh_log::{AppendRecord, LogConfig, TopicConfig, TopicLog};

const TASKS: u64 = 8;
const MAX_RECORDS: u64 = 200_000;
const MAX_TIME: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .ok_or("usage: log-torture <data-dir> <first-seq>")?,
    );
    let first: u64 = args.next().ok_or("missing <first-seq>")?.parse()?;
    let cfg = Arc::new(LogConfig {
        segment_bytes: 256 << 10,
        encryption_key_file: args.next().map(PathBuf::from),
        ..LogConfig::default()
    });
    let topic_dir = dir.join("t");
    let log = Arc::new(if topic_dir.join("topic.json").exists() {
        TopicLog::open("t", &topic_dir, cfg)?
    } else {
        TopicLog::create("t", &topic_dir, cfg, TopicConfig::default())?
    });
    let next = Arc::new(AtomicU64::new(first));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (log, next) = (log.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < MAX_TIME {
                let batch = 1 + (n + t) % 8;
                let seq0 = next.fetch_add(batch, Ordering::Relaxed);
                if seq0 >= first + MAX_RECORDS {
                    break;
                }
                let recs = (seq0..seq0 + batch)
                    .map(|s| AppendRecord {
                        id: Some(format!("seq-{s}")),
                        payload: Bytes::from(format!("seq-{s}:{}", "p".repeat((s % 300) as usize))),
                    })
                    .collect();
                let acks = log.append(recs).await.expect("append");
                let mut out = std::io::stdout().lock();
                for (i, a) in acks.iter().enumerate() {
                    writeln!(out, "ack {} {}", a.offset, seq0 + i as u64).expect("stdout");
                }
                out.flush().expect("stdout");
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
