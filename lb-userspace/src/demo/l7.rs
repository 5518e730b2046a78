//! Step 4: the L7 listeners on the same VIP as the passthrough one, served by the same daemon
//! from the same configuration ([`L7Listeners`]): the XDP program hands their ports to the
//! kernel, where `lb run` terminates TLS.
//!
//! - offload (`:8443`): HTTPS requests over HTTP/2 and HTTP/1.1, proxied as plain HTTP to the
//!   backends' port 8080, spread over the backends; each backend saw the client's address in
//!   `X-Forwarded-For`;
//! - bridging (`:9443`): the same, re-encrypted to the backends' port 8443 and verified
//!   against the lab's CA and each backend's name;
//! - stickiness (offload): a user's cookie keeps every request on one backend; when that
//!   backend's server stops, its health check fails and the user is re-pinned, with a new
//!   cookie, to another backend, where it stays.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{DemoError, interrupt, print_cli};
use crate::lab::daemon::DaemonProcess;
use crate::lab::l7::{HttpsConn, get};
use crate::lab::passthrough::{CLIENT_V4, PassthroughLab, VIP_NAME, VIP_V4};
use crate::lab::side_by_side::{BACKEND_PORTS, BRIDGING_PORT, OFFLOAD_PORT, TcpCheck};
use crate::lab::{LabError, Pki};

/// Requests per listener and HTTP version.
const REQUESTS: usize = 150;
/// Requests a sticky user makes before and after its backend stops.
const STICKY_REQUESTS: usize = 100;

/// What step 4 established.
#[derive(Debug)]
pub struct L7Shown {
    /// Requests answered through offload and bridging.
    pub requests: usize,
    /// How long the sticky user took to be re-pinned once its backend stopped.
    pub repinned_after: Duration,
}

/// Runs step 4 and prints what it shows.
pub fn run(lab: &mut PassthroughLab, daemon: &DaemonProcess) -> Result<L7Shown, DemoError> {
    println!(
        "\n[4/6] TLS offload and bridging on the same VIP ({VIP_V4}:{OFFLOAD_PORT} and :{BRIDGING_PORT}), with sticky sessions"
    );
    let mut requests = 0;
    for (port, what) in [
        (
            OFFLOAD_PORT,
            "offload: TLS ends at the balancer, plain HTTP to :8080",
        ),
        (
            BRIDGING_PORT,
            "bridging: TLS ends at the balancer, verified TLS again to :8443",
        ),
    ] {
        let spread = spread(lab, port)?;
        interrupt::check()?;
        requests += spread.values().sum::<usize>();
        let counts: Vec<String> = spread.iter().map(|(b, n)| format!("{b} {n}")).collect();
        println!(
            "{what}: {} requests (HTTP/2 and HTTP/1.1) -> {}",
            2 * REQUESTS,
            counts.join(", ")
        );
        if spread.len() != lab.backends.len() {
            return Err(DemoError::Claim(format!(
                "port {port}: requests reached {} of {} backends",
                spread.len(),
                lab.backends.len()
            )));
        }
    }
    println!(
        "every backend saw X-Forwarded-For: {CLIENT_V4} (the client), X-Forwarded-Proto: https"
    );
    let repinned_after = sticky(lab)?;
    requests += 2 * STICKY_REQUESTS;
    print_cli(daemon, &["status"])?;
    Ok(L7Shown {
        requests,
        repinned_after,
    })
}

/// Requests to `port` over HTTP/2 and HTTP/1.1, by the backend that answered; each must be 200
/// and show the client in `X-Forwarded-For`.
fn spread(lab: &PassthroughLab, port: u16) -> Result<BTreeMap<String, usize>, DemoError> {
    let pki_roots = roots(&lab.pki)?;
    let answers = lab.client.block_on("demo-l7", move || async move {
        let mut answers = Vec::new();
        for h2 in [true, false] {
            let mut conn = connect(&pki_roots, port, h2).await?;
            for _ in 0..REQUESTS {
                let answer = conn.send(get(VIP_NAME, "/headers", None)).await?;
                answers.push(answer);
            }
        }
        Ok::<_, LabError>(answers)
    })??;
    let mut spread = BTreeMap::new();
    for answer in &answers {
        let body = String::from_utf8_lossy(&answer.body);
        let forwarded = format!("x-forwarded-for: {CLIENT_V4}");
        if answer.status != 200 || !body.lines().any(|line| line == forwarded) {
            return Err(DemoError::Claim(format!(
                "port {port}: an answer was {} without {forwarded:?}: {body}",
                answer.status
            )));
        }
        let backend = answer.backend().unwrap_or("(none)").to_owned();
        *spread.entry(backend).or_insert(0) += 1;
    }
    Ok(spread)
}

