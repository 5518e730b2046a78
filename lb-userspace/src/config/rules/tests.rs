use super::*;

fn headers(pairs: &[(&str, &str)]) -> hyper::HeaderMap {
    let mut map = hyper::HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn view<'a>(
    method: &'a str,
    host: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a hyper::HeaderMap,
) -> RequestView<'a> {
    RequestView {
        method,
        host,
        path,
        query,
        headers,
    }
}

fn api() -> Conditions {
    Conditions {
        hosts: vec![
            HostPattern::Exact("api.example.com".to_owned()),
            HostPattern::Wildcard(".api.example.org".to_owned()),
        ],
        paths: vec![
            PathPattern::Prefix("/v2/".to_owned()),
            PathPattern::Exact("/health".to_owned()),
        ],
        methods: vec!["GET".to_owned(), "POST".to_owned()],
        headers: vec![(
            "x-client".to_owned(),
            vec!["web".to_owned(), "app".to_owned()],
        )],
        query: vec![("beta".to_owned(), vec!["yes".to_owned()])],
    }
}

#[test]
fn every_condition_must_hold_and_any_of_its_values() {
    let c = api();
    let h = headers(&[("X-Client", "app")]);
    assert!(c.matches(&view("GET", "api.example.com", "/v2/x", "a=1&beta=yes", &h)));
    assert!(c.matches(&view("POST", "API.Example.COM", "/health", "beta=yes", &h)));
    assert!(c.matches(&view("GET", "eu.api.example.org", "/v2/", "beta=yes", &h)));
    // Each condition failing alone.
    assert!(!c.matches(&view("GET", "api.example.org", "/v2/x", "beta=yes", &h)));
    assert!(!c.matches(&view("GET", "api.example.com", "/v1/x", "beta=yes", &h)));
    assert!(!c.matches(&view("GET", "api.example.com", "/health/", "beta=yes", &h)));
    assert!(!c.matches(&view("PUT", "api.example.com", "/v2/x", "beta=yes", &h)));
    assert!(!c.matches(&view("GET", "api.example.com", "/v2/x", "beta=no", &h)));
    assert!(!c.matches(&view("GET", "api.example.com", "/v2/x", "betas=yes", &h)));
    let other = headers(&[("x-client", "cli")]);
    assert!(!c.matches(&view("GET", "api.example.com", "/v2/x", "beta=yes", &other)));
    let none = headers(&[]);
    assert!(!c.matches(&view("GET", "api.example.com", "/v2/x", "beta=yes", &none)));
    // A header sent twice: either value will do.
    let twice = headers(&[("x-client", "cli"), ("x-client", "web")]);
    assert!(c.matches(&view("GET", "api.example.com", "/v2/x", "beta=yes", &twice)));
    // No condition: every request.
    assert!(Conditions::default().matches(&view("DELETE", "x", "/", "", &none)));
}

#[test]
fn a_wildcard_takes_subdomains_only() {
    let wild = HostPattern::Wildcard(".example.com".to_owned());
    assert!(wild.matches("a.example.com"));
    assert!(wild.matches("a.b.example.com"));
    assert!(!wild.matches("example.com"));
    assert!(!wild.matches("badexample.com"));
    assert!(!wild.matches(".example.com"));
}

