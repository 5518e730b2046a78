//! `[[listeners.NAME.rules]]`: an L7 listener's routing rules, as ALB's listener rules. Each
//! request takes the first rule whose conditions all hold (within a condition, any of its
//! values); a request no rule takes goes to the listener's `pool`.
//!
//! ```toml
//! [[listeners.web.rules]]
//! name = "api"                                 # letters, digits, '-' and '_'
//! host = ["api.example.com", "*.api.example.com"]
//! path_prefix = ["/v2/"]                       # and/or path = ["/exact"]
//! method = ["GET", "POST"]
//! header = { "x-canary" = ["1"] }
//! query = { "beta" = ["yes"] }
//! pools = [{ pool = "blue", weight = 9 }, { pool = "green", weight = 1 }]   # or pool = "api",
//! #   or redirect = { status = 301, host = "..." }, or fixed_response = { status = 503, ... }
//! request_headers = { set = { "x-route" = "api" }, remove = ["x-debug"] }
//! response_headers = { add = { "cache-control" = "no-store" } }
//! ```
//!
//! What `lb check` refuses besides malformed values: a rule no request can reach (an earlier
//! one takes every request it would), two rules of one name, a redirect to the URL it was
//! asked for (a loop), a header both set and removed, a pool named twice in one rule.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::validate::Checker;

/// An L7 listener's routing rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub conditions: Conditions,
    pub action: Action,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

/// What a request must be for a rule to take it: every condition given holds (an empty list
/// is no condition); within one, any of its values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conditions {
    pub hosts: Vec<HostPattern>,
    pub paths: Vec<PathPattern>,
    /// Upper case.
    pub methods: Vec<String>,
    /// Lower-case names, each with the values it may have (exact).
    pub headers: Vec<(String, Vec<String>)>,
    /// Query parameters, each with the values it may have (exact, as sent).
    pub query: Vec<(String, Vec<String>)>,
}

/// A host condition, compared without case and without the port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`: any name that ends with `.example.com` (the suffix kept, dot and all).
    Wildcard(String),
}

/// A path condition, on the path without its query, as sent.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathPattern {
    Exact(String),
    Prefix(String),
}

/// What a rule does with the requests it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// To one pool, or several by weight (a user stays in the pool their cookie names, with
    /// stickiness).
    Forward(Vec<WeightedPool>),
    Redirect(Redirect),
    Fixed(FixedResponse),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedPool {
    pub pool: String,
    pub weight: u32,
}

/// A redirect: each part given replaces the request's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    /// Without the `?`; empty: no query.
    pub query: Option<String>,
}

/// An answer the balancer gives itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// Headers a rule changes: `add` appends, `set` replaces, `remove` deletes (lower-case names).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderEdits {
    pub add: Vec<(String, String)>,
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.set.is_empty() && self.remove.is_empty()
    }
}

/// A request as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Without the port, any case.
    pub host: &'a str,
    pub path: &'a str,
    /// Without the `?`.
    pub query: &'a str,
    pub headers: &'a hyper::HeaderMap,
}

