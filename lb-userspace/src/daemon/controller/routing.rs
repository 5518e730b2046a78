//! The L7 listeners' routing rules as the CLI sees them: `lb listener rules` and `lb simulate
//! --url`.

use hyper::header::{HeaderName, HeaderValue};

use super::Controller;
use crate::{
    config::{ListenerConfig, rules::HeaderEdits},
    control::{HttpSimulationView, RuleView, RulesView},
    datapath::Datapath,
    l7::route::{Facts, Route, Routes},
};

impl<D: Datapath> Controller<D> {
    /// The L7 listener `name`, or why there is none.
    fn l7_listener(&self, name: &str) -> Result<&ListenerConfig, String> {
        match self.config.listeners.get(name) {
            Some(listener) if listener.l7.is_some() => Ok(listener),
            Some(_) => Err(format!(
                "listener {name:?} is a passthrough listener: it never sees HTTP, so it has no \
                 rules (`lb simulate CLIENT VIP` shows where a flow goes)"
            )),
            None => Err(format!(
                "no listener is named {name:?}; `lb listener list` shows them"
            )),
        }
    }

    pub(super) fn rules_view(&self, name: &str) -> Result<RulesView, String> {
        let listener = self.l7_listener(name)?;
        let rules = listener.l7.iter().flat_map(|l7| &l7.rules);
        Ok(RulesView {
            listener: name.to_owned(),
            rules: rules
                .enumerate()
                .map(|(i, rule)| RuleView {
                    position: i + 1,
                    name: rule.name.clone(),
                    conditions: rule.describe_conditions(),
                    action: rule.describe_action(),
                    headers: describe_edits(&rule.request_headers, &rule.response_headers),
                })
                .collect(),
            default_pool: listener.pool.clone(),
        })
    }

    /// Where a request `method url` with `headers` to listener `name` would go now.
    pub(super) fn simulate_http(
        &self,
        name: &str,
        method: &str,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<HttpSimulationView, String> {
        let listener = self.l7_listener(name)?;
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        if uri.authority().is_none() {
            return Err(format!(
                "{url:?} names no host: give the whole URL, https://HOST/PATH"
            ));
        }
        let method: hyper::Method = method
            .parse()
            .map_err(|_| format!("{method:?} is not a method"))?;
        let mut request = hyper::Request::builder().method(method).uri(uri);
        for (header, value) in headers {
            let header = HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("{header:?} is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("{value:?} is not a header value"))?;
            request = request.header(header, value);
        }
        let request = request.body(()).map_err(|e| e.to_string())?;
        let facts = Facts::of(&request);
        let view = facts.view(request.headers());
        // The running listener's routes (their turns are the ones requests take); the
        // configuration's if it is not running.
        let proxy = self
            .l7
            .as_ref()
            .and_then(|l7| l7.proxies().into_iter().find(|p| p.name == name));
        let site = proxy.as_ref().map(|proxy| proxy.site());
        let settings = listener.l7.as_ref().ok_or("not an L7 listener")?;
        let fresh;
        let (routes, rules) = match &site {
            Some(site) => (&site.routes, &site.settings.rules[..]),
            None => {
                fresh = Routes::new(&listener.pool, settings);
                (&fresh, &settings.rules[..])
            }
        };
        let route = routes.route(rules, &view);
        let rule = route.rule().map(|rule| rule.name.clone());
        let (action, pool, backend) = match route {
            Route::Forward(forward) => {
                let action = match forward.rule {
                    Some(rule) => rule.describe_action(),
                    None => format!("forward to pool {} (no rule takes it)", listener.pool),
                };
                let placed = proxy.as_ref().and_then(|proxy| proxy.peek(&forward));
                let pool = placed
                    .as_ref()
                    .map(|(pool, _)| pool.clone())
                    .or_else(|| forward.pools.first().map(|p| p.pool.clone()));
                (action, pool, placed.map(|(_, backend)| backend))
            }
            Route::Redirect(_, rule) | Route::Fixed(_, rule) => {
                (rule.describe_action(), None, None)
            }
        };
        Ok(HttpSimulationView {
            listener: name.to_owned(),
            rule,
            action,
            pool,
            backend,
        })
    }
}

/// A rule's header changes in words.
fn describe_edits(request: &HeaderEdits, response: &HeaderEdits) -> String {
    let mut parts = Vec::new();
    for (side, edits) in [("request", request), ("response", response)] {
        for (name, value) in &edits.set {
            parts.push(format!("{side} set {name}: {value}"));
        }
        for (name, value) in &edits.add {
            parts.push(format!("{side} add {name}: {value}"));
        }
        for name in &edits.remove {
            parts.push(format!("{side} remove {name}"));
        }
    }
    parts.join("; ")
}
