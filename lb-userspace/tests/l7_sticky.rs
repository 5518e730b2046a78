//! Cookie stickiness end to end (issue 5): L7 listeners served in-process on 127.0.0.1 by the
//! shared harness's [`Setup`] (listener `web` with `[sticky]`), lab HTTP backends that name
//! themselves, and HTTPS clients that keep, drop, alter or forge the balancer's cookie. Pool
//! members are changed with [`L7Lab::set_members`] (or
//! [`L7::update_pools`](lb::l7::L7::update_pools)) in place of health checks and drains.
//!
//! A second balancer instance is a [`Site::twin`]: the configuration differs only in the
//! listener's port (and, for rotation, the key file): same listener name, same certificate and
//! the same backends, which the first site owns.
//!
//! Where a test needs to know what a cookie says, it opens it with a [`Sealer`] of the same key
//! and names, as another balancer would; where it needs a cookie the balancer would not make
//! (expired, foreign, for a backend outside the pool), it seals one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hyper::{
    StatusCode,
    header::{COOKIE, HeaderValue, SET_COOKIE},
};
use lb::{
    config::Config,
    l7::{
        proxy::Proxy,
        sticky::{self, BackendId, KeyRing, Sealer, SessionId, Ticket},
    },
    lab::{
        http::HttpBackend,
        l7::{
            Answer, HttpsConn, L7Lab, LabDir, ListenerToml, all_healthy, get, pool_toml,
            write_sticky_keys,
        },
    },
};

use common::l7::{HOST, LISTENER, Mode, POOL, Setup, Site, free_port, loopback};

const COOKIE_NAME: &str = "lb_sticky";
const KEY_OLD: [u8; 32] = [0x11; 32];
const KEY_NEW: [u8; 32] = [0x22; 32];
const KEY_FOREIGN: [u8; 32] = [0x33; 32];
/// Member state given to [`L7Lab::set_members`]: (weight now, sessions stay).
const UNHEALTHY: (u32, bool) = (0, false);
const DRAINING: (u32, bool) = (0, true);

/// A test's balancer (listener `web`, cookie keys [`KEY_OLD`]) and backends `backend-0`..: the
/// first instance, which owns the directory, the CA and the backends.
struct Bed {
    site: Site,
    /// The listener's cookie key file.
    keys: PathBuf,
}

impl Bed {
    /// `backends` backends and listener `web` with the `sticky` lines; `others` are more
    /// listeners as `web` (name, port, their own sticky lines).
    async fn start_with(
        test: &str,
        backends: usize,
        sticky: &str,
        others: &[(&str, u16, &str)],
    ) -> Self {
        let mut setup = Setup::new(&format!("lb-sticky-{test}"), Mode::Offload);
        for i in 0..backends {
            setup.plain_backend(&format!("backend-{i}")).await;
        }
        let keys = setup.sticky(&[KEY_OLD], sticky);
        for (name, port, sticky) in others {
            setup.other_listener(name, *port, sticky);
        }
        Self {
            site: setup.start(),
            keys,
        }
    }

    async fn start(test: &str, backends: usize, sticky: &str) -> Self {
        Self::start_with(test, backends, sticky, &[]).await
    }

    /// Listener `web`'s port.
    fn port(&self) -> u16 {
        self.site.address.port()
    }

    /// Another balancer instance: this configuration with listener `web` on a new port and
    /// the key file `keys`, in front of the same backends.
    fn twin(&self, keys: &Path) -> Site {
        self.site.twin("lb-sticky-twin", |listener| {
            listener.sticky_keys = Some(keys.to_owned());
        })
    }

    async fn client(&self, port: u16) -> Client {
        Client::connect(&self.site, port, false).await
    }

    fn names(&self) -> Vec<String> {
        self.site
            .lab
            .backends
            .iter()
            .map(|b| b.name.clone())
            .collect()
    }

    fn backend(&self, name: &str) -> &HttpBackend {
        self.site
            .lab
            .backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("{name:?} is not one of the pool's backends"))
    }

    /// The cookie id of the backend named `name`, as the balancer computes it.
    fn id(&self, name: &str) -> BackendId {
        sticky::backend_id(self.backend(name).address)
    }

    /// The name of the backend with cookie id `id`.
    fn name_of(&self, id: BackendId) -> &str {
        self.site
            .lab
            .backends
            .iter()
            .find(|b| sticky::backend_id(b.address) == id)
            .map(|b| b.name.as_str())
            .unwrap_or_else(|| panic!("backend id {id:#x} is not in the pool"))
    }

    /// Where the balancer re-pins `session` when only the backends named `healthy` take new
    /// users (the pool's configured weights are all equal): rendezvous of the session over them.
    fn re_pin_of(&self, session: &SessionId, healthy: &[&str]) -> String {
        let id = sticky::rendezvous(session, healthy.iter().map(|name| (self.id(name), 1)));
        self.name_of(id.unwrap()).to_owned()
    }

    fn requests(&self) -> BTreeMap<String, u64> {
        self.site
            .lab
            .backends
            .iter()
            .map(|b| (b.name.clone(), b.requests()))
            .collect()
    }
}

/// Gives `labs` the pool with the backend at `port` in `state`, every other one healthy.
fn set_state(labs: &[&L7Lab], port: u16, state: (u32, bool)) {
    for lab in labs {
        lab.set_members(POOL, |member| {
            if member.backend.port == Some(port) {
                state
            } else {
                (member.weight, member.sticky)
            }
        });
    }
}