impl Conditions {
    /// Whether `request` meets every condition.
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        fn any<T>(list: &[T], hit: impl Fn(&T) -> bool) -> bool {
            list.is_empty() || list.iter().any(hit)
        }
        any(&self.hosts, |p| p.matches(request.host))
            && any(&self.paths, |p| p.matches(request.path))
            && any(&self.methods, |m| m == request.method)
            && self.headers.iter().all(|(name, values)| {
                request
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| values.iter().any(|want| v.as_bytes() == want.as_bytes()))
            })
            && self.query.iter().all(|(key, values)| {
                query_pairs(request.query)
                    .any(|(k, v)| k == key && values.iter().any(|want| want == v))
            })
    }

    /// Whether every request these conditions take, `other`'s take too (so that a rule with
    /// `other`'s conditions before one with these leaves it no request).
    pub fn within(&self, other: &Self) -> bool {
        // An empty list of `other`'s takes anything; else each of ours must be within one
        // of its, and we must have a list (none would take anything).
        fn each<T>(ours: &[T], theirs: &[T], within: impl Fn(&T, &T) -> bool) -> bool {
            theirs.is_empty()
                || (!ours.is_empty() && ours.iter().all(|o| theirs.iter().any(|t| within(o, t))))
        }
        let pairs = |ours: &[(String, Vec<String>)], theirs: &[(String, Vec<String>)]| {
            theirs.iter().all(|(name, allowed)| {
                ours.iter()
                    .any(|(n, values)| n == name && values.iter().all(|v| allowed.contains(v)))
            })
        };
        each(&self.hosts, &other.hosts, HostPattern::within)
            && each(&self.paths, &other.paths, PathPattern::within)
            && each(&self.methods, &other.methods, |a, b| a == b)
            && pairs(&self.headers, &other.headers)
            && pairs(&self.query, &other.query)
    }

    /// No condition at all: every request.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// `path` as the rules compare it, so that a request cannot slip past a rule by spelling its
/// path another way a backend reads the same (RFC 3986, 6.2.2): percent-encoded unreserved
/// characters decoded (`/%61dmin` is `/admin`), other percent-encodings in capitals, repeated
/// slashes merged, and `.` and `..` segments removed. (`%2F` stays encoded: decoding it would
/// make a slash the backend may not see.) The request goes to the backend as it came.
pub fn normalize_path(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            #[expect(clippy::cast_possible_truncation, reason = "two hex digits")]
            let byte = (high * 16 + low) as u8;
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                decoded.push(byte);
            } else {
                decoded.push(b'%');
                decoded.extend(bytes[i + 1..i + 3].iter().map(u8::to_ascii_uppercase));
            }
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded);
    // Segments, without empty ones (repeated slashes) and dot segments.
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    // A trailing slash (or dot segment) is part of the path: `/api/` is not `/api`.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if normal.is_empty() || (trailing && !segments.is_empty()) {
        normal.push('/');
    }
    normal
}

/// `key=value` pairs of a query string (a key alone has an empty value).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

impl HostPattern {
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => host.eq_ignore_ascii_case(name),
            Self::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host
                        .get(host.len() - suffix.len()..)
                        .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
            }
        }
    }

    /// Whether every host this pattern takes, `other` takes.
    fn within(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(name), _) => other.matches(name),
            (Self::Wildcard(ours), Self::Wildcard(theirs)) => {
                ours.len() >= theirs.len()
                    && ours
                        .get(ours.len() - theirs.len()..)
                        .is_some_and(|end| end.eq_ignore_ascii_case(theirs))
            }
            (Self::Wildcard(_), Self::Exact(_)) => false,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(want) => path == want,
            Self::Prefix(prefix) => path.starts_with(prefix.as_str()),
        }
    }

    fn within(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(path) | Self::Prefix(path), Self::Prefix(_)) => other.matches(path),
            (Self::Exact(path), Self::Exact(theirs)) => path == theirs,
            (Self::Prefix(_), Self::Exact(_)) => false,
        }
    }
}

impl std::fmt::Display for PathPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(path) => f.write_str(path),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

