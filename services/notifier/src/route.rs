//! Routes: which notices go to whom, on which channels. The configured routes, or the built-in
//! ones when none are configured; every route that matches a notice adds its deliveries, and
//! each (channel, target) is delivered once.

use pvefleet_core::config::{NotifierSettings, NotifyRoute};

use crate::notice::Notice;

/// Where an owner's notices go (`owner_contacts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerContacts {
    /// E-mail address.
    pub email: Option<String>,
    /// Webhook endpoint.
    pub webhook_url: Option<String>,
}

/// One delivery: a channel and its target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// `operator` or `owner`.
    pub audience: &'static str,
    /// `email`, `webhook`, `ntfy`, `alertmanager`.
    pub channel: &'static str,
    /// The address, webhook (an operator endpoint's name, or `owner:<owner>`), topic URL, or
    /// Alertmanager URL.
    pub target: String,
}

/// The channels.
pub const CHANNELS: &[&str] = &["email", "webhook", "ntfy", "alertmanager"];

fn route(events: &[&str], severities: &[&str], audience: &str, channels: &[&str]) -> NotifyRoute {
    NotifyRoute {
        events: events.iter().map(|s| s.to_string()).collect(),
        severities: severities.iter().map(|s| s.to_string()).collect(),
        audience: audience.into(),
        channels: channels.iter().map(|s| s.to_string()).collect(),
    }
}

/// The built-in routes: owners hear about their sites; operators about alerts, stopped sagas,
/// parked messages and failed sites; alerts go to Alertmanager too.
pub fn builtin() -> Vec<NotifyRoute> {
    vec![
        route(
            &["site.provisioned", "site.provision_failed", "site.deprovisioned"],
            &[],
            "owner",
            &["email", "webhook"],
        ),
        route(
            &[
                "resource.alert",
                "saga.suspended",
                "saga.compensation_failed",
                "message.parked",
                "site.provision_failed",
                "notify.test",
            ],
            &[],
            "operator",
            &["email", "webhook", "ntfy"],
        ),
        // A failed verification is told; a good one only resolves the alert.
        route(
            &["backup.verified"],
            &["critical"],
            "operator",
            &["email", "webhook", "ntfy"],
        ),
        route(&["backup.verified"], &[], "operator", &["alertmanager"]),
        route(
            &["resource.alert", "saga.suspended", "saga.compensation_failed"],
            &[],
            "operator",
            &["alertmanager"],
        ),
    ]
}

fn matches(pattern: &str, event: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event.starts_with(prefix),
        None => pattern == event,
    }
}

/// Checks configured routes: known audiences and channels. Names the route and the value.
pub fn check(routes: &[NotifyRoute]) -> Result<(), String> {
    for (i, r) in routes.iter().enumerate() {
        if r.audience != "operator" && r.audience != "owner" {
            return Err(format!(
                "notifier.routes[{i}].audience: '{}' is not operator or owner",
                r.audience
            ));
        }
        if let Some(c) = r.channels.iter().find(|c| !CHANNELS.contains(&c.as_str())) {
            return Err(format!(
                "notifier.routes[{i}].channels: unknown channel '{c}'; known: {}",
                CHANNELS.join(", ")
            ));
        }
        if let Some(s) = r
            .severities
            .iter()
            .find(|s| !["info", "warning", "critical"].contains(&s.as_str()))
        {
            return Err(format!(
                "notifier.routes[{i}].severities: '{s}' is not info, warning or critical"
            ));
        }
        if r.events.is_empty() {
            return Err(format!("notifier.routes[{i}].events: name at least one event type"));
        }
    }
    Ok(())
}

