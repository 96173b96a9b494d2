//! How topics, groups and event keys become JetStream names.
//!
//! Topic and group names may hold `.`, which JetStream stream names may
//! not, and which splits subject and key-value tokens. They are escaped
//! into one token: `_` becomes `__` and `.` becomes `_d` (so the mapping
//! is one to one and stays readable). Event keys are arbitrary UTF-8, so
//! they travel as unpadded URL-safe base64 (letters, digits, `-`, `_`),
//! which can never hold `.`, `*` or `>`; the empty key is `_`, which no
//! base64 text is.
//!
//! With the namespace "mesh":
//! - stream of topic `orders.v1`: `mesh-orders_dv1`
//! - its subjects: `mesh.orders_dv1.<key token>`
//! - a group's position and lease key: `orders_dv1.billing`, in the
//!   buckets `mesh-positions` and `mesh-leases`

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// The names of one mesh's streams, subjects and buckets. Every name
/// starts with the namespace (`jetstream.namespace`, "mesh" unless set),
/// so several meshes, or test runs, can share one NATS account without
/// seeing each other.
#[derive(Clone, Debug)]
pub struct Names {
    /// The namespace, already checked to be one token.
    ns: String,
}

impl Names {
    pub fn new(namespace: &str) -> Names {
        Names {
            ns: namespace.to_string(),
        }
    }

    /// The stream holding `topic`.
    pub fn stream(&self, topic: &str) -> String {
        format!("{}-{}", self.ns, token(topic))
    }

    /// The topic a stream holds, if it is one of this namespace's.
    pub fn topic_of_stream(&self, stream: &str) -> Option<String> {
        let rest = stream.strip_prefix(&self.ns)?.strip_prefix('-')?;
        untoken(rest)
    }

    /// The subjects a topic's stream captures: one token per event key.
    pub fn stream_subjects(&self, topic: &str) -> String {
        format!("{}.{}.*", self.ns, token(topic))
    }

    /// The subject an event with `key` is stored under.
    pub fn subject(&self, topic: &str, key: &str) -> String {
        format!("{}.{}.{}", self.ns, token(topic), key_token(key))
    }

    /// The key-value bucket of group positions.
    pub fn positions_bucket(&self) -> String {
        format!("{}-positions", self.ns)
    }

    /// The key-value bucket of group dispatcher leases.
    pub fn leases_bucket(&self) -> String {
        format!("{}-leases", self.ns)
    }

    /// Core NATS subject (not stored) on which brokers announce that a
    /// topic's head moved; `*` for all.
    pub fn notify_head(&self, topic: &str) -> String {
        format!("_{}.head.{}", self.ns, token_or_wildcard(topic))
    }

    /// Likewise, that a topic was created or deleted.
    pub fn notify_topic(&self, topic: &str) -> String {
        format!("_{}.topic.{}", self.ns, token_or_wildcard(topic))
    }
}

fn token_or_wildcard(topic: &str) -> String {
    if topic == "*" {
        "*".into()
    } else {
        token(topic)
    }
}

/// Whether `ns` can be a namespace: ASCII letters, digits and `_`, at
/// most 32 of them. No `-`, so the first `-` of a stream name ends the
/// namespace and no namespace's streams look like another's.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty() && ns.len() <= 32 && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A topic or group name as one token: no `.`, and only characters stream
/// names and subjects allow.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

/// The name back from its token; `None` if it is not one [`token`] makes.
pub fn untoken(tok: &str) -> Option<String> {
    let mut out = String::with_capacity(tok.len());
    let mut chars = tok.chars();
    while let Some(c) = chars.next() {
        match c {
            '_' => match chars.next()? {
                '_' => out.push('_'),
                'd' => out.push('.'),
                _ => return None,
            },
            '.' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// An event key as one subject token.
pub fn key_token(key: &str) -> String {
    if key.is_empty() {
        "_".to_string()
    } else {
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    }
}

/// The key-value key of a (topic, group): its position, its lease.
pub fn group_key(topic: &str, group: &str) -> String {
    format!("{}.{}", token(topic), token(group))
}

/// The (topic, group) a key-value key names.
pub fn parse_group_key(key: &str) -> Option<(String, String)> {
    let (t, g) = key.split_once('.')?;
    Some((untoken(t)?, untoken(g)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_hold_a_dot() {
        for name in [
            "orders",
            "a.b",
            "a_b",
            "a._b",
            "_",
            ".",
            "x__d",
            "orders.billing.dlq",
        ] {
            let t = token(name);
            assert!(!t.contains('.'), "{t}");
            assert_eq!(untoken(&t).as_deref(), Some(name));
        }
        // Distinct names never share a token.
        assert_ne!(token("a.b"), token("a_db"));
        assert_eq!(untoken("a_x"), None);
        assert_eq!(untoken("a."), None);
    }

    #[test]
    fn keys_with_subject_wildcards_stay_one_token() {
        for key in ["ord-1", "a.b", "*", ">", "a b", "ü.*.>", ""] {
            let t = key_token(key);
            assert!(
                !t.is_empty() && !t.contains(['.', '*', '>', ' ']),
                "{key:?} -> {t:?}"
            );
        }
        assert_ne!(key_token(""), key_token("_"));
        assert_eq!(
            Names::new("mesh").subject("orders", "a.b"),
            "mesh.orders.YS5i"
        );
    }

    #[test]
    fn streams_and_group_keys_parse_back() {
        let n = Names::new("mesh");
        assert_eq!(n.stream("orders.v1"), "mesh-orders_dv1");
        assert_eq!(
            n.topic_of_stream("mesh-orders_dv1").as_deref(),
            Some("orders.v1")
        );
        assert_eq!(n.topic_of_stream("KV_mesh-positions"), None);
        assert_eq!(Names::new("mesh2").topic_of_stream("mesh-orders"), None);
        assert!(
            valid_namespace("mesh_t1")
                && !valid_namespace("a.b")
                && !valid_namespace("a-b")
                && !valid_namespace("")
        );
        let k = group_key("a.b", "g_1.x");
        assert_eq!(parse_group_key(&k), Some(("a.b".into(), "g_1.x".into())));
    }
}