impl Rule {
    /// The pools the rule forwards to.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        let forward = match &self.action {
            Action::Forward(pools) => pools.as_slice(),
            Action::Redirect(_) | Action::Fixed(_) => &[],
        };
        forward.iter().map(|p| p.pool.as_str())
    }

    /// The conditions in words, for `lb listener rules` and `lb simulate`.
    pub fn describe_conditions(&self) -> String {
        let c = &self.conditions;
        let mut parts = Vec::new();
        let list = |items: Vec<String>| items.join("|");
        if !c.hosts.is_empty() {
            parts.push(format!(
                "host {}",
                list(c.hosts.iter().map(ToString::to_string).collect())
            ));
        }
        if !c.paths.is_empty() {
            parts.push(format!(
                "path {}",
                list(c.paths.iter().map(ToString::to_string).collect())
            ));
        }
        if !c.methods.is_empty() {
            parts.push(format!("method {}", list(c.methods.clone())));
        }
        for (name, values) in &c.headers {
            parts.push(format!("header {name}: {}", list(values.clone())));
        }
        for (key, values) in &c.query {
            parts.push(format!("query {key}={}", list(values.clone())));
        }
        if parts.is_empty() {
            "every request".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// The action in words.
    pub fn describe_action(&self) -> String {
        describe_action(&self.action)
    }
}

/// An action in words.
pub fn describe_action(action: &Action) -> String {
    match action {
        Action::Forward(pools) if pools.len() == 1 => format!("forward to pool {}", pools[0].pool),
        Action::Forward(pools) => format!(
            "forward to pools {}",
            pools
                .iter()
                .map(|p| format!("{} (weight {})", p.pool, p.weight))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Action::Redirect(r) => {
            let mut parts = vec![r.status.to_string()];
            let mut part = |name: &str, value: &Option<String>| {
                if let Some(value) = value {
                    parts.push(format!("{name} {value}"));
                }
            };
            part("scheme", &r.scheme);
            part("host", &r.host);
            part("port", &r.port.map(|p| p.to_string()));
            part("path", &r.path);
            match r.query.as_deref() {
                Some("") => parts.push("no query".to_owned()),
                _ => part("query", &r.query),
            }
            format!("redirect {}", parts.join(", "))
        }
        Action::Fixed(f) => format!("fixed response {} ({})", f.status, f.content_type),
    }
}

/// A rule as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<Spanned<String>>,
    pub host: Option<Spanned<Vec<Spanned<String>>>>,
    pub path: Option<Spanned<Vec<Spanned<String>>>>,
    pub path_prefix: Option<Spanned<Vec<Spanned<String>>>>,
    pub method: Option<Spanned<Vec<Spanned<String>>>>,
    pub header: Option<Spanned<BTreeMap<String, Spanned<OneOrMany>>>>,
    pub query: Option<Spanned<BTreeMap<String, Spanned<OneOrMany>>>>,
    pub pool: Option<Spanned<String>>,
    pub pools: Option<Spanned<Vec<Spanned<RawWeightedPool>>>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub fixed_response: Option<Spanned<RawFixedResponse>>,
    pub request_headers: Option<Spanned<RawHeaderEdits>>,
    pub response_headers: Option<Spanned<RawHeaderEdits>>,
}

/// A value or a list of values.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<String> {
        match self {
            Self::One(value) => vec![value.clone()],
            Self::Many(values) => values.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedPool {
    pub pool: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub status: Option<Spanned<i64>>,
    pub scheme: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFixedResponse {
    pub status: Spanned<i64>,
    pub content_type: Option<Spanned<String>>,
    pub body: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The most rules one listener has.
pub const MAX_RULES: usize = 100;
/// The largest fixed response body.
pub const MAX_FIXED_BODY: usize = 64 * 1024;

/// Headers a rule may not change: the connection's and the body's framing (the balancer's to
/// write), and those it adds itself.
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
    "set-cookie",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "forwarded",
];

/// The rules of a listener, checked; `None` if any is wrong (each problem reported).
pub(super) fn check(
    c: &mut Checker<'_>,
    raw: &Spanned<Vec<Spanned<RawRule>>>,
    field: &str,
) -> Option<Vec<Rule>> {
    let rules = raw.get_ref();
    if rules.len() > MAX_RULES {
        c.problem(
            raw,
            field,
            format!("{} rules: at most {MAX_RULES}", rules.len()),
        );
        return None;
    }
    // The rules that are well-formed, with their index: checked against each other too.
    let mut checked: Vec<(usize, Rule)> = Vec::new();
    let mut valid = true;
    for (i, rule) in rules.iter().enumerate() {
        match check_rule(c, rule, i, &format!("{field}[{i}]")) {
            Some(rule) => checked.push((i, rule)),
            None => valid = false,
        }
    }
    for (k, (i, rule)) in checked.iter().enumerate() {
        let at = &rules[*i];
        let here = format!("{field}[{i}]");
        if let Some((first, _)) = checked[..k].iter().find(|(_, r)| r.name == rule.name) {
            c.problem(
                at,
                &format!("{here}.name"),
                format!("rule {:?} is also rule {first}'s name", rule.name),
            );
            valid = false;
        }
        if let Some((_, earlier)) = checked[..k]
            .iter()
            .find(|(_, r)| rule.conditions.within(&r.conditions))
        {
            c.problem(
                at,
                &here,
                format!(
                    "rule {:?} is unreachable: rule {:?} before it takes every request it would \
                     ({}); put the narrower rule first",
                    rule.name,
                    earlier.name,
                    earlier.describe_conditions()
                ),
            );
            valid = false;
        }
    }
    valid.then(|| checked.into_iter().map(|(_, rule)| rule).collect())
}

/// A rule's name: given, or `rule-N` (its position from 1).
fn rule_name(c: &mut Checker<'_>, raw: &RawRule, i: usize, field: &str) -> Option<String> {
    let Some(name) = &raw.name else {
        return Some(format!("rule-{}", i + 1));
    };
    let text = name.get_ref();
    let ok = !text.is_empty()
        && text.len() <= 32
        && text
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    if !ok {
        c.problem(
            name,
            &format!("{field}.name"),
            format!("{text:?} is not a rule name (1 to 32 letters, digits, '-' or '_')"),
        );
        return None;
    }
    Some(text.clone())
}

fn check_rule(c: &mut Checker<'_>, raw: &Spanned<RawRule>, i: usize, field: &str) -> Option<Rule> {
    let r = raw.get_ref();
    let name = rule_name(c, r, i, field);
    let conditions = check_conditions(c, r, field);
    let action = check_action(c, raw, field);
    let request_headers = edits(
        c,
        r.request_headers.as_ref(),
        &format!("{field}.request_headers"),
    );
    let response_headers = edits(
        c,
        r.response_headers.as_ref(),
        &format!("{field}.response_headers"),
    );
    let action = action?;
    let conditions = conditions?;
    // A 303 answering only methods other than GET and HEAD sends the client back with a GET:
    // no loop.
    let see_other = |redirect: &Redirect| {
        redirect.status == 303
            && !conditions.methods.is_empty()
            && !conditions.methods.iter().any(|m| m == "GET" || m == "HEAD")
    };
    if let Action::Redirect(redirect) = &action
        && !see_other(redirect)
        && redirect.scheme.as_deref().is_none_or(|s| s == "https")
        && redirect.host.is_none()
        && redirect.port.is_none()
        && redirect.path.is_none()
        && redirect.query.is_none()
    {
        c.problem(
            raw,
            &format!("{field}.redirect"),
            "redirects to the URL it was asked for (a loop): change the scheme, host, port, path \
             or query",
        );
        return None;
    }
    Some(Rule {
        name: name?,
        conditions,
        action,
        request_headers: request_headers?,
        response_headers: response_headers?,
    })
}

fn strings(list: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<&Spanned<String>> {
    list.map(|l| l.get_ref().iter().collect())
        .unwrap_or_default()
}

fn check_conditions(c: &mut Checker<'_>, r: &RawRule, field: &str) -> Option<Conditions> {
    let mut valid = true;
    let empty = |c: &mut Checker<'_>, list: Option<&Spanned<Vec<Spanned<String>>>>, name| {
        if let Some(list) = list.filter(|l| l.get_ref().is_empty()) {
            c.problem(
                list,
                &format!("{field}.{name}"),
                "empty: give values, or leave it out",
            );
            false
        } else {
            true
        }
    };
    valid &= empty(c, r.host.as_ref(), "host");
    valid &= empty(c, r.path.as_ref(), "path");
    valid &= empty(c, r.path_prefix.as_ref(), "path_prefix");
    valid &= empty(c, r.method.as_ref(), "method");
    let mut hosts = Vec::new();
    for host in strings(r.host.as_ref()) {
        let text = host.get_ref().to_ascii_lowercase();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text.as_str()),
        };
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        };
        if name.split('.').all(label) && name.len() <= 253 {
            hosts.push(if wildcard {
                HostPattern::Wildcard(format!(".{name}"))
            } else {
                HostPattern::Exact(name.to_owned())
            });
        } else {
            c.problem(
                host,
                &format!("{field}.host"),
                format!("{text:?} is not a host name or \"*.\" and one (ports are not compared)"),
            );
            valid = false;
        }
    }
    let mut paths = Vec::new();
    for (list, prefix) in [(&r.path, false), (&r.path_prefix, true)] {
        for path in strings(list.as_ref()) {
            let text = path.get_ref();
            let name = if prefix { "path_prefix" } else { "path" };
            let normal = normalize_path(text);
            if text.starts_with('/') && text != &normal {
                c.problem(
                    path,
                    &format!("{field}.{name}"),
                    format!(
                        "{text:?} is compared as {normal:?} (requests are, so that another \
                         spelling cannot slip past a rule); write that"
                    ),
                );
                valid = false;
                continue;
            }
            if text.starts_with('/') && text.chars().all(|ch| ch.is_ascii_graphic() && ch != '?') {
                paths.push(if prefix {
                    PathPattern::Prefix(text.clone())
                } else {
                    PathPattern::Exact(text.clone())
                });
            } else {
                c.problem(
                    path,
                    &format!("{field}.{name}"),
                    format!("{text:?} is not a path (starts with '/', no spaces or '?')"),
                );
                valid = false;
            }
        }
    }
    let mut methods = Vec::new();
    for method in strings(r.method.as_ref()) {
        let text = method.get_ref();
        if !text.is_empty() && text.len() <= 20 && text.chars().all(|ch| ch.is_ascii_uppercase()) {
            methods.push(text.clone());
        } else {
            c.problem(
                method,
                &format!("{field}.method"),
                format!("{text:?} is not a method in capitals (GET, POST, ...)"),
            );
            valid = false;
        }
    }
    let headers = pairs(c, r.header.as_ref(), &format!("{field}.header"), true);
    let query = pairs(c, r.query.as_ref(), &format!("{field}.query"), false);
    let conditions = Conditions {
        hosts,
        paths,
        methods,
        headers: headers?,
        query: query?,
    };
    valid.then_some(conditions)
}

