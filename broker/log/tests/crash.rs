//! A real child process appends with fsync=always and reports every
//! acknowledged offset; it is SIGKILLed at random moments, several times.
//! After each kill, every acknowledged record must be in the log exactly
//! once, at the offset that was acknowledged, in order. Once in plaintext
//! and once encrypted at rest (recovery must cut torn sealed records by
//! their checksum alone, and keep every acknowledged one readable).

mod common;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use mesh_log::{LogConfig, TopicLog};

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn sigkill_never_loses_an_acknowledged_record() {
    sigkill_rounds(None);
}

#[test]
fn sigkill_never_loses_an_acknowledged_record_encrypted() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("keys");
    std::fs::write(&key_file, common::key_line(1, 0x5a)).unwrap();
    sigkill_rounds(Some(&key_file));
}

fn sigkill_rounds(key_file: Option<&std::path::Path>) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = seed();
    eprintln!("seed {rng}");
    let mut acked: HashMap<u64, u64> = HashMap::new(); // seq -> offset
    let mut next_seq = 0u64;
    for round in 0..6 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_log-torture"))
            .arg(dir.path())
            .arg(next_seq.to_string())
            .args(key_file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let kill_after = 20 + next(&mut rng) % 3000;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < kill_after && Instant::now() < deadline {
            let Some(line) = lines.next() else { break };
            record(&mut acked, &line.unwrap());
            seen += 1;
        }
        child.kill().unwrap(); // SIGKILL
        // Lines printed before the kill were acknowledged too.
        for line in lines {
            record(&mut acked, &line.unwrap());
        }
        child.wait().unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: the child acknowledged nothing"
        );
        next_seq = acked.keys().max().unwrap() + 1_000_000;
        verify(dir.path(), &acked, round, key_file);
    }
}

fn record(acked: &mut HashMap<u64, u64>, line: &str) {
    let mut it = line.split_whitespace();
    assert_eq!(it.next(), Some("ack"), "unexpected line {line:?}");
    let offset: u64 = it.next().unwrap().parse().unwrap();
    let seq: u64 = it.next().unwrap().parse().unwrap();
    assert!(
        acked.insert(seq, offset).is_none(),
        "seq {seq} acknowledged twice"
    );
}

fn verify(
    dir: &std::path::Path,
    acked: &HashMap<u64, u64>,
    round: usize,
    key_file: Option<&std::path::Path>,
) {
    let cfg = Arc::new(LogConfig {
        segment_bytes: 256 << 10,
        encryption_key_file: key_file.map(std::path::Path::to_path_buf),
        ..LogConfig::default()
    });
    let log = TopicLog::open("t", &dir.join("t"), cfg).unwrap();
    let all = common::read_all(&log).unwrap();
    let mut seen_seq = HashMap::new();
    for (i, r) in all.iter().enumerate() {
        assert_eq!(
            r.offset, i as u64,
            "round {round}: offsets must be dense and in order"
        );
        let text = std::str::from_utf8(&r.payload).unwrap();
        let seq: u64 = text
            .strip_prefix("seq-")
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            seen_seq.insert(seq, r.offset).is_none(),
            "round {round}: seq {seq} stored twice"
        );
    }
    for (seq, off) in acked {
        assert_eq!(
            seen_seq.get(seq),
            Some(off),
            "round {round}: acknowledged seq {seq} at offset {off} is missing"
        );
    }
    eprintln!(
        "round {round}: {} acknowledged, {} in the log",
        acked.len(),
        all.len()
    );
}