/// The sticky counters of a proxy: (hits, new, re-pinned).
fn sticky_counts(proxy: &Proxy) -> (u64, u64, u64) {
    let c = &proxy.counters;
    (
        c.sticky_hits.load(Ordering::Relaxed),
        c.sticky_new.load(Ordering::Relaxed),
        c.sticky_repinned.load(Ordering::Relaxed),
    )
}

fn sealer(keys: &[[u8; 32]], listener: &str, cookie: &str) -> Sealer {
    Sealer::new(
        Arc::new(KeyRing::from_keys(keys).unwrap()),
        listener,
        cookie,
    )
}

/// The ticket in a `lb_sticky=VALUE` pair, opened as listener `web` with `keys` would.
fn open(keys: &[[u8; 32]], pair: &str) -> Option<Ticket> {
    let value = pair.strip_prefix("lb_sticky=").unwrap_or_else(|| {
        panic!("{pair:?} is not the balancer's cookie");
    });
    sealer(keys, LISTENER, COOKIE_NAME).open(value)
}

/// One HTTPS connection to a listener of the lab.
struct Client {
    conn: HttpsConn,
}

impl Client {
    /// Connects to the listener of `site` on `port`.
    async fn connect(site: &Site, port: u16, h2: bool) -> Self {
        Self {
            conn: site.https_to(port, h2).await,
        }
    }

    /// `GET /` with `cookie` (a `name=value` pair) if given; panics unless it is a 200 that
    /// names its backend.
    async fn get(&mut self, cookie: Option<&str>) -> Reply {
        let answer = self.conn.send(get(HOST, "/", cookie)).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        Reply::of(&answer)
    }

    /// A new session: a request without a cookie, and the cookie it set.
    async fn new_session(&mut self) -> (String, Reply) {
        let reply = self.get(None).await;
        let cookie = reply
            .cookie
            .clone()
            .unwrap_or_else(|| panic!("a request without a cookie got none: {reply:?}"));
        (cookie, reply)
    }

    /// A cookie pinned to `backend`: new sessions until one lands there.
    async fn session_on(&mut self, backend: &str) -> String {
        for _ in 0..100 {
            let (cookie, reply) = self.new_session().await;
            if reply.backend == backend {
                return cookie;
            }
        }
        panic!("100 new sessions, none on {backend}");
    }
}

/// What a test looks at in a response: who served it and the cookie it set, if any.
#[derive(Debug, Clone)]
struct Reply {
    backend: String,
    /// The `Set-Cookie`'s `name=value`.
    cookie: Option<String>,
}