#[test]
fn a_rule_is_within_an_earlier_one_only_if_each_condition_is() {
    let broad = Conditions {
        paths: vec![PathPattern::Prefix("/api/".to_owned())],
        ..Conditions::default()
    };
    let narrow = Conditions {
        paths: vec![PathPattern::Prefix("/api/v2/".to_owned())],
        methods: vec!["GET".to_owned()],
        ..Conditions::default()
    };
    assert!(narrow.within(&broad));
    assert!(!broad.within(&narrow));
    assert!(
        broad.within(&Conditions::default()),
        "no condition takes all"
    );
    assert!(!Conditions::default().within(&broad));
    // Exact paths within a prefix, not the other way.
    let exact = Conditions {
        paths: vec![PathPattern::Exact("/api/x".to_owned())],
        ..Conditions::default()
    };
    assert!(exact.within(&broad));
    assert!(!broad.within(&exact));
    // Hosts: an exact name within a wildcard, a deeper wildcard within a shallower one.
    let host = |p: HostPattern| Conditions {
        hosts: vec![p],
        ..Conditions::default()
    };
    let wild = host(HostPattern::Wildcard(".example.com".to_owned()));
    assert!(host(HostPattern::Exact("a.example.com".to_owned())).within(&wild));
    assert!(host(HostPattern::Wildcard(".a.example.com".to_owned())).within(&wild));
    assert!(!wild.within(&host(HostPattern::Wildcard(".a.example.com".to_owned()))));
    assert!(!host(HostPattern::Exact("example.com".to_owned())).within(&wild));
    // Headers: fewer allowed values, or an extra header, is narrower.
    let header = |values: &[&str]| Conditions {
        headers: vec![(
            "x-a".to_owned(),
            values.iter().map(|v| (*v).to_owned()).collect(),
        )],
        ..Conditions::default()
    };
    assert!(header(&["1"]).within(&header(&["1", "2"])));
    assert!(!header(&["1", "3"]).within(&header(&["1", "2"])));
    assert!(!Conditions::default().within(&header(&["1"])));
    // Disjoint conditions: neither.
    let get = Conditions {
        methods: vec!["GET".to_owned()],
        ..Conditions::default()
    };
    let post = Conditions {
        methods: vec!["POST".to_owned()],
        ..Conditions::default()
    };
    assert!(!get.within(&post) && !post.within(&get));
    assert!(
        api().within(&api()),
        "identical rules: the second is unreachable"
    );
}

#[test]
fn within_agrees_with_matching_on_sample_requests() {
    // Whenever `a.within(b)`, every sample request `a` takes, `b` takes.
    let samples: Vec<Conditions> = vec![
        Conditions::default(),
        api(),
        Conditions {
            paths: vec![PathPattern::Prefix("/v2/".to_owned())],
            ..Conditions::default()
        },
        Conditions {
            hosts: vec![HostPattern::Wildcard(".example.org".to_owned())],
            ..Conditions::default()
        },
        Conditions {
            methods: vec!["GET".to_owned()],
            query: vec![("beta".to_owned(), vec!["yes".to_owned(), "no".to_owned()])],
            ..Conditions::default()
        },
    ];
    let h = [headers(&[]), headers(&[("x-client", "web")])];
    let mut requests = Vec::new();
    for method in ["GET", "POST"] {
        for host in ["api.example.com", "eu.api.example.org", "x.example.org"] {
            for path in ["/v2/a", "/health", "/"] {
                for query in ["", "beta=yes"] {
                    for headers in &h {
                        requests.push(view(method, host, path, query, headers));
                    }
                }
            }
        }
    }
    for a in &samples {
        for b in &samples {
            if a.within(b) {
                for request in &requests {
                    assert!(
                        !a.matches(request) || b.matches(request),
                        "{a:?} within {b:?} but {request:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn paths_are_compared_as_a_backend_would_read_them() {
    for (raw, normal) in [
        ("/", "/"),
        ("", "/"),
        ("/admin", "/admin"),
        ("/%61dmin", "/admin"),
        ("/%41%44MIN/x", "/ADMIN/x"),
        ("//admin", "/admin"),
        ("/./admin", "/admin"),
        ("/x/../admin", "/admin"),
        ("/../../admin", "/admin"),
        ("/admin/", "/admin/"),
        ("/admin/.", "/admin/"),
        ("/api/v2/..", "/api/"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb", "/a%2Fb"),
        ("/%7euser", "/~user"),
        ("/100%", "/100%"),
        ("/%zz", "/%zz"),
        ("/caf%C3%A9", "/caf%C3%A9"),
    ] {
        assert_eq!(normalize_path(raw), normal, "{raw:?}");
    }
}