/// Header or query conditions: names (lower-cased for headers) with one or more values.
fn pairs(
    c: &mut Checker<'_>,
    raw: Option<&Spanned<BTreeMap<String, Spanned<OneOrMany>>>>,
    field: &str,
    header: bool,
) -> Option<Vec<(String, Vec<String>)>> {
    let Some(raw) = raw else {
        return Some(Vec::new());
    };
    if raw.get_ref().is_empty() {
        c.problem(raw, field, "empty: give names and values, or leave it out");
        return None;
    }
    let mut valid = true;
    let mut out = Vec::new();
    for (name, values) in raw.get_ref() {
        let list = values.get_ref().values();
        let name_ok = if header {
            hyper::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
        } else {
            !name.is_empty() && !name.contains(['&', '=', '#', ' '])
        };
        let values_ok = !list.is_empty()
            && list.iter().all(|v| {
                if header {
                    hyper::header::HeaderValue::from_str(v).is_ok()
                } else {
                    !v.contains(['&', '#', ' '])
                }
            });
        if !name_ok || !values_ok {
            c.problem(
                values,
                &format!("{field}.{name}"),
                if header {
                    "not a header name with one or more valid values"
                } else {
                    "not a query parameter with one or more values (no '&', '#' or spaces)"
                },
            );
            valid = false;
            continue;
        }
        let name = if header {
            name.to_ascii_lowercase()
        } else {
            name.clone()
        };
        out.push((name, list));
    }
    valid.then_some(out)
}

