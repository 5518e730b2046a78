//! Routing rules on an L7 listener of a running daemon, through real HTTPS clients and the
//! lab's HTTP backends: the first rule that matches wins, every action does what it says
//! (fixed response, redirect, forward with header edits, weighted pools with a sticky cookie
//! of the rule's own), the CLI lists the rules and simulates a request, and `lb reload` changes
//! the rules live; a reload with an unreachable rule changes nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test panics with a message; helpers here are part of the tests"
)]

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use lb::lab::{
    l7::{Answer, HttpsConn, LabDir},
    passthrough::{VIP_NAME, backend_v4},
    side_by_side::{BACKEND_PORTS, OFFLOAD_LISTENER, OFFLOAD_PORT},
};
use lb_tests::side_by_side::{L7Env, in_client, vip};

/// The rules' pools (no health check: they take requests at once): blue (backends 0 and 1),
/// green and api (backend 2), and `api_pool` (backend 1) if it is another; and the rules.
fn rules(api_pool: &str, with_maintenance: bool) -> String {
    let port = BACKEND_PORTS.plain;
    let mut pools = vec![("blue", vec![0, 1]), ("green", vec![2]), ("api", vec![2])];
    if !pools.iter().any(|(name, _)| *name == api_pool) {
        pools.push((api_pool, vec![1]));
    }
    let mut text = String::new();
    for (name, members) in pools {
        let members: Vec<String> = members
            .iter()
            .map(|&i| format!("{{ address = \"{}\", port = {port} }}", backend_v4(i)))
            .collect();
        text.push_str(&format!(
            "\n[pools.{name}]\nbackends = [{}]\nhealth_check = false\n",
            members.join(", ")
        ));
    }
    let rule = |body: &str| format!("\n[[listeners.{OFFLOAD_LISTENER}.rules]]\n{body}\n");
    if with_maintenance {
        text.push_str(&rule(
            "name = \"maintenance\"\npath = [\"/maintenance\"]\n\
             fixed_response = { status = 503, content_type = \"text/plain\", body = \"back soon\\n\" }",
        ));
    }
    text.push_str(&rule(
        "name = \"moved\"\npath_prefix = [\"/old/\"]\nredirect = { status = 301, path = \"/new\", query = \"\" }",
    ));
    text.push_str(&rule(&format!(
        "name = \"api\"\npath = [\"/headers\"]\nmethod = [\"GET\"]\nheader = {{ \"x-client\" = \"web\" }}\n\
         pool = \"{api_pool}\"\nrequest_headers = {{ set = {{ \"x-route\" = \"api\" }}, remove = [\"x-debug\"] }}\n\
         response_headers = {{ add = {{ \"x-rule\" = \"api\" }} }}"
    )));
    text.push_str(&rule(
        "name = \"canary\"\nquery = { \"canary\" = \"1\" }\n\
         pools = [{ pool = \"blue\", weight = 2 }, { pool = \"green\", weight = 1 }]",
    ));
    text
}