/// A sticky user on the offload listener: pinned; its backend stops; re-pinned.
fn sticky(lab: &mut PassthroughLab) -> Result<Duration, DemoError> {
    let pki_roots = roots(&lab.pki)?;
    let first = {
        let roots = pki_roots.clone();
        lab.client.block_on("demo-sticky", move || async move {
            let mut conn = connect(&roots, OFFLOAD_PORT, true).await?;
            let first = conn.send(get(VIP_NAME, "/", None)).await?;
            let cookie = first.set_cookie().unwrap_or_default();
            let mut backends = BTreeMap::new();
            for _ in 0..STICKY_REQUESTS {
                let answer = conn.send(get(VIP_NAME, "/", Some(&cookie))).await?;
                let backend = answer.backend().unwrap_or("(none)").to_owned();
                *backends.entry(backend).or_insert(0_usize) += 1;
            }
            Ok::<_, LabError>((first.backend().map(str::to_owned), cookie, backends))
        })??
    };
    let (Some(pinned), cookie, backends) = first else {
        return Err(DemoError::Claim(
            "the first sticky request got no answer from a backend".to_owned(),
        ));
    };
    if cookie.is_empty() || backends.len() != 1 || !backends.contains_key(&pinned) {
        return Err(DemoError::Claim(format!(
            "a user with a cookie for {pinned} was served by {backends:?}"
        )));
    }
    println!(
        "sticky: the first answer set a cookie (sealed, names no backend); {STICKY_REQUESTS} requests with it all went to {pinned}"
    );
    let Some(index) = lab.backends.iter().position(|b| b.name == pinned) else {
        return Err(DemoError::Claim(format!(
            "no lab backend is named {pinned}"
        )));
    };
    lab.stop_http_backend(index);
    let stopped = Instant::now();
    let deadline =
        TcpCheck::LAB.interval * (TcpCheck::LAB.unhealthy_threshold + 1) + Duration::from_secs(2);
    let moved = {
        lab.client.block_on("demo-repin", move || async move {
            let mut conn = connect(&pki_roots, OFFLOAD_PORT, true).await?;
            loop {
                let answer = conn.send(get(VIP_NAME, "/", Some(&cookie))).await?;
                if let Some(new_cookie) = answer.set_cookie() {
                    let new_backend = answer.backend().unwrap_or("(none)").to_owned();
                    let after = stopped.elapsed();
                    let mut stays = 0;
                    for _ in 0..STICKY_REQUESTS {
                        let again = conn.send(get(VIP_NAME, "/", Some(&new_cookie))).await?;
                        stays += usize::from(again.backend() == Some(new_backend.as_str()));
                    }
                    return Ok(Some((new_backend, after, stays)));
                }
                if stopped.elapsed() > deadline {
                    return Ok::<_, LabError>(None);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })??
    };
    lab.start_http_backend(index, BACKEND_PORTS)?;
    let Some((new_backend, after, stays)) = moved else {
        return Err(DemoError::Claim(format!(
            "the user pinned to {pinned} was not re-pinned within {deadline:?} of its server stopping"
        )));
    };
    if new_backend == pinned || stays != STICKY_REQUESTS {
        return Err(DemoError::Claim(format!(
            "re-pinned to {new_backend}, where {stays} of {STICKY_REQUESTS} requests stayed"
        )));
    }
    println!(
        "{pinned}'s server stopped: its health check failed and the user was re-pinned to {new_backend} with a new cookie after {} ms; {stays} of {STICKY_REQUESTS} requests stayed there",
        after.as_millis()
    );
    Ok(after)
}

fn roots(pki: &Pki) -> Result<rustls::RootCertStore, DemoError> {
    Ok(pki.roots()?)
}

async fn connect(
    roots: &rustls::RootCertStore,
    port: u16,
    h2: bool,
) -> Result<HttpsConn, LabError> {
    let vip = std::net::SocketAddr::new(std::net::IpAddr::V4(VIP_V4), port);
    HttpsConn::connect(vip, Some(VIP_NAME), roots, h2).await
}