fn check_action(c: &mut Checker<'_>, raw: &Spanned<RawRule>, field: &str) -> Option<Action> {
    let r = raw.get_ref();
    let given = [
        r.pool.is_some(),
        r.pools.is_some(),
        r.redirect.is_some(),
        r.fixed_response.is_some(),
    ]
    .into_iter()
    .filter(|&g| g)
    .count();
    if given != 1 {
        c.problem(
            raw,
            field,
            "a rule has one action: pool, pools, redirect or fixed_response",
        );
        return None;
    }
    if let Some(pool) = &r.pool {
        return Some(Action::Forward(vec![WeightedPool {
            pool: pool.get_ref().clone(),
            weight: 1,
        }]));
    }
    if let Some(pools) = &r.pools {
        let field = format!("{field}.pools");
        if pools.get_ref().is_empty() {
            c.problem(pools, &field, "empty: name one pool or more");
            return None;
        }
        let mut out: Vec<WeightedPool> = Vec::new();
        let mut valid = true;
        for entry in pools.get_ref() {
            let e = entry.get_ref();
            let weight = match &e.weight {
                Some(w) => c.int(w, &format!("{field}.weight"), (1, 1000)),
                None => Some(1),
            };
            let name = e.pool.get_ref();
            if out.iter().any(|p| &p.pool == name) {
                c.problem(
                    &e.pool,
                    &format!("{field}.pool"),
                    format!("pool {name:?} twice"),
                );
                valid = false;
            }
            match weight {
                Some(weight) => out.push(WeightedPool {
                    pool: name.clone(),
                    weight,
                }),
                None => valid = false,
            }
        }
        return valid.then_some(Action::Forward(out));
    }
    if let Some(redirect) = &r.redirect {
        return check_redirect(c, redirect, &format!("{field}.redirect")).map(Action::Redirect);
    }
    let fixed = r.fixed_response.as_ref()?;
    check_fixed(c, fixed, &format!("{field}.fixed_response")).map(Action::Fixed)
}

