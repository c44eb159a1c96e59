//! Templates: a subject, a plain-text body and an HTML body per event type (minijinja; the HTML
//! is escaped). The operator overrides any of them with files in `notifier.templates_dir`
//! named `<event type>.subject`, `<event type>.txt` and `<event type>.html`.

use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

/// A notice rendered for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line.
    pub subject: String,
    /// Plain text.
    pub text: String,
    /// HTML.
    pub html: String,
}

const FOOTER_TXT: &str = "\n--\npvefleet{% if console_url %} · {{ console_url }}{% endif %}\n";
const FOOTER_HTML: &str = "<hr><p style=\"color:#666\">pvefleet{% if console_url %} · <a href=\"{{ console_url }}\">console</a>{% endif %}</p>";

/// The built-in (subject, text body) of an event type; the HTML body is made from the text.
fn builtin(event_type: &str) -> (&'static str, &'static str) {
    match event_type {
        "site.provisioned" => (
            "Your site {{ subdomain }} is ready",
            "Your site {{ subdomain }} is ready{% if site_url %} at {{ site_url }}{% endif %}.\n\nIt runs in container {{ vmid }} on {{ node }}.",
        ),
        "site.provision_failed" => (
            "Your site {{ subdomain }} could not be created",
            "Creating the site {{ subdomain }} failed at {{ failed_step }}: {{ error.message }}\n\nEverything it had was removed; you can ask for it again.",
        ),
        "site.deprovisioned" => (
            "Your site {{ subdomain }} was removed",
            "The site {{ subdomain }} and its container were removed.",
        ),
        "saga.suspended" => (
            "[pvefleet] saga {{ saga_id }} suspended at {{ step }}",
            "The {{ kind }} saga {{ saga_id }} stopped at {{ step }} after its re-sends: {{ error.message }} ({{ error.code }}).\n\nLook with: pvefleet saga show {{ saga_id }}\nThen: pvefleet saga retry-step {{ saga_id }}, resume, or abort.",
        ),
        "saga.compensation_failed" => (
            "[pvefleet] saga {{ saga_id }}: compensation failed at {{ step }}",
            "Undoing the {{ kind }} saga {{ saga_id }} gave up at {{ step }}: {{ error.message }} ({{ error.code }}).\nSomething it built may be left behind.\n\nLook with: pvefleet saga show {{ saga_id }}",
        ),
        "message.parked" => (
            "[pvefleet] {{ message_type or 'a message' }} parked from {{ queue }}",
            "A {{ message_type or 'message' }} from {{ queue }} was parked ({{ fault_class }}).\nGroup: {{ group }}\n\nLook with: pvefleet dlq show {{ dead_letter_id }}\nReplay with: pvefleet dlq replay {{ dead_letter_id }}",
        ),
        "resource.alert" => (
            "[pvefleet] {{ subject }} {{ kind }} {{ state }}{% if state == 'raised' %} at {{ (value or 0)|round(1) }}%{% endif %}",
            "{{ subject }}: {{ kind }} {% if state == 'raised' %}is at {{ (value or 0)|round(1) }}%, at or above {{ threshold }}%{% else %}is back at {{ (value or 0)|round(1) }}%, below {{ threshold }}%{% endif %}.",
        ),
        "backup.verified" => (
            "[pvefleet] backup of {{ subdomain or site_id }} {% if outcome == 'ok' %}verified{% else %}failed its verification{% endif %}",
            "{% if outcome == 'ok' %}The backup {{ volid }} of {{ subdomain or site_id }} restored, started and answered its probe.{% else %}The backup {{ volid }} of {{ subdomain or site_id }} failed its verification restore: {{ error }}\n\nIt may not restore when it is needed. Take a new one with: pvefleet site backup {{ site_id }} --wait{% endif %}",
        ),
        "notify.test" => (
            "[pvefleet] test notice",
            "This is a test notice from pvefleet: {{ message }}",
        ),
        _ => ("[pvefleet] {{ event_type }}", "{{ event_type }}: {{ event }}"),
    }
}

fn env(templates: Option<&Path>, event_type: &str) -> Result<Environment<'static>, String> {
    let mut env = Environment::new();
    // A field an event lacks renders empty, never fails the notice.
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    let (subject, text) = builtin(event_type);
    let read = |ext: &str| -> Result<Option<String>, String> {
        let Some(dir) = templates else { return Ok(None) };
        let path = dir.join(format!("{event_type}.{ext}"));
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read the template {}: {e}", path.display())),
        }
    };
    let subject = read("subject")?.unwrap_or_else(|| subject.to_string());
    let text_body = read("txt")?.unwrap_or_else(|| text.to_string());
    let html = read("html")?.unwrap_or_else(|| {
        // The text, each line a line of HTML; escaped as an HTML template.
        let lines: Vec<String> = text.lines().map(|l| format!("{l}<br>")).collect();
        format!("<p>{}</p>", lines.join("\n"))
    });
    for (name, source) in [
        ("subject.txt", subject),
        ("body.txt", format!("{text_body}{FOOTER_TXT}")),
        ("body.html", format!("{html}{FOOTER_HTML}")),
    ] {
        env.add_template_owned(name.to_string(), source)
            .map_err(|e| format!("{event_type} template {name}: {e}"))?;
    }
    Ok(env)
}

/// Renders a notice of `event_type` with `vars`.
pub fn render(
    templates: Option<&Path>,
    event_type: &str,
    vars: &Map<String, Value>,
    console_url: &str,
) -> Result<Rendered, String> {
    let env = env(templates, event_type)?;
    let mut ctx = vars.clone();
    ctx.insert("event_type".into(), Value::from(event_type));
    ctx.insert("event".into(), Value::Object(vars.clone()));
    ctx.insert("console_url".into(), Value::from(console_url));
    let ctx = minijinja::Value::from_serialize(&ctx);
    let one = |name: &str| -> Result<String, String> {
        env.get_template(name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| format!("{event_type} template {name}: {e}"))
    };
    Ok(Rendered {
        subject: one("subject.txt")?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        text: one("body.txt")?,
        html: one("body.html")?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn every_builtin_renders_and_html_is_escaped() {
        let v = vars(json!({
            "subdomain": "blog<script>", "site_url": "https://blog.example.org", "vmid": 101, "node": "pve1",
        }));
        let r = render(None, "site.provisioned", &v, "").unwrap();
        assert_eq!(r.subject, "Your site blog<script> is ready");
        assert!(r.text.contains("https://blog.example.org"), "{}", r.text);
        assert!(r.html.contains("blog&lt;script&gt;"), "{}", r.html);
        for t in [
            "site.provision_failed",
            "site.deprovisioned",
            "saga.suspended",
            "saga.compensation_failed",
            "message.parked",
            "resource.alert",
            "backup.verified",
            "notify.test",
            "something.else",
        ] {
            assert!(render(None, t, &Map::new(), "https://console").is_ok(), "{t}");
        }
    }

    #[test]
    fn an_operators_template_overrides_the_builtin_and_a_broken_one_is_named() {
        let dir = std::env::temp_dir().join(format!("pvefleet-tpl-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("site.provisioned.subject"), "Welcome to {{ subdomain }}!").unwrap();
        let r = render(
            Some(&dir),
            "site.provisioned",
            &vars(json!({ "subdomain": "blog" })),
            "",
        )
        .unwrap();
        assert_eq!(r.subject, "Welcome to blog!");
        std::fs::write(dir.join("site.provisioned.txt"), "{% if %}").unwrap();
        let e = render(Some(&dir), "site.provisioned", &Map::new(), "").unwrap_err();
        assert!(e.contains("body.txt"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
