//! The L7 listeners' TLS, with real TLS clients and real HTTP, in-process on loopback: SNI
//! (each name its certificate, the default otherwise, `strict_sni` refusing), bridging's
//! verification of the backends (CA, name, validity; or none when told), the client
//! certificate presented to the backends, and `lb cert reload` (`L7::reload_files`) under load,
//! with bad files, and across established connections.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

mod common;

use std::{
    os::unix::fs::PermissionsExt as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use common::l7::{
    HOST, Mode, Setup, Site, backend_tls,
    client::{Client, Tls, request, rustls_error},
    until, within, write_issued,
};
use hyper::StatusCode;
use lb::lab::{Issued, Pki};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, UnixTime};

/// A handshake for `sni` (verified as `verify_as`) and a GET /: the certificate shown.
async fn leaf_for(run: &Site, sni: Option<&str>, verify_as: &str, h2: bool) -> Vec<u8> {
    let tls = Tls::to(verify_as, &run.roots).sni(sni).h2(h2);
    let mut client = Client::connect(run.address, &tls)
        .await
        .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}"));
    assert_eq!(client.get("/").await.status, StatusCode::OK, "SNI {sni:?}");
    client.leaf.to_vec()
}

fn der(issued: &Issued) -> Vec<u8> {
    issued.leaf_der().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_chooses_each_names_certificate_and_the_first_is_the_default() {
    let mut setup = Setup::new("lb-l7t-sni", Mode::Offload);
    let www = setup.www.clone();
    let api = setup.cert("api", &["api.example", "*.api.example"]);
    setup.plain_backend("backend-0").await;
    let run = setup.start();
    for h2 in [false, true] {
        assert_eq!(leaf_for(&run, Some(HOST), HOST, h2).await, der(&www));
        assert_eq!(
            leaf_for(&run, Some("api.example"), "api.example", h2).await,
            der(&api)
        );
        assert_eq!(
            leaf_for(&run, Some("v2.api.example"), "v2.api.example", h2).await,
            der(&api),
            "a wildcard name"
        );
        assert_eq!(
            leaf_for(&run, None, HOST, h2).await,
            der(&www),
            "no SNI: the default"
        );
        assert_eq!(
            leaf_for(&run, Some("other.example"), HOST, h2).await,
            der(&www),
            "an unknown name: the default"
        );
    }
    assert_eq!(
        run.proxy()
            .counters
            .handshake_failures
            .load(Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn strict_sni_refuses_handshakes_without_a_known_name() {
    let mut setup = Setup::new("lb-l7t-strict", Mode::Offload);
    let www = setup.www.clone();
    let api = setup.cert("api", &["api.example"]);
    setup.plain_backend("backend-0").await;
    setup.tls("strict_sni = true");
    let run = setup.start();
    assert_eq!(leaf_for(&run, Some(HOST), HOST, false).await, der(&www));
    assert_eq!(
        leaf_for(&run, Some("api.example"), "api.example", true).await,
        der(&api)
    );
    for sni in [None, Some("other.example"), Some("x.www.example")] {
        let tls = Tls::to(HOST, &run.roots).sni(sni);
        let error = Client::connect(run.address, &tls)
            .await
            .expect_err(&format!("a handshake with SNI {sni:?} was accepted"));
        assert!(
            matches!(rustls_error(&error), Some(rustls::Error::AlertReceived(_))),
            "SNI {sni:?}: the listener should refuse with an alert, got {error:?}"
        );
    }
    // The listener counts a failed handshake once it has sent its alert.
    let proxy = run.proxy();
    until("3 failed handshakes counted", || {
        proxy.counters.handshake_failures.load(Ordering::Relaxed) == 3
    })
    .await;
    assert_eq!(run.backend(0).requests(), 2, "only the accepted handshakes");
}

/// What a bridging test's backend presents.
#[derive(Clone, Copy, Debug)]
enum Presented {
    /// A certificate from the backends' CA for these names.
    Valid(&'static [&'static str]),
    /// A certificate for 127.0.0.1 from a CA the listener does not trust.
    OtherCa,
    /// A certificate from the backends' CA for 127.0.0.1 that expired in 2001.
    Expired,
}

/// A bridging listener with one backend presenting `presented` (with its own `server_name` if
/// `own_name`), and `settings` in `[backend]`.
async fn bridging_to(presented: Presented, own_name: Option<&str>, settings: &[&str]) -> Site {
    let mut setup = Setup::new("lb-l7t-bridging", Mode::Bridging);
    let issued = match presented {
        Presented::Valid(names) => setup.backend_pki.issue(names),
        Presented::OtherCa => Pki::new("another CA").expect("a CA").issue(&["127.0.0.1"]),
        Presented::Expired => setup.backend_pki.issue_expired(&["127.0.0.1"]),
    };
    let tls = backend_tls(&issued.expect("a backend certificate"));
    setup.backend("backend-0", Some(tls), own_name).await;
    for line in settings {
        setup.backend_setting(line);
    }
    setup.start()
}

/// GET / from an HTTP/1.1 and an HTTP/2 client: `expected`, and for a 502 the backend saw no
/// request bytes though the listener did connect to it.
async fn expect_from_backend(run: &Site, expected: StatusCode, what: &str) {
    for h2 in [false, true] {
        let answer = run.client(h2).await.get("/").await;
        assert_eq!(
            answer.status,
            expected,
            "{what}, h2 {h2}: {}",
            answer.text()
        );
    }
    let backend = run.backend(0);
    if expected == StatusCode::BAD_GATEWAY {
        assert_eq!(
            backend.bytes_in(),
            0,
            "{what}: request bytes reached the backend"
        );
        assert_eq!(
            backend.requests(),
            0,
            "{what}: a request reached the backend"
        );
        assert!(
            backend.seen.connections.load(Ordering::Relaxed) >= 2,
            "{what}: the listener did not even try the backend"
        );
        // A TLS 1.3 client completes its handshake before the server has checked its
        // certificate: a refused client certificate shows as a failed request instead.
        let counters = &run.proxy().counters;
        let failed = counters.backend_connect_errors.load(Ordering::Relaxed)
            + counters.backend_errors.load(Ordering::Relaxed);
        assert!(failed >= 2, "{what}: {failed} failures counted");
    } else {
        assert_eq!(backend.requests(), 2, "{what}");
    }
}

fn serving(issued: Result<Issued, lb::lab::LabError>) -> Arc<ServerConfig> {
    backend_tls(&issued.expect("a backend certificate"))
}

/// Backends whose certificate comes from another CA, holds another name, or has expired get
/// 502 and no request bytes; a valid one serves. Over both backend protocols.
#[tokio::test(flavor = "multi_thread")]
async fn bridging_refuses_backends_that_fail_verification() {
    for protocol in ["http1", "http2"] {
        let line = format!("protocol = \"{protocol}\"");
        for (what, presented, expected) in [
            (
                "a valid certificate",
                Presented::Valid(&["127.0.0.1"]),
                StatusCode::OK,
            ),
            ("another CA", Presented::OtherCa, StatusCode::BAD_GATEWAY),
            (
                "another name",
                Presented::Valid(&["127.0.0.2", "other.example"]),
                StatusCode::BAD_GATEWAY,
            ),
            (
                "an expired certificate",
                Presented::Expired,
                StatusCode::BAD_GATEWAY,
            ),
        ] {
            let run = bridging_to(presented, None, &[&line]).await;
            expect_from_backend(&run, expected, &format!("{what}, backend {protocol}")).await;
        }
    }
}

/// The name verified is the backend's own `server_name`, else the listener's, else the IP.
#[tokio::test(flavor = "multi_thread")]
async fn bridging_verifies_the_backends_name_then_the_listeners_then_the_ip() {
    let listener_name = ["server_name = \"app.example\""];
    let (ok, refused) = (StatusCode::OK, StatusCode::BAD_GATEWAY);
    let app = Presented::Valid(&["app.example"]);
    let b1 = Presented::Valid(&["b1.example"]);
    let ip = Presented::Valid(&["127.0.0.1"]);
    for (what, presented, own_name, settings, expected) in [
        ("the listener's name", app, None, &listener_name[..], ok),
        (
            "the backend's own name",
            b1,
            Some("b1.example"),
            &listener_name,
            ok,
        ),
        (
            "the listener's name where the backend names its own",
            app,
            Some("b1.example"),
            &listener_name,
            refused,
        ),
        (
            "only the IP where the listener names a name",
            ip,
            None,
            &listener_name,
            refused,
        ),
        ("the IP where nothing names a name", ip, None, &[], ok),
    ] {
        let run = bridging_to(presented, own_name, settings).await;
        expect_from_backend(&run, expected, what).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_verification_accepts_any_backend_certificate() {
    let other_ca = Pki::new("another CA").expect("CA");
    for protocol in ["http1", "http2"] {
        for (what, issued) in [
            ("another CA", other_ca.issue(&["elsewhere.example"])),
            ("expired", other_ca.issue_expired(&["127.0.0.1"])),
        ] {
            let mut setup = Setup::new("lb-l7t-skip", Mode::Bridging);
            setup
                .backend("backend-0", Some(serving(issued)), None)
                .await;
            setup.skip_verification();
            setup.backend_setting(&format!("protocol = \"{protocol}\""));
            let run = setup.start();
            expect_from_backend(&run, StatusCode::OK, &format!("{what}, {protocol}")).await;
        }
    }
}

/// A client certificate verifier that requires a certificate from its roots and records
/// every certificate it accepted.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    seen: Mutex<Vec<CertificateDer<'static>>>,
}

impl ClientCertVerifier for RecordingVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.seen
            .lock()
            .expect("not poisoned")
            .push(end_entity.clone().into_owned());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A backend configuration for `issued` that requires a client certificate from `ca`.
fn requiring_client_cert(issued: &Issued, ca: &Pki) -> (Arc<ServerConfig>, Arc<RecordingVerifier>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.ca_der()).expect("a CA");
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .expect("a client verifier");
    let verifier = Arc::new(RecordingVerifier {
        inner,
        seen: Mutex::new(Vec::new()),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(Arc::clone(&verifier) as Arc<dyn ClientCertVerifier>)
        .with_single_cert(issued.chain_der(), issued.key_der())
        .expect("a server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (Arc::new(config), verifier)
}

/// `[backend] client_cert`/`client_key`: a backend that requires a client certificate from its
/// CA sees the configured one (and serves); without one, or with one from another CA, the
/// handshake fails: 502 and no request bytes.
#[tokio::test(flavor = "multi_thread")]
async fn bridging_presents_the_configured_client_certificate() {
    let cases = [
        ("no client certificate", None, StatusCode::BAD_GATEWAY),
        ("one from another CA", Some(false), StatusCode::BAD_GATEWAY),
        ("one from the backend's CA", Some(true), StatusCode::OK),
    ];
    for protocol in ["http1", "http2"] {
        for (what, from_backend_ca, expected) in cases {
            let what = format!("{what}, backend {protocol}");
            let mut setup = Setup::new("lb-l7t-client-cert", Mode::Bridging);
            let served = setup.backend_pki.issue(&["127.0.0.1"]).expect("backend");
            let (tls, verifier) = requiring_client_cert(&served, &setup.backend_pki);
            setup.backend("backend-0", Some(tls), None).await;
            setup.backend_setting(&format!("protocol = \"{protocol}\""));
            let mut client = None;
            if let Some(from_backend_ca) = from_backend_ca {
                let signer = if from_backend_ca {
                    &setup.backend_pki
                } else {
                    &setup.pki
                };
                let issued = signer.issue(&["balancer.example"]).expect("client cert");
                let (cert, key) = write_issued(&setup.dir, "client", &issued);
                setup.backend_setting(&format!("client_cert = \"{}\"", cert.display()));
                setup.backend_setting(&format!("client_key = \"{}\"", key.display()));
                client = Some(issued);
            }
            let run = setup.start();
            expect_from_backend(&run, expected, &what).await;
            let seen = verifier.seen.lock().expect("not poisoned").clone();
            if expected == StatusCode::OK {
                let client = client.expect("a client certificate configured");
                assert!(!seen.is_empty(), "{what}: no client certificate");
                assert!(
                    seen.iter()
                        .all(|c| c.as_ref() == client.leaf_der().as_ref()),
                    "{what}: the backend saw another client certificate"
                );
            } else {
                assert!(seen.is_empty(), "{what}: accepted {seen:?}");
            }
        }
    }
}

/// Many clients doing fresh handshakes and a request each, in a loop, while the certificate
/// files get a new leaf (and new names) three times and `reload_files` runs: no handshake or
/// request fails, and every handshake begun after a reload shows that reload's leaf (or a
/// newer one).
#[tokio::test(flavor = "multi_thread")]
async fn cert_reload_under_load_fails_no_handshake() {
    const CLIENTS: usize = 16;
    const PER_ROUND: u64 = 60;
    let mut setup = Setup::new("lb-l7t-reload-load", Mode::Offload);
    let first = setup.www.clone();
    setup.plain_backend("backend-0").await;
    let run = Arc::new(setup.start());
    let mut leaves = vec![first];
    for round in 1..=3 {
        let extra = format!("new{round}.example");
        let names = [HOST, extra.as_str()];
        leaves.push(run.lab.pki.issue(&names).expect("a new leaf"));
    }
    let ders: Arc<Vec<Vec<u8>>> = Arc::new(leaves.iter().map(der).collect());
    let generation = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let (run, ders) = (Arc::clone(&run), Arc::clone(&ders));
        let (generation, done, stop) = (
            Arc::clone(&generation),
            Arc::clone(&done),
            Arc::clone(&stop),
        );
        workers.spawn(async move {
            // (generation when the handshake began, generation of the leaf it showed)
            let mut seen = Vec::new();
            let mut failures = Vec::new();
            let tls = Tls::to(HOST, &run.roots).h2(i % 2 == 0);
            while !stop.load(Ordering::Acquire) {
                let began = generation.load(Ordering::Acquire);
                match Client::connect(run.address, &tls).await {
                    Ok(mut client) => {
                        let shown = ders.iter().position(|d| d[..] == client.leaf[..]);
                        match client.fetch(request("GET", "/", "")).await {
                            Ok(a) if a.status == StatusCode::OK => {}
                            Ok(a) => failures.push(format!("status {}", a.status)),
                            Err(e) => failures.push(format!("request: {e}")),
                        }
                        seen.push((began, shown));
                    }
                    Err(e) => failures.push(format!("handshake: {e}")),
                }
                done.fetch_add(1, Ordering::AcqRel);
            }
            (seen, failures)
        });
    }
    let wait_for = |target: u64| {
        let done = Arc::clone(&done);
        within("handshakes under load", async move {
            while done.load(Ordering::Acquire) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    wait_for(PER_ROUND).await;
    for (round, leaf) in leaves.iter().enumerate().skip(1) {
        run.rewrite_cert("www", leaf);
        let summary = run.lab.l7.reload_files().expect("a reload of good files");
        assert!(
            summary
                .iter()
                .any(|s| s.contains(&format!("new{round}.example"))),
            "{summary:?}"
        );
        generation.store(round, Ordering::Release);
        let so_far = done.load(Ordering::Acquire);
        wait_for(so_far + PER_ROUND).await;
    }
    stop.store(true, Ordering::Release);
    let mut per_generation = [0_u32; 4];
    let mut total = 0;
    while let Some(joined) = workers.join_next().await {
        let (seen, failures) = joined.expect("a client task");
        assert!(failures.is_empty(), "failures under reload: {failures:?}");
        for (began, shown) in seen {
            let shown = shown.expect("a leaf of none of the generations");
            assert!(
                shown >= began,
                "a handshake begun after reload {began} showed the leaf of generation {shown}"
            );
            per_generation[shown] += 1;
            total += 1;
        }
    }
    assert!(
        per_generation.iter().all(|n| *n > 0),
        "every generation served: {per_generation:?}"
    );
    assert_eq!(
        run.proxy()
            .counters
            .handshake_failures
            .load(Ordering::Relaxed),
        0
    );
    assert!(total >= 4 * PER_ROUND, "{total} handshakes");
}

/// A reload adds names: with `strict_sni`, a name refused before is served after.
#[tokio::test(flavor = "multi_thread")]
async fn cert_reload_serves_new_names() {
    let mut setup = Setup::new("lb-l7t-reload-names", Mode::Offload);
    setup.plain_backend("backend-0").await;
    setup.tls("strict_sni = true");
    let run = setup.start();
    let new_name = Tls::to("new.example", &run.roots);
    assert!(
        Client::connect(run.address, &new_name).await.is_err(),
        "new.example served before the reload"
    );
    let next = run
        .lab
        .pki
        .issue(&[HOST, "new.example"])
        .expect("a new leaf");
    run.rewrite_cert("www", &next);
    let summary = run.lab.l7.reload_files().expect("a reload");
    assert_eq!(summary, ["web: www.example, new.example"]);
    assert_eq!(
        leaf_for(&run, Some("new.example"), "new.example", true).await,
        der(&next)
    );
    assert_eq!(leaf_for(&run, Some(HOST), HOST, false).await, der(&next));
}

/// A new certificate that cannot be used is refused by the reload with an error naming the
/// file, and the old certificate keeps serving; a good one then loads.
#[tokio::test(flavor = "multi_thread")]
async fn a_bad_certificate_is_refused_by_reload_and_the_old_one_keeps_serving() {
    let mut setup = Setup::new("lb-l7t-reload-bad", Mode::Offload);
    let good = setup.www.clone();
    setup.plain_backend("backend-0").await;
    let run = setup.start();
    let (cert, key) = (
        run.lab.dir.path.join("www.pem"),
        run.lab.dir.path.join("www.key"),
    );
    let other = run.lab.pki.issue(&[HOST]).expect("another leaf");
    let write = |path: &std::path::Path, content: &[u8]| {
        std::fs::write(path, content).expect("writing");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };
    let cases: [(&str, &dyn Fn(), &std::path::Path, &str); 5] = [
        (
            "a key that does not match",
            &|| write(&cert, other.chain_pem().as_bytes()),
            &key,
            "does not match",
        ),
        (
            "a key others may read",
            &|| {
                run.rewrite_cert("www", &other);
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
                    .expect("chmod");
            },
            &key,
            "chmod 600",
        ),
        (
            "a garbage certificate",
            &|| write(&cert, b"garbage\n"),
            &cert,
            "holds no PEM certificate",
        ),
        (
            "a garbage key",
            &|| {
                write(
                    &key,
                    b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                )
            },
            &key,
            "is not a usable private key",
        ),
        (
            "an expired certificate",
            &|| {
                let expired = run.lab.pki.issue_expired(&[HOST]).expect("expired");
                run.rewrite_cert("www", &expired);
            },
            &cert,
            "has expired",
        ),
    ];
    for (what, spoil, named, reason) in cases {
        spoil();
        let error = run
            .lab
            .l7
            .reload_files()
            .expect_err(&format!("{what} was loaded"))
            .to_string();
        assert!(
            error.contains(&format!("{}: ", named.display())) && error.contains(reason),
            "{what}: {error}"
        );
        for h2 in [false, true] {
            assert_eq!(
                leaf_for(&run, Some(HOST), HOST, h2).await,
                der(&good),
                "{what}: the old certificate no longer serves"
            );
        }
        run.rewrite_cert("www", &good);
    }
    run.rewrite_cert("www", &other);
    run.lab.l7.reload_files().expect("a good reload");
    assert_eq!(leaf_for(&run, Some(HOST), HOST, false).await, der(&other));
}

/// Connections established before a reload, and a request in flight during it, carry on.
#[tokio::test(flavor = "multi_thread")]
async fn established_connections_keep_working_across_a_reload() {
    let mut setup = Setup::new("lb-l7t-reload-established", Mode::Offload);
    let old = setup.www.clone();
    setup.plain_backend("backend-0").await;
    let run = setup.start();
    let mut h1 = run.client(false).await;
    let mut h2 = run.client(true).await;
    assert_eq!(h1.get("/").await.status, StatusCode::OK);
    assert_eq!(h2.get("/").await.status, StatusCode::OK);
    let mut slow = run.client(true).await;
    let in_flight = tokio::spawn(async move { slow.get("/delay?ms=300").await.status });
    tokio::time::sleep(Duration::from_millis(50)).await;

    let next = run.lab.pki.issue(&[HOST]).expect("a new leaf");
    run.rewrite_cert("www", &next);
    run.lab.l7.reload_files().expect("a reload");

    assert_eq!(h1.leaf.as_ref(), der(&old).as_slice());
    for _ in 0..3 {
        assert_eq!(h1.get("/").await.status, StatusCode::OK, "HTTP/1.1");
        assert_eq!(h2.get("/").await.status, StatusCode::OK, "HTTP/2");
    }
    let status = within("the request in flight", in_flight)
        .await
        .expect("its task");
    assert_eq!(status, StatusCode::OK, "the request in flight");
    assert_eq!(leaf_for(&run, Some(HOST), HOST, true).await, der(&next));
}

/// `lb cert reload` reads the backends' CA bundle again: a backend refused under the old
/// bundle is served under the new one.
#[tokio::test(flavor = "multi_thread")]
async fn cert_reload_reads_the_backend_ca_bundle_again() {
    let mut setup = Setup::new("lb-l7t-reload-ca", Mode::Bridging);
    setup.tls_backend("backend-0", &["127.0.0.1"]).await;
    // The bundle starts with the wrong CA: the listener's.
    std::fs::write(&setup.backend_ca, setup.pki.ca_pem()).expect("writing the CA");
    let run = setup.start();
    let mut client = run.client(false).await;
    assert_eq!(client.get("/").await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(run.backend(0).requests(), 0);
    std::fs::write(&run.backend_ca, run.backend_pki.ca_pem()).expect("writing the CA");
    run.lab.l7.reload_files().expect("a reload");
    assert_eq!(client.get("/").await.status, StatusCode::OK);
    assert_eq!(run.backend(0).requests(), 1);
}

/// TLS 1.2 and 1.3 by default; `min_version = "1.3"` refuses a TLS 1.2-only client.
#[tokio::test(flavor = "multi_thread")]
async fn tls_versions_follow_min_version() {
    for (min_version, tls12_served) in [(None, true), (Some("1.3"), false)] {
        let mut setup = Setup::new("lb-l7t-versions", Mode::Offload);
        setup.plain_backend("backend-0").await;
        if let Some(min) = min_version {
            setup.tls(&format!("min_version = \"{min}\""));
        }
        let run = setup.start();
        let mut client = run.client(true).await;
        assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(client.get("/").await.status, StatusCode::OK);
        let tls12 = Tls::to(HOST, &run.roots).tls12_only();
        match Client::connect(run.address, &tls12).await {
            Ok(mut client) => {
                assert!(
                    tls12_served,
                    "min_version {min_version:?}: TLS 1.2 was accepted"
                );
                assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_2));
                assert_eq!(client.get("/").await.status, StatusCode::OK);
            }
            Err(error) => assert!(
                !tls12_served,
                "min_version {min_version:?}: TLS 1.2 was refused: {error}"
            ),
        }
    }
}

/// `lb cert reload` that takes a CA out of the backends' bundle: the next request is verified
/// under the new bundle, not sent on a pooled (HTTP/1.1) or shared (HTTP/2) connection that was
/// verified under the old one.
#[tokio::test(flavor = "multi_thread")]
async fn cert_reload_stops_trusting_backend_connections_of_a_removed_ca() {
    for protocol in ["http1", "http2"] {
        let mut setup = Setup::new("lb-l7t-reload-distrust", Mode::Bridging);
        setup.tls_backend("backend-0", &["127.0.0.1"]).await;
        setup.backend_setting(&format!("protocol = \"{protocol}\""));
        let run = setup.start();
        let mut client = run.client(false).await;
        assert_eq!(client.get("/").await.status, StatusCode::OK, "{protocol}");
        // An HTTP/1.1 connection goes back to the pool on a task of its own: let it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(&run.backend_ca, run.lab.pki.ca_pem()).expect("writing the CA");
        run.lab.l7.reload_files().expect("a reload");
        let answer = client.get("/").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_GATEWAY,
            "{protocol}: a backend no longer trusted was sent a request"
        );
        assert_eq!(run.backend(0).requests(), 1, "{protocol}");
    }
}