/// `GET path` with `headers`.
fn get(path: &str, headers: &[(&str, &str)]) -> hyper::Request<Full<Bytes>> {
    let mut builder = hyper::Request::get(format!("https://{VIP_NAME}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Sends each request on one HTTPS connection from the client namespace.
fn send(l7: &L7Env, requests: Vec<hyper::Request<Full<Bytes>>>) -> Vec<Answer> {
    let roots = l7.roots();
    in_client(&l7.lab().client, "routing", move || async move {
        let mut conn = HttpsConn::connect(vip(OFFLOAD_PORT), Some(VIP_NAME), &roots, false)
            .await
            .expect("connecting");
        let mut answers = Vec::new();
        for request in requests {
            answers.push(conn.send(request).await.expect("an answer"));
        }
        answers
    })
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.headers.get(name).and_then(|v| v.to_str().ok())
}

fn body(answer: &Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// The value of request header `name` as the backend echoed it (`GET /headers`).
fn seen(answer: &Answer, name: &str) -> Option<String> {
    body(answer).lines().find_map(|line| {
        let (key, value) = line.split_once(": ")?;
        key.eq_ignore_ascii_case(name).then(|| value.to_owned())
    })
}

#[test]
fn rules_route_in_order_and_change_live_through_reload() {
    let dir = LabDir::new("lbtroute").unwrap();
    let log = dir.path.join("access.log");
    let section = format!("\n[access_log]\npath = \"{}\"\n", log.display());
    let mut l7 = L7Env::start("lbtroute", 3, |config| {
        config + &section + &rules("api", true)
    });
    let backend = |i: usize| format!("backend-{i}");

    // Each action, and the order: the first rule that matches takes the request.
    let answers = send(
        &l7,
        vec![
            get("/maintenance", &[]),
            get("/old/page?x=1", &[]),
            get("/headers", &[("x-client", "web"), ("x-debug", "1")]),
            get("/headers", &[("x-client", "cli")]),
            get("/maintenance?canary=1", &[]),
            get("/%6daintenance", &[]),
            get("//x/../maintenance", &[]),
        ],
    );
    let [fixed, moved, api, default, first_wins, encoded, dotted] = &answers[..] else {
        panic!("seven answers: {answers:?}");
    };
    assert_eq!(
        (encoded.status.as_u16(), dotted.status.as_u16()),
        (503, 503),
        "no other spelling slips past"
    );
    assert_eq!(fixed.status, 503);
    assert_eq!(body(fixed), "back soon\n");
    assert_eq!(header(fixed, "content-type"), Some("text/plain"));
    assert_eq!(fixed.backend(), None, "the balancer answered itself");
    assert_eq!(moved.status, 301);
    assert_eq!(
        header(moved, "location"),
        Some(format!("https://{VIP_NAME}/new").as_str())
    );
    assert_eq!(api.status, 200);
    assert_eq!(api.backend(), Some(backend(2).as_str()), "pool api");
    assert_eq!(
        seen(api, "x-route").as_deref(),
        Some("api"),
        "{}",
        body(api)
    );
    assert_eq!(seen(api, "x-debug"), None, "removed before the backend");
    assert_eq!(header(api, "x-rule"), Some("api"));
    assert_eq!(default.status, 200);
    assert_eq!(seen(default, "x-route"), None, "no rule: no edits");
    assert_eq!(header(default, "x-rule"), None);
    assert_eq!(first_wins.status, 503, "maintenance comes before canary");
    // The access log names the rule of each request.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let rules_logged = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let rules: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["rule"].clone())
            .collect();
        if rules.len() >= 7 || std::time::Instant::now() > deadline {
            break rules;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        rules_logged,
        ["maintenance", "moved", "api"]
            .iter()
            .map(|r| serde_json::json!(r))
            .chain([serde_json::Value::Null])
            .chain(["maintenance"; 3].iter().map(|r| serde_json::json!(r)))
            .collect::<Vec<_>>()
    );

    // Weighted pools, 2:1: new users go to blue's two backends and green's one in that
    // proportion, each pool in its own turn (requests elsewhere, in between, move none of
    // it); a user's cookie (the rule's own) keeps its pool and backend.
    let mut canary = Vec::new();
    for i in 0..30 {
        canary.push(get("/?canary=1", &[]));
        if i % 4 == 0 {
            canary.push(get("/headers", &[("x-client", "web")]));
        }
    }
    let answers: Vec<Answer> = send(&l7, canary)
        .into_iter()
        .filter(|a| header(a, "x-rule").is_none())
        .collect();
    let mut spread = BTreeMap::new();
    for answer in &answers {
        *spread
            .entry(answer.backend().unwrap_or("none").to_owned())
            .or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = [(backend(0), 10), (backend(1), 10), (backend(2), 10)]
        .into_iter()
        .collect();
    assert_eq!(spread, expected);
    let cookie = answers[0].set_cookie().expect("a sticky cookie");
    assert!(
        cookie.contains("-canary="),
        "the rule's own cookie: {cookie}"
    );
    let pinned_to = answers[0].backend().unwrap().to_owned();
    let again: Vec<_> = (0..8)
        .map(|_| get("/?canary=1", &[("cookie", cookie.as_str())]))
        .collect();
    for answer in send(&l7, again) {
        assert_eq!(answer.backend(), Some(pinned_to.as_str()), "pinned");
    }

    // The balancer's cookies never reach a backend, whichever rule takes the request.
    let own = send(&l7, vec![get("/", &[])]);
    let listener_cookie = own[0].set_cookie().expect("the listener's own cookie");
    assert!(!listener_cookie.contains("-canary="), "{listener_cookie}");
    let mixed = format!("{listener_cookie}; app=1; {cookie}");
    let answer = send(
        &l7,
        vec![get("/headers?canary=1", &[("cookie", mixed.as_str())])],
    );
    assert_eq!(answer[0].backend(), Some(pinned_to.as_str()));
    assert_eq!(
        seen(&answer[0], "cookie").as_deref(),
        Some("app=1"),
        "{}",
        body(&answer[0])
    );

    // The CLI: the rules in order, and where a request would go.
    let listed = l7.env.cli_ok(&["listener", "rules", OFFLOAD_LISTENER]);
    println!("{listed}");
    let order: Vec<&str> = ["maintenance", "moved", "api", "canary", "(default)"]
        .into_iter()
        .filter(|name| listed.contains(name))
        .collect();
    assert_eq!(order.len(), 5, "{listed}");
    let positions: Vec<usize> = order.iter().map(|n| listed.find(n).unwrap()).collect();
    assert!(positions.is_sorted(), "{listed}");
    let url = format!("https://{VIP_NAME}/headers");
    let simulated = l7.env.cli_ok(&[
        "simulate",
        "--listener",
        OFFLOAD_LISTENER,
        "--url",
        &url,
        "-H",
        "x-client: web",
    ]);
    println!("{simulated}");
    assert!(simulated.contains("rule:     api"), "{simulated}");
    assert!(
        simulated.contains(&format!("{}:{}", backend_v4(2), BACKEND_PORTS.plain)),
        "{simulated}"
    );
    let unmatched = l7.env.cli_ok(&[
        "simulate",
        "--listener",
        OFFLOAD_LISTENER,
        "--url",
        &url,
        "--method",
        "POST",
    ]);
    assert!(
        unmatched.contains("(none: the listener's pool)"),
        "{unmatched}"
    );
    let refused = l7
        .env
        .cli(&["simulate", "--listener", "tls4", "--url", &url]);
    assert!(
        !refused.success && refused.stderr.contains("passthrough"),
        "{}",
        refused.stderr
    );

    // A reload: maintenance gone, api moved to a new pool, fresh (backend 1).
    let path = l7.env.daemon.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap();
    let base = &text[..text.find("\n[pools.blue]").expect("the rules' part")];
    std::fs::write(&path, format!("{base}{}", rules("fresh", false))).unwrap();
    l7.env.cli_ok(&["reload"]);
    let answers = send(
        &l7,
        vec![
            get("/maintenance", &[]),
            get("/headers", &[("x-client", "web")]),
        ],
    );
    assert_eq!(answers[0].status, 200, "no maintenance rule any more");
    assert_eq!(
        answers[1].backend(),
        Some(backend(1).as_str()),
        "api now on fresh"
    );

    // A reload with a rule no request reaches is refused, and the rules stay.
    let good = std::fs::read_to_string(&path).unwrap();
    let unreachable = format!(
        "{good}\n[[listeners.{OFFLOAD_LISTENER}.rules]]\nname = \"late\"\npath = [\"/old/x\"]\npool = \"green\"\n"
    );
    std::fs::write(&path, unreachable).unwrap();
    let run = l7.env.cli(&["reload"]);
    assert!(
        !run.success && run.stderr.contains("\"late\" is unreachable"),
        "{}",
        run.stderr
    );
    std::fs::write(&path, good).unwrap();
    let answers = send(&l7, vec![get("/headers", &[("x-client", "web")])]);
    assert_eq!(answers[0].backend(), Some(backend(1).as_str()));
    l7.env.stop_cleanly();
}
