//! Who may do what: the access-control list of `acl_file`, as a pure
//! lookup (no I/O but [`Acl::load`]).
//!
//! ```toml
//! # billing consumes orders as group "billing"...
//! [[grant]]
//! principal = "billing"
//! verbs = ["subscribe"]
//! topics = ["orders"]
//! groups = ["billing"]
//!
//! # ...and reads payments without a group, to rebuild its ledger.
//! [[grant]]
//! principal = "billing"
//! verbs = ["subscribe"]
//! topics = ["payments"]
//! ```
//!
//! A call is allowed when one grant names its principal (or `"*"`: any
//! authenticated principal), its verb (or `"*"`), a topic pattern that
//! matches, and, for the group-scoped verbs (subscribe, seek, dlq_admin),
//! a group pattern that matches. A grant without `groups` allows only
//! calls without a group: reading a topic without a consumer group (for
//! subscribe), or the topic-scoped verbs. The group pattern `"*"` matches
//! any group and no group. Patterns are names with `*` standing for any
//! run of characters (`orders.*`). Everything not granted is denied.

use std::{fmt, path::Path};

use serde::Deserialize;

use crate::config::ConfigError;

/// What a call does, as the ACL names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// Publish and PublishUnary.
    Publish,
    /// Subscribe, as a group member or without a group.
    Subscribe,
    /// SeekGroup and DeleteGroup: moving or removing a group's position.
    Seek,
    /// ListDeadLetters, RedriveDeadLetters and PurgeDeadLetters.
    DlqAdmin,
    /// CreateTopic and DeleteTopic.
    TopicAdmin,
}

impl Verb {
    pub const ALL: [Verb; 5] = [
        Verb::Publish,
        Verb::Subscribe,
        Verb::Seek,
        Verb::DlqAdmin,
        Verb::TopicAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Publish => "publish",
            Verb::Subscribe => "subscribe",
            Verb::Seek => "seek",
            Verb::DlqAdmin => "dlq_admin",
            Verb::TopicAdmin => "topic_admin",
        }
    }

    /// Whether the ACL scopes this verb by consumer group.
    pub fn group_scoped(self) -> bool {
        matches!(self, Verb::Subscribe | Verb::Seek | Verb::DlqAdmin)
    }

    fn parse(s: &str) -> Option<Vec<Verb>> {
        if s == "*" {
            return Some(Verb::ALL.to_vec());
        }
        Verb::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .map(|v| vec![v])
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name pattern: literal characters and `*` for any run of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    fn is_any(&self) -> bool {
        self.0 == "*"
    }
}

/// `*`-only glob matching, iterative with one backtrack point (linear
/// enough for names of at most a few hundred bytes).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// One `[[grant]]` as written in the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    /// The principal: a client certificate's common name (or first DNS
    /// name), or a token's name; `"*"` for any authenticated one.
    principal: String,
    /// Verbs allowed: publish, subscribe, seek, dlq_admin, topic_admin, or
    /// `"*"` for all.
    verbs: Vec<String>,
    /// Topic patterns the verbs apply to.
    topics: Vec<String>,
    /// Group patterns, for subscribe, seek and dlq_admin; absent: only
    /// calls without a group.
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    grant: Vec<GrantFile>,
}

/// One grant, checked.
#[derive(Clone, Debug)]
pub struct Grant {
    pub principal: String,
    pub verbs: Vec<Verb>,
    pub topics: Vec<Pattern>,
    pub groups: Vec<Pattern>,
}

impl Grant {
    fn allows(&self, principal: &str, verb: Verb, topic: &str, group: Option<&str>) -> bool {
        if self.principal != "*" && self.principal != principal {
            return false;
        }
        if !self.verbs.contains(&verb) || !self.topics.iter().any(|t| t.matches(topic)) {
            return false;
        }
        if !verb.group_scoped() {
            return true;
        }
        match group {
            None => self.groups.is_empty() || self.groups.iter().any(Pattern::is_any),
            Some(g) => self.groups.iter().any(|p| p.matches(g)),
        }
    }
}

/// The whole list. Empty denies everything.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    grants: Vec<Grant>,
}

