//! Scraping a process's Prometheus endpoint over real HTTP, and reading the
//! samples of the exposition text, for the tests that check metrics.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// One sample of the exposition text: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// `GET /metrics` with a minimal HTTP/1.1 client: the body of a `200`
/// answer (the exposition text), or an error for any other answer.
pub fn metrics_text(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP response: {text:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status: {head}")));
    }
    Ok(body.to_string())
}

/// `GET /metrics`: the parsed samples.
pub fn scrape(addr: SocketAddr) -> std::io::Result<Vec<Sample>> {
    Ok(parse(&metrics_text(addr)?))
}

/// Parses the Prometheus text format (enough of it for the mesh's metrics:
/// label values without commas or escaped quotes). Panics on a line that is
/// not a sample, a comment or blank.
pub fn parse(body: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().expect("sample value");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let labels = rest
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("label");
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

/// The value of the one sample of `name` whose labels include `labels`, or
/// `None` if there is none. Panics if several match: the caller named too
/// few labels to mean one series.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert!(hits.len() <= 1, "{name} {labels:?} matches {hits:?}");
    hits.first().copied()
}

/// Like [`sample`], with 0 if there is none yet (a counter appears on its
/// first increment).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(samples, name, labels).unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP up Whether it is up.\n# TYPE up gauge\nup 1\n\
        hits_total{topic=\"t\",group=\"g\"} 3\nhits_total{topic=\"t\",group=\"h\"} 4\n\n";

    #[test]
    fn parses_names_labels_and_values() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], ("up".to_string(), BTreeMap::new(), 1.0));
        assert_eq!(value(&s, "hits_total", &[("group", "h")]), 4.0);
        assert_eq!(sample(&s, "hits_total", &[("group", "x")]), None);
        assert_eq!(value(&s, "missing_total", &[]), 0.0);
    }

    #[test]
    #[should_panic(expected = "matches")]
    fn labels_that_match_several_series_panic() {
        value(&parse(TEXT), "hits_total", &[("topic", "t")]);
    }
}