fn check_redirect(
    c: &mut Checker<'_>,
    raw: &Spanned<RawRedirect>,
    field: &str,
) -> Option<Redirect> {
    let r = raw.get_ref();
    let mut valid = true;
    let status = match &r.status {
        None => Some(301),
        Some(s) => match *s.get_ref() {
            301 | 302 | 303 | 307 | 308 => Some(u16::try_from(*s.get_ref()).unwrap_or(301)),
            other => {
                c.problem(
                    s,
                    &format!("{field}.status"),
                    format!("{other} is not a redirect status (301, 302, 303, 307, 308)"),
                );
                None
            }
        },
    };
    let scheme = r.scheme.as_ref().and_then(|s| match s.get_ref().as_str() {
        "http" | "https" => Some(s.get_ref().clone()),
        other => {
            c.problem(
                s,
                &format!("{field}.scheme"),
                format!("{other:?} is not \"http\" or \"https\""),
            );
            valid = false;
            None
        }
    });
    let host = r.host.as_ref().and_then(|h| {
        let text = h.get_ref();
        let ok = !text.is_empty()
            && text.len() <= 253
            && text
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.');
        if ok {
            Some(text.to_ascii_lowercase())
        } else {
            c.problem(
                h,
                &format!("{field}.host"),
                format!("{text:?} is not a host name"),
            );
            valid = false;
            None
        }
    });
    let port = r
        .port
        .as_ref()
        .and_then(|p| c.int(p, &format!("{field}.port"), (1, 65_535)));
    valid &= r.port.is_none() || port.is_some();
    let path = r.path.as_ref().and_then(|p| {
        let text = p.get_ref();
        if text.starts_with('/')
            && text
                .chars()
                .all(|ch| ch.is_ascii_graphic() && ch != '?' && ch != '#')
        {
            Some(text.clone())
        } else {
            c.problem(
                p,
                &format!("{field}.path"),
                format!("{text:?} is not a path (starts with '/', no spaces, '?' or '#')"),
            );
            valid = false;
            None
        }
    });
    let query = r.query.as_ref().and_then(|q| {
        let text = q.get_ref();
        if text.chars().all(|ch| ch.is_ascii_graphic() && ch != '#') && !text.starts_with('?') {
            Some(text.clone())
        } else {
            c.problem(
                q,
                &format!("{field}.query"),
                format!("{text:?} is not a query (without its '?'; no spaces or '#')"),
            );
            valid = false;
            None
        }
    });
    let status = status?;
    valid.then_some(Redirect {
        status,
        scheme,
        host,
        port,
        path,
        query,
    })
}