/// The deliveries of a notice: every matching route's channels, for its audience's targets.
/// A channel with no target (no SMTP, no address) adds nothing.
pub fn targets(s: &NotifierSettings, notice: &Notice, owner: Option<&OwnerContacts>) -> Vec<Target> {
    let routes = if s.routes.is_empty() {
        builtin()
    } else {
        s.routes.clone()
    };
    let mut out: Vec<Target> = Vec::new();
    for r in routes.iter().filter(|r| {
        r.events.iter().any(|p| matches(p, &notice.event_type))
            && (r.severities.is_empty() || r.severities.iter().any(|x| x == notice.severity.as_str()))
    }) {
        for channel in r.channels.iter().filter_map(|c| CHANNELS.iter().find(|k| **k == c)) {
            let found: Vec<Target> = match (r.audience.as_str(), *channel) {
                ("owner", "email") => owner
                    .and_then(|o| o.email.clone())
                    .filter(|_| !s.smtp.host.is_empty())
                    .into_iter()
                    .map(|a| target("owner", "email", a))
                    .collect(),
                ("owner", "webhook") => match (owner.and_then(|o| o.webhook_url.as_ref()), &notice.owner) {
                    (Some(_), Some(name)) => vec![target("owner", "webhook", format!("owner:{name}"))],
                    _ => Vec::new(),
                },
                ("operator", "email") if !s.smtp.host.is_empty() => s
                    .operator
                    .email
                    .iter()
                    .map(|a| target("operator", "email", a.clone()))
                    .collect(),
                ("operator", "webhook") => s
                    .operator
                    .webhooks
                    .iter()
                    .map(|w| target("operator", "webhook", w.name.clone()))
                    .collect(),
                ("operator", "ntfy") if !s.operator.ntfy.url.is_empty() => {
                    vec![target("operator", "ntfy", s.operator.ntfy.url.clone())]
                }
                ("operator", "alertmanager") if notice.alert.is_some() && !s.operator.alertmanager_url.is_empty() => {
                    vec![target("operator", "alertmanager", s.operator.alertmanager_url.clone())]
                }
                _ => Vec::new(),
            };
            for t in found {
                if !out.iter().any(|o| o.channel == t.channel && o.target == t.target) {
                    out.push(t);
                }
            }
        }
    }
    out
}

fn target(audience: &'static str, channel: &'static str, target: String) -> Target {
    Target {
        audience,
        channel,
        target,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use pvefleet_contracts::Message;
    use pvefleet_contracts::messages::{MessageParked, ResourceAlert, SiteProvisioned};
    use pvefleet_core::config::WebhookEndpoint;

    fn settings() -> NotifierSettings {
        let mut s = NotifierSettings::default();
        s.smtp.host = "127.0.0.1".into();
        s.operator.email = vec!["ops@example.org".into()];
        s.operator.webhooks = vec![WebhookEndpoint {
            name: "ops".into(),
            url: "http://127.0.0.1:1/hook".into(),
            secret_file: None,
        }];
        s.operator.alertmanager_url = "http://127.0.0.1:9093".into();
        s
    }

    #[test]
    fn owners_hear_about_their_sites_and_operators_about_what_needs_them() {
        let s = settings();
        let site = crate::notice::SiteInfo {
            owner: "alice".into(),
            subdomain: "blog".into(),
            ..Default::default()
        };
        let n = crate::notice::provisioned(&s, &SiteProvisioned::example(), Some(&site), Some("blog.example.org"));
        let contacts = OwnerContacts {
            email: Some("alice@example.org".into()),
            webhook_url: Some("http://127.0.0.1:2/alice".into()),
        };
        let got = targets(&s, &n, Some(&contacts));
        assert_eq!(
            got,
            vec![
                target("owner", "email", "alice@example.org".into()),
                target("owner", "webhook", "owner:alice".into()),
            ],
            "not the operators"
        );
        let got = targets(&s, &crate::notice::parked(&MessageParked::example()), None);
        assert_eq!(
            got,
            vec![
                target("operator", "email", "ops@example.org".into()),
                target("operator", "webhook", "ops".into())
            ]
        );
        let got = targets(&s, &crate::notice::alert(&ResourceAlert::example()), None);
        assert!(got.iter().any(|t| t.channel == "alertmanager"), "{got:?}");
    }

    #[test]
    fn configured_routes_replace_the_builtin_ones_and_are_checked() {
        let mut s = settings();
        s.routes = vec![route(&["resource.*"], &["critical"], "operator", &["email"])];
        let mut e = ResourceAlert::example();
        assert!(targets(&s, &crate::notice::alert(&e), None).is_empty(), "a warning");
        e.value = 99.0;
        assert_eq!(targets(&s, &crate::notice::alert(&e), None).len(), 1);
        assert!(targets(&s, &crate::notice::parked(&MessageParked::example()), None).is_empty());
        assert!(check(&s.routes).is_ok());
        let bad = vec![route(&["x"], &[], "operator", &["pager"])];
        assert!(check(&bad).unwrap_err().contains("pager"));
        let bad = vec![route(&["x"], &[], "everyone", &["email"])];
        assert!(check(&bad).unwrap_err().contains("audience"));
        assert_eq!(MessageParked::TYPE, "message.parked");
    }
}