impl Acl {
    /// Reads and checks `path` (configuration key `acl_file`); errors name
    /// the file and the grant.
    pub fn load(path: &Path) -> Result<Acl, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
            key: "acl_file",
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        Acl::parse(&text).map_err(|reason| ConfigError::Invalid {
            key: "acl_file",
            reason: format!("{}: {reason}", path.display()),
        })
    }

    /// Parses the TOML text of an ACL file.
    pub fn parse(text: &str) -> Result<Acl, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut grants = Vec::with_capacity(file.grant.len());
        for (i, g) in file.grant.into_iter().enumerate() {
            let at = |m: String| format!("grant {} (principal {:?}): {m}", i + 1, g.principal);
            if g.principal.is_empty() {
                return Err(at("principal must not be empty".into()));
            }
            if g.verbs.is_empty() || g.topics.is_empty() {
                return Err(at("verbs and topics must each name at least one".into()));
            }
            let mut verbs = Vec::new();
            for v in &g.verbs {
                let Some(vs) = Verb::parse(v) else {
                    return Err(at(format!(
                        "verb {v:?} is not one of publish, subscribe, seek, dlq_admin, topic_admin, \"*\""
                    )));
                };
                verbs.extend(vs);
            }
            if g.groups.is_empty()
                && let Some(v) = verbs
                    .iter()
                    .find(|v| matches!(v, Verb::Seek | Verb::DlqAdmin))
            {
                return Err(at(format!("verb {v} needs `groups`")));
            }
            if let Some(p) = g.topics.iter().chain(&g.groups).find(|p| p.is_empty()) {
                return Err(at(format!("pattern {p:?} is empty")));
            }
            grants.push(Grant {
                verbs,
                topics: g.topics.iter().cloned().map(Pattern).collect(),
                groups: g.groups.iter().cloned().map(Pattern).collect(),
                principal: g.principal,
            });
        }
        Ok(Acl { grants })
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Whether `principal` may do `verb` on `topic` (as `group`, for the
    /// group-scoped verbs).
    pub fn allows(&self, principal: &str, verb: Verb, topic: &str, group: Option<&str>) -> bool {
        self.grants
            .iter()
            .any(|g| g.allows(principal, verb, topic, group))
    }

    /// Whether `principal` may do anything at all with `topic`: what it
    /// takes to see the topic in ListTopics and DescribeTopic.
    pub fn sees_topic(&self, principal: &str, topic: &str) -> bool {
        self.grants.iter().any(|g| {
            (g.principal == "*" || g.principal == principal)
                && g.topics.iter().any(|t| t.matches(topic))
        })
    }

    /// Whether `principal` holds any group-scoped verb on `topic` as
    /// `group`: what it takes to see the group in ListGroups and
    /// DescribeGroup.
    pub fn sees_group(&self, principal: &str, topic: &str, group: &str) -> bool {
        [Verb::Subscribe, Verb::Seek, Verb::DlqAdmin]
            .into_iter()
            .any(|v| self.allows(principal, v, topic, Some(group)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
        [[grant]]
        principal = "billing"
        verbs = ["subscribe"]
        topics = ["orders"]
        groups = ["billing"]
        [[grant]]
        principal = "billing"
        verbs = ["subscribe"]
        topics = ["payments"]
        [[grant]]
        principal = "billing"
        verbs = ["publish"]
        topics = ["payments"]
        [[grant]]
        principal = "admin"
        verbs = ["*"]
        topics = ["*"]
        groups = ["*"]
    "#;

    #[test]
    fn least_privilege_grants_exactly_what_they_name() {
        let acl = Acl::parse(DEMO).unwrap();
        let b = |v, t, g| acl.allows("billing", v, t, g);
        assert!(b(Verb::Subscribe, "orders", Some("billing")));
        assert!(b(Verb::Subscribe, "payments", None));
        assert!(b(Verb::Publish, "payments", None));
        assert!(!b(Verb::Publish, "orders", None));
        assert!(!b(Verb::Subscribe, "orders", Some("shipping")));
        assert!(
            !b(Verb::Subscribe, "orders", None),
            "no tail without a grant for it"
        );
        assert!(
            !b(Verb::Subscribe, "payments", Some("billing")),
            "no group on payments"
        );
        assert!(!b(Verb::Seek, "orders", Some("billing")));
        assert!(!b(Verb::DlqAdmin, "orders", Some("billing")));
        assert!(!b(Verb::TopicAdmin, "orders", None));
        assert!(!acl.allows("shipping", Verb::Subscribe, "orders", Some("billing")));
        for v in Verb::ALL {
            assert!(acl.allows("admin", v, "anything", Some("any")));
            assert!(acl.allows("admin", v, "anything", None));
        }
        assert!(acl.sees_topic("billing", "orders") && !acl.sees_topic("billing", "shipments"));
        assert!(acl.sees_group("billing", "orders", "billing"));
        assert!(!acl.sees_group("billing", "orders", "shipping"));
        assert!(!Acl::default().allows("admin", Verb::Publish, "x", None));
    }

    #[test]
    fn patterns_match_runs_of_any_characters() {
        let p = |s: &str| Pattern(s.into());
        assert!(p("orders.*").matches("orders.eu"));
        assert!(p("orders.*").matches("orders."));
        assert!(!p("orders.*").matches("orders"));
        assert!(p("*-dlq").matches("orders.billing-dlq"));
        assert!(p("a*b*c").matches("aXXbYYc") && !p("a*b*c").matches("aXXbYY"));
        assert!(p("*").matches("") && p("**").matches("x"));
        assert!(!p("orders").matches("orders2") && !p("orders").matches("order"));
    }

    #[test]
    fn bad_files_are_refused_naming_the_grant() {
        for (text, expect) in [
            (
                "[[grant]]\nprincipal='a'\nverbs=['read']\ntopics=['x']",
                "verb \"read\"",
            ),
            (
                "[[grant]]\nprincipal='a'\nverbs=['seek']\ntopics=['x']",
                "needs `groups`",
            ),
            (
                "[[grant]]\nprincipal=''\nverbs=['publish']\ntopics=['x']",
                "principal must not be empty",
            ),
            (
                "[[grant]]\nprincipal='a'\nverbs=['publish']\ntopics=[]",
                "at least one",
            ),
            (
                "[[grant]]\nprincipal='a'\nverb=['publish']",
                "unknown field",
            ),
        ] {
            let e = Acl::parse(text).unwrap_err();
            assert!(e.contains(expect), "{text}: {e}");
        }
    }
}