impl Reply {
    fn of(answer: &Answer) -> Self {
        let backend = answer
            .backend()
            .unwrap_or_else(|| panic!("no backend named itself: {answer:?}"))
            .to_owned();
        Self {
            backend,
            cookie: answer.set_cookie(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_with_the_cookie_reach_one_backend() {
    let bed = Bed::start("pinned", 3, r#"duration = "1h""#).await;
    let mut h1 = bed.client(bed.port()).await;
    let (cookie, first) = h1.new_session().await;
    let before = bed.requests();
    let mut h2 = Client::connect(&bed.site, bed.port(), true).await;
    for i in 0..1000 {
        let client = if i % 2 == 0 { &mut h1 } else { &mut h2 };
        let reply = client.get(Some(&cookie)).await;
        assert_eq!(reply.backend, first.backend, "request {i} left its backend");
        assert_eq!(
            reply.cookie, None,
            "request {i}: a pinned user gets no new cookie"
        );
    }
    let after = bed.requests();
    for name in bed.names() {
        let expected = if name == first.backend { 1000 } else { 0 };
        assert_eq!(after[&name] - before[&name], expected, "{name}: {after:?}");
    }
    assert_eq!(
        sticky_counts(&bed.site.proxy()),
        (1000, 1, 0),
        "(hits, new, re-pinned)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cookies_users_spread_evenly_and_each_cookie_names_its_backend() {
    let bed = Bed::start("spread", 3, "").await;
    let mut client = bed.client(bed.port()).await;
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    let mut sessions = HashSet::new();
    for _ in 0..900 {
        let (cookie, reply) = client.new_session().await;
        let ticket = open(&[KEY_OLD], &cookie).expect("the balancer's own cookie opens");
        assert_eq!(
            bed.name_of(ticket.backend),
            reply.backend,
            "the cookie names the backend that served"
        );
        assert!(sessions.insert(ticket.session), "a session id came twice");
        *served.entry(reply.backend).or_default() += 1;
    }
    assert_eq!(served.len(), 3, "{served:?}");
    for (name, count) in &served {
        let share = f64::from(*count) / 900.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.05,
            "{name} took {:.1}% of new users: {served:?}",
            share * 100.0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_backend_loses_its_users_to_the_session_hash_with_a_new_cookie() {
    let bed = Bed::start("unhealthy", 3, "").await;
    let mut client = bed.client(bed.port()).await;
    let old = client.session_on("backend-1").await;
    let session = open(&[KEY_OLD], &old).unwrap().session;
    let port = bed.backend("backend-1").address.port();
    set_state(&[&bed.site.lab], port, UNHEALTHY);
    let seen = bed.backend("backend-1").requests();

    let expected = bed.re_pin_of(&session, &["backend-0", "backend-2"]);
    let moved = client.get(Some(&old)).await;
    assert_eq!(moved.backend, expected, "re-pinned by the session's hash");
    let new = moved.cookie.expect("a re-pinned user gets a new cookie");
    assert_ne!(new, old);
    let ticket = open(&[KEY_OLD], &new).unwrap();
    assert_eq!(ticket.session, session, "the session carries over");
    assert_eq!(bed.name_of(ticket.backend), expected);
    for _ in 0..20 {
        let again = client.get(Some(&old)).await;
        assert_eq!(
            again.backend, expected,
            "the old cookie re-pins alike every time"
        );
        let reply = client.get(Some(&new)).await;
        assert_eq!(
            (reply.backend.as_str(), reply.cookie),
            (expected.as_str(), None)
        );
    }
    assert_eq!(
        bed.backend("backend-1").requests(),
        seen,
        "nothing reached it while unhealthy"
    );

    // Healthy again: the new cookie stays where it is, the old one goes home.
    set_state(&[&bed.site.lab], port, (100, true));
    let reply = client.get(Some(&new)).await;
    assert_eq!(
        (reply.backend.as_str(), reply.cookie),
        (expected.as_str(), None)
    );
    let reply = client.get(Some(&old)).await;
    assert_eq!((reply.backend.as_str(), reply.cookie), ("backend-1", None));
}

/// A backend whose process dies, with no health check to say so (the lab's pools have
/// none): the user pinned to it is re-pinned by the request that found it dead, with a new
/// cookie, at the cost of one retry; new users' requests succeed on the others, one retry
/// each, until passive health ejects it after `outlier_failures` (5) failures in a row; then
/// no request tries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_without_health_checks_re_pins_its_users_and_is_ejected() {
    let bed = Bed::start("dead", 3, "").await;
    let mut client = bed.client(bed.port()).await;
    let old = client.session_on("backend-1").await;
    let session = open(&[KEY_OLD], &old).unwrap().session;
    let proxy = bed.site.proxy();
    let retries = || proxy.counters.retries.load(Ordering::Relaxed);
    let before = retries();

    bed.backend("backend-1").kill();
    let expected = bed.re_pin_of(&session, &["backend-0", "backend-2"]);
    let moved = client.get(Some(&old)).await;
    assert_eq!(moved.backend, expected, "re-pinned by the session's hash");
    let new = moved
        .cookie
        .expect("a re-pinned user gets a new cookie at once");
    assert_eq!(
        bed.name_of(open(&[KEY_OLD], &new).unwrap().backend),
        expected
    );
    assert_eq!(retries(), before + 1, "one retry");
    let reply = client.get(Some(&new)).await;
    assert_eq!(
        (reply.backend.as_str(), reply.cookie),
        (expected.as_str(), None)
    );
    assert_eq!(
        retries(),
        before + 1,
        "the new cookie goes straight to its backend"
    );

    for _ in 0..30 {
        let (_, reply) = client.new_session().await;
        assert_ne!(reply.backend, "backend-1");
    }
    assert_eq!(
        proxy.counters.outlier_ejections.load(Ordering::Relaxed),
        1,
        "ejected once"
    );
    assert_eq!(
        retries(),
        before + 5,
        "one retry per failure, none once ejected"
    );
    let ejected = proxy
        .backends()
        .members()
        .find(|u| u.address == bed.backend("backend-1").address)
        .map(|u| u.is_ejected());
    assert_eq!(ejected, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_backend_keeps_its_sessions_takes_no_new_users_and_its_removal_re_pins() {
    let bed = Bed::start("draining", 3, "").await;
    let mut client = bed.client(bed.port()).await;
    let pinned = client.session_on("backend-0").await;
    let port = bed.backend("backend-0").address.port();
    set_state(&[&bed.site.lab], port, DRAINING);

    for _ in 0..50 {
        let reply = client.get(Some(&pinned)).await;
        assert_eq!((reply.backend.as_str(), reply.cookie), ("backend-0", None));
    }
    for _ in 0..60 {
        let (_, reply) = client.new_session().await;
        assert_ne!(
            reply.backend, "backend-0",
            "a draining backend took a new user"
        );
    }

    // The drain ends: the backend leaves the pool, its users are re-pinned.
    let mut members = all_healthy(&bed.site.lab.config);
    members
        .get_mut(POOL)
        .unwrap()
        .retain(|m| m.backend.port != Some(port));
    bed.site.lab.l7.update_pools(&members);
    let session = open(&[KEY_OLD], &pinned).unwrap().session;
    let expected = bed.re_pin_of(&session, &["backend-1", "backend-2"]);
    let reply = client.get(Some(&pinned)).await;
    assert_eq!(reply.backend, expected);
    let new = reply.cookie.expect("a new cookie after the drain");
    let reply = client.get(Some(&new)).await;
    assert_eq!(
        (reply.backend.as_str(), reply.cookie),
        (expected.as_str(), None)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_cookie_is_placed_afresh_once_it_expires() {
    let bed = Bed::start("expiry", 2, r#"duration = "1s""#).await;
    let mut client = bed.client(bed.port()).await;
    let mut pinned = Vec::new();
    for _ in 0..4 {
        pinned.push(client.session_on("backend-0").await);
    }
    let answer = client.conn.send(get(HOST, "/", None)).await.unwrap();
    let header = answer.headers[SET_COOKIE].to_str().unwrap();
    assert!(header.contains("; Max-Age=1; "), "{header}");

    // A ticket set at T (Unix ms) expires at T + 1000; two seconds later it is over.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let counters = bed.site.proxy();
    let (hits, new, _) = sticky_counts(&counters);
    let mut served = BTreeMap::<String, u32>::new();
    for cookie in &pinned {
        let reply = client.get(Some(cookie)).await;
        let fresh = reply.cookie.expect("an expired cookie is replaced");
        assert_ne!(&fresh, cookie);
        assert!(
            open(&[KEY_OLD], &fresh)
                .unwrap()
                .is_live(sticky::now_unix_ms())
        );
        *served.entry(reply.backend).or_default() += 1;
    }
    assert_eq!(
        sticky_counts(&counters).0,
        hits,
        "no expired cookie was honoured"
    );
    assert_eq!(
        sticky_counts(&counters).1,
        new + 4,
        "each placed as a new user"
    );
    assert!(
        served.contains_key("backend-1"),
        "placed by balance, not pinned to backend-0: {served:?}"
    );
}

/// Cookie header values that are not a live cookie of listener `web` sealed by its keys:
/// exactly 1000, from `valid` (a cookie the balancer set) and tickets for `backends` and for
/// `outsider` (a backend outside the pool).
fn tampered_variants(valid: &str, backends: &[BackendId], outsider: BackendId) -> Vec<Vec<u8>> {
    let value = valid.strip_prefix("lb_sticky=").unwrap();
    let pair = |v: &[u8]| [b"lb_sticky=".as_slice(), v].concat();
    let sealed = URL_SAFE_NO_PAD.decode(value).unwrap();
    let mut variants = Vec::new();
    // Every bit of version, key id, random bytes, ciphertext and tag flipped in turn (616).
    for bit in 0..sealed.len() * 8 {
        let mut flipped = sealed.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        variants.push(pair(URL_SAFE_NO_PAD.encode(flipped).as_bytes()));
    }
    // Every character replaced by another of the alphabet (103).
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for position in 0..value.len() {
        let mut changed = value.as_bytes().to_vec();
        let at = ALPHABET
            .iter()
            .position(|c| *c == changed[position])
            .unwrap();
        changed[position] = ALPHABET[(at + 33) % ALPHABET.len()];
        variants.push(pair(&changed));
    }
    // Truncated, down to nothing (103), and extended (6).
    for len in 0..value.len() {
        variants.push(pair(&value.as_bytes()[..len]));
    }
    for tail in ["A", "AA", "AAA", "==", "%3D", &value[..4]] {
        variants.push(pair(format!("{value}{tail}").as_bytes()));
    }
    // Sealed right but not for this listener: a foreign key, another listener name, another
    // cookie name; expired; live but for a backend outside the pool (the one valid kind).
    let now = sticky::now_unix_ms();
    let hour = Duration::from_secs(3600);
    let foreign = sealer(&[KEY_FOREIGN], LISTENER, COOKIE_NAME);
    let other_listener = sealer(&[KEY_OLD], "api", COOKIE_NAME);
    let other_name = sealer(&[KEY_OLD], LISTENER, "srv");
    let ours = sealer(&[KEY_OLD], LISTENER, COOKIE_NAME);
    for (i, &backend) in backends
        .iter()
        .chain([&outsider])
        .cycle()
        .take(20)
        .enumerate()
    {
        let session = SessionId([u8::try_from(i).unwrap(); 16]);
        let live = Ticket::new(backend, session, now, hour);
        for s in [&foreign, &other_listener, &other_name] {
            variants.push(pair(s.seal(&live).unwrap().as_bytes()));
        }
        for expires in [0, now.saturating_sub(3_600_000), now] {
            let expired = Ticket { expires, ..live };
            variants.push(pair(ours.seal(&expired).unwrap().as_bytes()));
        }
        let outside = Ticket::new(outsider, session, now, hour);
        variants.push(pair(ours.seal(&outside).unwrap().as_bytes()));
    }
    // Odd shapes: the right cookie after a bad one (the first counts), huge, empty, quoted
    // garbage, non-ASCII.
    variants.push(format!("lb_sticky=x; {valid}").into_bytes());
    variants.push(format!("lb_sticky=; {valid}").into_bytes());
    variants.push(pair(&[b'A'; 8000]));
    variants.push(pair(b"\"\""));
    variants.push(pair(b"\"garbage\""));
    variants.push(pair("é".repeat(41).as_bytes()));
    variants.push(pair(&[0xff; 103]));
    // A first-format cookie, still read for one release, sealed by a foreign key.
    let live = Ticket::new(backends[0], SessionId([0xee; 16]), now, hour);
    variants.push(pair(seal_first_format(&KEY_FOREIGN, &live).as_bytes()));
    // Garbage up to 1000: random values of the cookie's alphabet and length, and random
    // header bytes (anything a header may hold: tab, space to '~', 0x80 to 0xff).
    let mut random = XorShift(0x5eed_cafe_f00d_d00d);
    let header_byte = |r: u64| match r % 3 {
        0 => b'\t',
        1 => u8::try_from(0x20 + r % 95).unwrap(),
        _ => u8::try_from(0x80 + r % 128).unwrap(),
    };
    while variants.len() < 1000 {
        let garbage: Vec<u8> = if variants.len() % 2 == 0 {
            (0..value.len())
                .map(|_| ALPHABET[usize::try_from(random.next() % 64).unwrap()])
                .collect()
        } else {
            let len = random.next() % 120;
            (0..len).map(|_| header_byte(random.next())).collect()
        };
        variants.push(pair(&garbage));
    }
    assert_eq!(variants.len(), 1000, "the generator went past 1000");
    variants
}

/// A small deterministic generator, so that a failing variant can be found again.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tampered_cookies_are_no_cookie_never_an_error_nor_outside_the_pool() {
    let bed = Bed::start("tampered", 3, "").await;
    let outsider = HttpBackend::start(loopback(0), "outsider", None)
        .await
        .unwrap();
    let mut client = bed.client(bed.port()).await;
    let (valid, _) = client.new_session().await;
    let ids: Vec<BackendId> = bed.names().iter().map(|n| bed.id(n)).collect();
    let variants = tampered_variants(&valid, &ids, sticky::backend_id(outsider.address));
    let pool: HashSet<String> = bed.names().into_iter().collect();
    let (mut errors, mut outside, mut kept) = (0, 0, 0);
    let mut placed = HashSet::new();
    for (i, variant) in variants.iter().enumerate() {
        let mut request = get(HOST, "/", None);
        request
            .headers_mut()
            .insert(COOKIE, HeaderValue::from_bytes(variant).unwrap());
        let answer = match client.conn.send(request).await {
            Ok(answer) if answer.status == StatusCode::OK => answer,
            other => {
                eprintln!(
                    "variant {i} {:?}: {other:?}",
                    String::from_utf8_lossy(variant)
                );
                errors += 1;
                client = bed.client(bed.port()).await;
                continue;
            }
        };
        let reply = Reply::of(&answer);
        if !pool.contains(&reply.backend) {
            outside += 1;
        }
        // A fresh cookie, live and naming the backend that served.
        let fresh = reply.cookie.as_deref().and_then(|c| open(&[KEY_OLD], c));
        match fresh {
            Some(ticket)
                if ticket.is_live(sticky::now_unix_ms())
                    && bed.name_of(ticket.backend) == reply.backend =>
            {
                placed.insert(reply.backend);
            }
            _ => {
                eprintln!(
                    "variant {i} {:?} kept as a cookie: {reply:?}",
                    String::from_utf8_lossy(variant)
                );
                kept += 1;
            }
        }
    }
    assert_eq!(
        (errors, outside, kept),
        (0, 0, 0),
        "(errors, outside the pool, honoured)"
    );
    assert_eq!(outsider.requests(), 0, "the outsider was reached");
    assert_eq!(
        placed.len(),
        3,
        "placed by balance over the pool: {placed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_key_agree_also_after_a_re_pin() {
    let bed = Bed::start("agree", 4, "").await;
    let twin = bed.twin(&bed.keys);
    let mut a = bed.client(bed.port()).await;
    let mut b = bed.client(twin.address.port()).await;

    let mut on_zero = Vec::new();
    for _ in 0..40 {
        let (cookie, reply) = a.new_session().await;
        let there = b.get(Some(&cookie)).await;
        assert_eq!(
            (there.backend.as_str(), there.cookie),
            (reply.backend.as_str(), None)
        );
        if reply.backend == "backend-0" {
            on_zero.push(cookie);
        }
    }
    for _ in 0..20 {
        let (cookie, reply) = b.new_session().await;
        let there = a.get(Some(&cookie)).await;
        assert_eq!(
            (there.backend.as_str(), there.cookie),
            (reply.backend.as_str(), None)
        );
    }
    assert!(
        on_zero.len() >= 5,
        "{} sessions on backend-0",
        on_zero.len()
    );

    // backend-0 fails, as both instances see it.
    let port = bed.backend("backend-0").address.port();
    set_state(&[&bed.site.lab, &twin.lab], port, UNHEALTHY);
    let mut targets = HashSet::new();
    for old in &on_zero {
        let session = open(&[KEY_OLD], old).unwrap().session;
        let expected = bed.re_pin_of(&session, &["backend-1", "backend-2", "backend-3"]);
        let from_a = a.get(Some(old)).await;
        let from_b = b.get(Some(old)).await;
        // B's balancing turn moves on, A's does not: placement by turn would disagree.
        b.get(None).await;
        assert_eq!(from_a.backend, expected, "A re-pins by the session's hash");
        assert_eq!(from_b.backend, expected, "B re-pins where A does");
        let new_a = from_a.cookie.expect("A sets a new cookie");
        let new_b = from_b.cookie.expect("B sets a new cookie");
        for (new, other) in [(&new_a, &mut b), (&new_b, &mut a)] {
            let reply = other.get(Some(new)).await;
            assert_eq!(
                (reply.backend.as_str(), reply.cookie),
                (expected.as_str(), None)
            );
        }
        targets.insert(expected);
    }
    assert!(!targets.contains("backend-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_sessions_and_a_retired_key_is_no_cookie() {
    let bed = Bed::start("rotation", 3, "").await;
    let dir = LabDir::new("lb-sticky-rotation-keys").unwrap();
    let rotated = write_sticky_keys(&dir, "rotated.keys", &[KEY_NEW, KEY_OLD]).unwrap();
    let retired = write_sticky_keys(&dir, "new-only.keys", &[KEY_NEW]).unwrap();
    let b = bed.twin(&rotated);
    let a2 = bed.twin(&retired);
    let mut to_a = bed.client(bed.port()).await;
    let mut to_b = bed.client(b.address.port()).await;
    let mut to_a2 = bed.client(a2.address.port()).await;

    let mut sessions = Vec::new();
    for _ in 0..10 {
        sessions.push(to_a.new_session().await);
    }
    let before = sticky_counts(&a2.proxy());
    for (cookie, first) in &sessions {
        let reply = to_b.get(Some(cookie)).await;
        assert_eq!(
            (reply.backend.as_str(), reply.cookie),
            (first.backend.as_str(), None),
            "[new, old] opens a cookie sealed with old"
        );
        let reply = to_a2.get(Some(cookie)).await;
        let fresh = reply.cookie.expect("[new] alone: no cookie, so a new one");
        assert!(open(&[KEY_NEW], &fresh).is_some());
    }
    let after = sticky_counts(&a2.proxy());
    assert_eq!(
        (after.0, after.1),
        (before.0, before.1 + 10),
        "(hits, new) on [new]"
    );

    // B seals with its first key: [new] alone opens that, [old] alone does not.
    let (from_b, placed) = to_b.new_session().await;
    assert!(open(&[KEY_NEW], &from_b).is_some());
    assert!(open(&[KEY_OLD], &from_b).is_none());
    let reply = to_a2.get(Some(&from_b)).await;
    assert_eq!(
        (reply.backend.as_str(), reply.cookie),
        (placed.backend.as_str(), None)
    );
    assert!(
        to_a.get(Some(&from_b)).await.cookie.is_some(),
        "[old] cannot open it"
    );

    // The same rotation on the running A: its users keep their backends.
    std::fs::copy(&rotated, &bed.keys).unwrap();
    bed.site.lab.l7.reload_files().unwrap();
    for (cookie, first) in &sessions {
        let reply = to_a.get(Some(cookie)).await;
        assert_eq!(
            (reply.backend.as_str(), reply.cookie),
            (first.backend.as_str(), None)
        );
    }
    let (sealed_new, _) = to_a.new_session().await;
    assert!(
        open(&[KEY_NEW], &sealed_new).is_some(),
        "A now seals with new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_cookie_carries_the_configured_attributes_and_an_opaque_value() {
    let custom = r#"
cookie = "srv_id"
duration = "90m"
path = "/app"
http_only = false
same_site = "strict"
"#;
    let plain = "secure = false\nsame_site = \"unset\"\nduration = \"7days\"\n";
    let (custom_port, plain_port) = (free_port(), free_port());
    let others = [
        ("custom", custom_port, custom),
        ("plain", plain_port, plain),
    ];
    let bed = Bed::start_with("attributes", 2, "", &others).await;

    let cases = [
        (
            bed.port(),
            "lb_sticky",
            86_400,
            "; HttpOnly; Secure; SameSite=Lax",
            "; Path=/; ",
        ),
        (
            custom_port,
            "srv_id",
            5_400,
            "; Secure; SameSite=Strict",
            "; Path=/app; ",
        ),
        (plain_port, "lb_sticky", 604_800, "; HttpOnly", "; Path=/; "),
    ];
    for (port, name, max_age, tail, path) in cases {
        let mut client = bed.client(port).await;
        let answer = client.conn.send(get(HOST, "/", None)).await.unwrap();
        let all: Vec<&str> = answer
            .headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(all.len(), 1, "{all:?}");
        let header = all[0];
        let now = sticky::now_unix_ms() / 1000;
        assert!(header.starts_with(&format!("{name}=")), "{header}");
        assert!(header.contains(path), "{header}");
        assert!(
            header.contains(&format!("; Max-Age={max_age}; ")),
            "{header}"
        );
        assert!(header.ends_with(&format!("GMT{tail}")), "{header}");
        let expires = header
            .split("; ")
            .find_map(|a| a.strip_prefix("Expires="))
            .unwrap_or_else(|| panic!("no Expires: {header}"));
        let expires = httpdate::parse_http_date(expires)
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expires.abs_diff(now + max_age) <= 2, "{header} at {now}");
    }

    // Opaque: no address, port or name in it, and each cookie is new ciphertext.
    let mut client = bed.client(bed.port()).await;
    let mut values = HashSet::new();
    for _ in 0..10 {
        let (cookie, _) = client.new_session().await;
        let value = cookie.strip_prefix("lb_sticky=").unwrap().to_owned();
        assert_eq!(value.len(), 103, "{value}");
        assert!(
            value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{value}"
        );
        for b in &bed.site.lab.backends {
            for secret in [
                b.name.clone(),
                b.address.to_string(),
                b.address.port().to_string(),
            ] {
                assert!(!value.contains(&secret), "{value} shows {secret}");
            }
        }
        assert!(!value.contains("127.0.0.1"), "{value}");
        values.insert(value);
    }
    assert_eq!(values.len(), 10, "two cookies had one value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_never_sees_the_balancers_cookie() {
    let bed = Bed::start("hidden", 2, "").await;
    let mut h1 = bed.client(bed.port()).await;
    let (cookie, first) = h1.new_session().await;
    let headers = |answer: Answer| {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        String::from_utf8(answer.body.to_vec()).unwrap()
    };
    let mixed = format!("a=1; {cookie}; lb_sticky2=keep; b=2");
    let answer = h1
        .conn
        .send(get(HOST, "/headers", Some(&mixed)))
        .await
        .unwrap();
    assert_eq!(
        answer.backend(),
        Some(first.backend.as_str()),
        "still pinned"
    );
    let seen = headers(answer);
    assert!(
        seen.contains("cookie: a=1; lb_sticky2=keep; b=2\n"),
        "{seen}"
    );
    assert!(!seen.contains("lb_sticky="), "{seen}");
    for alone in [cookie.as_str(), "lb_sticky=tampered"] {
        let answer = h1
            .conn
            .send(get(HOST, "/headers", Some(alone)))
            .await
            .unwrap();
        let seen = headers(answer);
        assert!(
            !seen.contains("cookie:"),
            "{alone:?} reached the backend: {seen}"
        );
    }

    // HTTP/2 clients may split cookies over several headers.
    let mut h2 = Client::connect(&bed.site, bed.port(), true).await;
    let mut request = get(HOST, "/headers", Some("a=1"));
    for crumb in [cookie.as_str(), "b=2"] {
        request
            .headers_mut()
            .append(COOKIE, HeaderValue::from_str(crumb).unwrap());
    }
    let answer = h2.conn.send(request).await.unwrap();
    assert_eq!(
        answer.backend(),
        Some(first.backend.as_str()),
        "still pinned"
    );
    assert!(answer.set_cookie().is_none());
    let seen = headers(answer);
    // One header for an HTTP/1.1 backend, the crumbs joined (RFC 9113 section 8.2.3).
    assert_eq!(
        seen.lines()
            .filter(|l| l.starts_with("cookie:"))
            .collect::<Vec<_>>(),
        ["cookie: a=1; b=2"],
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_listener_with_the_same_key_file_places_the_cookie_afresh() {
    let api_port = free_port();
    let bed = Bed::start_with("listeners", 2, "", &[("api", api_port, "")]).await;
    let mut web = bed.client(bed.port()).await;
    let mut api = bed.client(api_port).await;
    let counters = bed.site.proxy_of("api");
    let mut served = HashSet::new();
    for _ in 0..6 {
        let cookie = web.session_on("backend-0").await;
        let reply = api.get(Some(&cookie)).await;
        let fresh = reply.cookie.expect("web's cookie is no cookie on api");
        assert_ne!(fresh, cookie);
        served.insert(reply.backend);
        let again = api.get(Some(&fresh)).await;
        assert_eq!(again.cookie, None, "api's own cookie holds on api");
        let back = web.get(Some(&cookie)).await;
        assert_eq!((back.backend.as_str(), back.cookie), ("backend-0", None));
    }
    assert_eq!(
        sticky_counts(&counters),
        (6, 6, 0),
        "(hits, new, re-pinned) on api"
    );
    assert!(
        served.contains("backend-1"),
        "placed by balance: {served:?}"
    );
}

#[test]
fn a_duration_outside_one_second_to_seven_days_is_a_configuration_error() {
    let config = |duration: &str| {
        let mut listener = ListenerToml::new("offload", POOL);
        listener.certificates.push(("c.pem".into(), "k.pem".into()));
        listener.sticky_keys = Some("sticky.keys".into());
        listener.sticky.push(format!("duration = \"{duration}\""));
        pool_toml(POOL, &[(loopback(8080), None)]) + &listener.text(LISTENER, 8443)
    };
    for good in ["1s", "1h", "7days"] {
        let parsed = Config::parse(&config(good), "sticky.toml").unwrap();
        let sticky = parsed.listeners["web"].l7.as_ref().unwrap().sticky.as_ref();
        assert_eq!(
            sticky.unwrap().duration,
            humantime::parse_duration(good).unwrap()
        );
    }
    for bad in ["999ms", "0s", "7days 1s", "30days"] {
        let error = Config::parse(&config(bad), "sticky.toml")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("listeners.web.sticky.duration") && error.contains("out of range"),
            "{bad}: {error}"
        );
    }
}

/// `ticket` sealed for listener `web`'s `lb_sticky` in the first cookie format, which this
/// release still reads (written here from its description, not by the balancer's code):
/// base64url of 1 || nonce (12) || AES-256-GCM under `key` itself, associated data
/// "lb-sticky" || 1 || the listener's and the cookie's names, each after its length (u64 BE).
fn seal_first_format(key: &[u8; 32], ticket: &Ticket) -> String {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let mut aad = b"lb-sticky\x01".to_vec();
    for name in [LISTENER, COOKIE_NAME] {
        aad.extend_from_slice(&u64::try_from(name.len()).unwrap().to_be_bytes());
        aad.extend_from_slice(name.as_bytes());
    }
    let nonce = [0x42; 12];
    let mut body = Vec::new();
    body.extend_from_slice(&ticket.backend.to_be_bytes());
    body.extend_from_slice(&ticket.session.0);
    body.extend_from_slice(&ticket.expires.to_be_bytes());
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut body,
    )
    .unwrap();
    let sealed = [&[1][..], &nonce, &body].concat();
    URL_SAFE_NO_PAD.encode(sealed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_format_cookie_keeps_its_backend_and_comes_back_in_the_current_one_unless_too_long()
{
    let bed = Bed::start("first-format", 3, r#"duration = "1h""#).await;
    let mut client = bed.client(bed.port()).await;
    let now = sticky::now_unix_ms();
    let session = SessionId([0x5a; 16]);
    for name in ["backend-1", "backend-2"] {
        let ticket = Ticket::new(bed.id(name), session, now, Duration::from_secs(1800));
        let old = format!("lb_sticky={}", seal_first_format(&KEY_OLD, &ticket));
        let reply = client.get(Some(&old)).await;
        assert_eq!(reply.backend, name, "the first-format cookie's backend");
        let new = reply.cookie.expect("re-issued in the current format");
        let value = new.strip_prefix("lb_sticky=").unwrap();
        let opened = sealer(&[KEY_OLD], LISTENER, COOKIE_NAME)
            .open_cookie(value)
            .unwrap();
        assert!(!opened.is_legacy, "{new}");
        assert_eq!(opened.ticket.backend, bed.id(name));
        assert_eq!(opened.ticket.session, session);
        assert!(opened.ticket.expires >= now + 3_600_000, "a fresh hour");
        let again = client.get(Some(&new)).await;
        assert_eq!((again.backend.as_str(), again.cookie), (name, None));
    }
    // One that would outlive the listener's duration (an hour) is no cookie.
    let long = Ticket::new(bed.id("backend-1"), session, now, Duration::from_secs(7200));
    let old = format!("lb_sticky={}", seal_first_format(&KEY_OLD, &long));
    let placed = client.get(Some(&old)).await;
    let fresh = open(&[KEY_OLD], placed.cookie.as_deref().unwrap()).unwrap();
    assert_ne!(fresh.session, session, "placed afresh");
    let c = &bed.site.proxy().counters;
    assert_eq!(c.sticky_refreshed.load(Ordering::Relaxed), 2);
    assert_eq!(sticky_counts(&bed.site.proxy()), (4, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_past_half_its_duration_is_re_issued_unless_sliding_is_off() {
    for sliding in [true, false] {
        let lines = format!("duration = \"1h\"\nsliding = {sliding}");
        let bed = Bed::start(&format!("sliding-{sliding}"), 2, &lines).await;
        let mut client = bed.client(bed.port()).await;
        let ours = sealer(&[KEY_OLD], LISTENER, COOKIE_NAME);
        let now = sticky::now_unix_ms();
        let session = SessionId([9; 16]);
        let cookie = |minutes_left: u64| {
            let ticket = Ticket::new(
                bed.id("backend-1"),
                session,
                now,
                Duration::from_secs(60 * minutes_left),
            );
            format!("lb_sticky={}", ours.seal(&ticket).unwrap())
        };
        // 40 minutes of an hour left: not yet half; 20 left: past half.
        let early = client.get(Some(&cookie(40))).await;
        assert_eq!((early.backend.as_str(), early.cookie), ("backend-1", None));
        let late = client.get(Some(&cookie(20))).await;
        assert_eq!(late.backend, "backend-1");
        match late.cookie {
            Some(fresh) if sliding => {
                let ticket = open(&[KEY_OLD], &fresh).unwrap();
                assert_eq!(
                    (ticket.backend, ticket.session),
                    (bed.id("backend-1"), session)
                );
                assert!(
                    ticket.expires >= now + 3_600_000,
                    "a fresh hour: {ticket:?}"
                );
            }
            None if !sliding => {}
            other => panic!("sliding = {sliding}: {other:?}"),
        }
        // A draining backend keeps its sessions for their time, without a fresh one.
        let port = bed.backend("backend-1").address.port();
        set_state(&[&bed.site.lab], port, DRAINING);
        let draining = client.get(Some(&cookie(20))).await;
        assert_eq!(
            (draining.backend.as_str(), draining.cookie),
            ("backend-1", None)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cors_twin_is_set_beside_the_cookie_pins_on_its_own_and_stays_hidden() {
    let bed = Bed::start("cors", 3, "cors_cookie = true").await;
    let mut client = bed.client(bed.port()).await;
    let answer = client.conn.send(get(HOST, "/", None)).await.unwrap();
    let set: Vec<&str> = answer
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(set.len(), 2, "{set:?}");
    let (cookie, twin) = (set[0], set[1]);
    assert!(
        cookie.ends_with("; HttpOnly; Secure; SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        twin.ends_with("; HttpOnly; Secure; SameSite=None"),
        "{twin}"
    );
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("lb_sticky=")
        .unwrap();
    let twin_pair = twin.split(';').next().unwrap();
    assert_eq!(twin_pair, format!("lb_stickyCORS={value}"));
    let backend = answer.backend().unwrap().to_owned();
    // A cross-site request carries only the twin: still pinned, no new cookie, and the
    // backend sees neither.
    for _ in 0..20 {
        let answer = client
            .conn
            .send(get(HOST, "/headers", Some(&format!("a=1; {twin_pair}"))))
            .await
            .unwrap();
        assert_eq!(answer.backend(), Some(backend.as_str()));
        assert_eq!(answer.set_cookie(), None);
        let seen = String::from_utf8(answer.body.to_vec()).unwrap();
        assert!(seen.contains("cookie: a=1\n"), "{seen}");
    }
    let both = format!("lb_sticky={value}; {twin_pair}");
    let answer = client
        .conn
        .send(get(HOST, "/headers", Some(&both)))
        .await
        .unwrap();
    let seen = String::from_utf8(answer.body.to_vec()).unwrap();
    assert!(!seen.contains("cookie:"), "{seen}");
    assert_eq!(sticky_counts(&bed.site.proxy()), (21, 1, 0));
}