fn check_fixed(
    c: &mut Checker<'_>,
    raw: &Spanned<RawFixedResponse>,
    field: &str,
) -> Option<FixedResponse> {
    let r = raw.get_ref();
    let status = c.int(&r.status, &format!("{field}.status"), (200, 599));
    let content_type = r
        .content_type
        .as_ref()
        .map_or("text/plain; charset=utf-8", |t| t.get_ref().as_str())
        .to_owned();
    if hyper::header::HeaderValue::from_str(&content_type).is_err() {
        let at = r.content_type.as_ref().map_or(raw.span(), Spanned::span);
        c.problem(
            &Spanned::new(at, ()),
            &format!("{field}.content_type"),
            format!("{content_type:?} is not a header value"),
        );
        return None;
    }
    let body = r
        .body
        .as_ref()
        .map_or("", |b| b.get_ref().as_str())
        .to_owned();
    if body.len() > MAX_FIXED_BODY {
        let at = r.body.as_ref().map_or(raw.span(), Spanned::span);
        c.problem(
            &Spanned::new(at, ()),
            &format!("{field}.body"),
            format!("{} bytes: at most {MAX_FIXED_BODY}", body.len()),
        );
        return None;
    }
    Some(FixedResponse {
        status: status?,
        content_type,
        body,
    })
}

fn edits(
    c: &mut Checker<'_>,
    raw: Option<&Spanned<RawHeaderEdits>>,
    field: &str,
) -> Option<HeaderEdits> {
    let Some(raw) = raw else {
        return Some(HeaderEdits::default());
    };
    let r = raw.get_ref();
    let name_of = |c: &mut Checker<'_>, name: &str, what: &str| -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if hyper::header::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            c.problem(
                raw,
                &format!("{field}.{what}"),
                format!("{name:?} is not a header name"),
            );
            return None;
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            c.problem(
                raw,
                &format!("{field}.{what}"),
                format!("{name:?} is the balancer's to write (framing, forwarding, cookies)"),
            );
            return None;
        }
        Some(lower)
    };
    let pairs = |c: &mut Checker<'_>, map: &BTreeMap<String, String>, what: &str| {
        let mut out = Vec::new();
        for (name, value) in map {
            let Some(name) = name_of(c, name, what) else {
                continue;
            };
            if hyper::header::HeaderValue::from_str(value).is_err() {
                c.problem(
                    raw,
                    &format!("{field}.{what}.{name}"),
                    format!("{value:?} is not a header value"),
                );
                continue;
            }
            out.push((name, value.clone()));
        }
        out
    };
    let add = pairs(c, &r.add, "add");
    let set = pairs(c, &r.set, "set");
    let mut remove = Vec::new();
    for name in &r.remove {
        if let Some(name) = name_of(c, name, "remove") {
            remove.push(name);
        }
    }
    if let Some(name) = remove
        .iter()
        .find(|n| set.iter().chain(&add).any(|(s, _)| s == *n))
    {
        c.problem(
            raw,
            field,
            format!("header {name:?} is both written and removed"),
        );
        return None;
    }
    let written = add.len() + set.len() + remove.len();
    let given = r.add.len() + r.set.len() + r.remove.len();
    (written == given).then_some(HeaderEdits { add, set, remove })
}

#[cfg(test)]
mod tests;
