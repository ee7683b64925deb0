//! The console's pages, rendered on the server (maud escapes every value it writes). Pages
//! work without JavaScript; the inbox's script only adds new alerts as they arrive.

use std::net::IpAddr;

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::chart;
use crate::store::query::{StoredAction, StoredAlert, StoredFlows, Traffic, TrafficKey};

/// A page in the console's frame: navigation, the session's CSRF token for forms.
#[must_use]
pub fn layout(title: &str, csrf: Option<&str>, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Vigil" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Vigil" }
                    @if let Some(csrf) = csrf {
                        nav {
                            a href="/" { "Inbox" }
                            a href="/?status=all" { "All alerts" }
                            a href="/traffic" { "Traffic" }
                            a href="/blocks" { "Blocks" }
                            a href="/health" { "Health" }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form; `password`: a password is set, so the field takes it or the token.
#[must_use]
pub fn login(password: bool, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        &html! {
            h1 { "Log in" }
            @if let Some(e) = error { p.error { (e) } }
            form method="post" action="/login" {
                label for="token" { @if password { "Password or console token" } @else { "Console token" } }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                button type="submit" { "Log in" }
            }
            p.hint { "The token is in the file named by " code { "console.token_file" } " (mode 0600)." }
        },
    )
}

fn time(ms: i64) -> String {
    crate::clock::rfc3339_millis(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

fn ip_link(ip: Option<IpAddr>) -> Markup {
    if let Some(ip) = ip {
        html! { a.host href={ "/hosts/" (ip) } { (ip) } }
    } else {
        html! { "-" }
    }
}

/// The inbox's filter, as the query string carries it.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct InboxQuery {
    pub severity: Option<String>,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub kind: Option<String>,
    /// An attack kind of the ATT&CK table (`scan`, `password-guessing`, ...).
    pub attack: Option<String>,
    /// An ATT&CK technique or sub-technique id (`T1046`, `T1110.001`).
    pub technique: Option<String>,
    /// `inbox` (new and acknowledged, the default), `new`, `acknowledged`, `archived`, `all`.
    pub status: Option<String>,
}

impl InboxQuery {
    /// The query string that gives this filter again (for the live stream).
    #[must_use]
    pub fn to_query(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("severity", &self.severity),
            ("source", &self.source),
            ("destination", &self.destination),
            ("kind", &self.kind),
            ("attack", &self.attack),
            ("technique", &self.technique),
            ("status", &self.status),
        ] {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                let encoded: String = v
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-_.:".contains(&b) {
                            char::from(b).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                parts.push(format!("{k}={encoded}"));
            }
        }
        parts.join("&")
    }
}

/// Alerts of one source (or destination) and kind, newest first.
pub struct Group<'a> {
    pub alerts: Vec<&'a StoredAlert>,
}

/// Groups a page of alerts (newest first) by who and what, keeping the order of each group's
/// newest alert.
#[must_use]
pub fn group(alerts: &[StoredAlert]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut index: std::collections::HashMap<(Option<IpAddr>, Option<IpAddr>, &str), usize> =
        std::collections::HashMap::new();
    for a in alerts {
        let who = if a.source.is_some() { (a.source, None) } else { (None, a.destination) };
        let key = (who.0, who.1, a.kind.as_str());
        if let Some(&i) = index.get(&key) {
            groups[i].alerts.push(a);
        } else {
            index.insert(key, groups.len());
            groups.push(Group { alerts: vec![a] });
        }
    }
    groups
}

/// An alert's attack kind and its ATT&CK technique (the sub-technique where there is one),
/// from its document; `None` for documents from before alerts carried them.
fn attack_of(a: &StoredAlert) -> Option<(String, Option<String>)> {
    let doc: Value = serde_json::from_str(&a.document).ok()?;
    let kind = doc["vigil"]["attack"]["kind"].as_str()?.to_owned();
    let technique = &doc["threat"]["technique"];
    let id = technique["subtechnique"]["id"].as_str().or_else(|| technique["id"].as_str()).map(str::to_owned);
    Some((kind, id))
}

/// One inbox row: an alert (the newest of its group) and how many more the group holds.
#[must_use]
pub fn alert_row(a: &StoredAlert, more: usize, csrf: &str) -> Markup {
    let destination = match (a.destination, a.destination_port) {
        (Some(d), Some(p)) => html! { (ip_link(Some(d))) ":" (p) },
        (d, _) => ip_link(d),
    };
    html! {
        tr.alert data-id=(a.id) data-status=(a.status) {
            td.time { (time(a.time_ms)) }
            td { span class={ "severity " (a.severity.name()) } { (a.severity.name()) } }
            td.kind {
                @if let Some((kind, technique)) = attack_of(a) {
                    (kind) @if let Some(t) = technique { " · " (t) }
                } @else { (a.kind) }
            }
            td { (ip_link(a.source)) " → " (destination) }
            td.score { (a.score.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}"))) }
            td.message {
                a href={ "/alerts/" (a.id) } { (a.message) }
                @if more > 0 { " " span.more title="more alerts of this source and kind on this page" { "+" (more) } }
            }
            td.status { (a.status) }
            td.actions {
                @if a.status == "new" {
                    form method="post" action={ "/alerts/" (a.id) "/acknowledged" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Acknowledge" }
                    }
                }
                @if a.status != "archived" {
                    form method="post" action={ "/alerts/" (a.id) "/archived" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Archive" }
                    }
                }
            }
        }
    }
}

#[must_use]
pub fn inbox(alerts: &[StoredAlert], q: &InboxQuery, csrf: &str, error: Option<&str>) -> Markup {
    let groups = group(alerts);
    let selected = |current: &Option<String>, value: &str| current.as_deref().unwrap_or("") == value;
    layout(
        "Inbox",
        Some(csrf),
        &html! {
            h1 { "Alerts" }
            form.filters method="get" action="/" {
                label { "Severity "
                    select name="severity" {
                        @for (value, name) in [("", "any"), ("low", "low and above"), ("medium", "medium and above"), ("high", "high")] {
                            option value=(value) selected[selected(&q.severity, value)] { (name) }
                        }
                    }
                }
                label { "Source " input type="text" name="source" placeholder="address or prefix" value=(q.source.as_deref().unwrap_or("")); }
                label { "Destination " input type="text" name="destination" placeholder="address or prefix" value=(q.destination.as_deref().unwrap_or("")); }
                label { "Kind " input type="text" name="kind" placeholder="e.g. anomalous-flows" value=(q.kind.as_deref().unwrap_or("")); }
                label { "Attack "
                    select name="attack" {
                        option value="" selected[selected(&q.attack, "")] { "any" }
                        @for k in &crate::alert::attack::KINDS {
                            option value=(k.name) selected[selected(&q.attack, k.name)] { (k.name) }
                        }
                    }
                }
                label { "ATT&CK " input type="text" name="technique" placeholder="e.g. T1046" size="10" value=(q.technique.as_deref().unwrap_or("")); }
                label { "Status "
                    select name="status" {
                        @for (value, name) in [("", "inbox (not archived)"), ("new", "new"), ("acknowledged", "acknowledged"), ("archived", "archived"), ("all", "all")] {
                            option value=(value) selected[selected(&q.status, value)] { (name) }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if let Some(e) = error { p.error { (e) } }
            table #inbox data-stream={ "/events?" (q.to_query()) } {
                thead { tr { th { "Time (UTC)" } th { "Severity" } th { "Kind" } th { "Source → destination" } th { "Score" } th { "Message" } th { "Status" } th {} } }
                tbody {
                    @for g in &groups {
                        (alert_row(g.alerts[0], g.alerts.len() - 1, csrf))
                    }
                }
            }
            @if alerts.is_empty() { p #empty { "No alerts match." } }
            p.hint { "New alerts appear at the top as the agent raises them (with JavaScript on); " span #shown { (alerts.len()) } " shown, newest first." }
        },
    )
}

/// The explanation as bars: each feature's share of the score, with its value and baseline.
fn explanation(doc: &Value) -> Markup {
    let features = doc["vigil"]["explanation"].as_array().cloned().unwrap_or_default();
    let bar_h = 22;
    let height = bar_h * features.len().max(1) + 4;
    html! {
        svg.explanation width="640" height=(height) viewBox={ "0 0 640 " (height) } role="img" aria-label="explanation" {
            @for (i, f) in features.iter().enumerate() {
                @let share = f["share"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
                @let y = i * bar_h + 2;
                text x="0" y=(y + 15) { (f["feature"].as_str().unwrap_or("?")) }
                rect x="200" y=(y + 3) width=(format!("{:.1}", share * 260.0)) height="14" class="bar" {}
                text x=(format!("{:.1}", 206.0 + share * 260.0)) y=(y + 15) class="share" { (format!("{:.0}%", share * 100.0)) }
                text x="520" y=(y + 15) class="value" {
                    (format_number(&f["value"])) " vs " (format_number(&f["baseline"]))
                }
            }
        }
    }
}

fn format_number(v: &Value) -> String {
    v.as_f64().map_or_else(
        || v.to_string(),
        |x| if x.fract() == 0.0 && x.abs() < 1e12 { format!("{x:.0}") } else { format!("{x:.3}") },
    )
}

/// The top flow's counters, both directions.
fn top_flow(doc: &Value) -> Markup {
    let flow = &doc["vigil"]["top_flow"];
    if flow.is_null() {
        return html! {};
    }
    let side = |v: &Value, key: &str| format_number(&v[key]);
    let (i, r) = (&flow["initiator"], &flow["responder"]);
    html! {
        h2 { "Top conversation" }
        p {
            (flow["initiator_ip"].as_str().unwrap_or("?")) ":" (side(flow, "initiator_port")) " → "
            (flow["responder_ip"].as_str().unwrap_or("?")) ":" (side(flow, "responder_port"))
            " · protocol " (side(flow, "protocol"))
            @if let Some(state) = flow["conn_state"].as_str() { " · state " (state) }
        }
        table.counters {
            thead { tr { th {} th { "initiator" } th { "responder" } } }
            tbody {
                @for key in ["packets", "bytes", "len_min", "len_max", "ttl_min", "ttl_max", "malformed"] {
                    tr { th { (key) } td { (side(i, key)) } td { @if r.is_null() { "-" } @else { (side(r, key)) } } }
                }
                @for flag in ["syn", "syn_ack", "ack", "fin", "rst", "psh"] {
                    tr { th { "tcp " (flag) } td { (side(&i["tcp_flags"], flag)) } td { @if r.is_null() { "-" } @else { (side(&r["tcp_flags"], flag)) } } }
                }
            }
        }
    }
}

#[must_use]
pub fn alert_detail(a: &StoredAlert, csrf: &str) -> Markup {
    let doc: Value = serde_json::from_str(&a.document).unwrap_or(Value::Null);
    let pretty = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| a.document.clone());
    let score = &doc["vigil"]["score"];
    layout(
        &format!("Alert {}", a.event_id),
        Some(csrf),
        &html! {
            h1 { span class={ "severity " (a.severity.name()) } { (a.severity.name()) } " " (a.message) }
            table.facts {
                tr { th { "Time" } td { (time(a.time_ms)) } }
                tr { th { "Kind" } td { (a.kind) } }
                @if let Some(kind) = doc["vigil"]["attack"]["kind"].as_str() {
                    tr { th { "Attack" } td {
                        (kind)
                        @if let Some(t) = doc["threat"]["technique"]["id"].as_str() {
                            " — " (doc["threat"]["tactic"]["name"].as_str().unwrap_or("")) ": " (t) " " (doc["threat"]["technique"]["name"].as_str().unwrap_or(""))
                            @if let Some(sub) = doc["threat"]["technique"]["subtechnique"]["id"].as_str() {
                                ", " (sub) " " (doc["threat"]["technique"]["subtechnique"]["name"].as_str().unwrap_or(""))
                            }
                        }
                        " (from the " (doc["vigil"]["attack"]["from"].as_str().unwrap_or("evidence")) ")"
                    } }
                }
                tr { th { "Source" } td { (ip_link(a.source)) } }
                tr { th { "Destination" } td { (ip_link(a.destination)) @if let Some(p) = a.destination_port { ":" (p) } } }
                tr { th { "Score" } td {
                    "combined " (format_number(&score["combined"]))
                    " (forest " (format_number(&score["iforest"])) ", autoencoder " (format_number(&score["autoencoder"]))
                    ", range " (format_number(&score["range"])) "); alert at " (format_number(&score["alert_threshold"]))
                    ", block at " (format_number(&score["block_threshold"]))
                } }
                tr { th { "Fired" } td {
                    @let fired: Vec<&str> = score["fired"].as_array().map(|v| v.iter().filter_map(|m| m.as_str()).collect()).unwrap_or_default();
                    @if fired.is_empty() { "—" } @else { (fired.join(", ")) }
                    @if let Some(kind) = score["classifier"]["kind"].as_str() {
                        "; classifier: " (kind) " " (format_number(&score["classifier"]["kind_probability"]))
                        ", some attack " (format_number(&score["classifier"]["attack_probability"]))
                    }
                } }
                tr { th { "Model" } td { (a.model_phase) " " code { (a.model_sha256.get(..12).unwrap_or(&a.model_sha256)) } } }
                tr { th { "Sensor" } td { (a.host) } }
                tr { th { "Event id" } td { code { (a.event_id) } } }
                tr { th { "Status" } td #status { (a.status) } }
            }
            div.actions {
                @for (status, label) in [("acknowledged", "Acknowledge"), ("archived", "Archive"), ("new", "Mark new")] {
                    @if a.status != status {
                        form method="post" action={ "/alerts/" (a.id) "/" (status) } {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { (label) }
                        }
                    }
                }
            }
            h2 { "Why: the features behind the score" }
            p.hint { "Each bar is the feature's share of the score; beside it, the flow's value against the model's baseline." }
            (explanation(&doc))
            (top_flow(&doc))
            h2 { "ECS document" }
            pre.document { (pretty) }
        },
    )
}

#[must_use]
pub fn host(
    ip: IpAddr,
    alerts: &[StoredAlert],
    out: &[StoredFlows],
    inbound: &[StoredFlows],
    actions: &[StoredAction],
    over_time: Option<(i64, i64, &[u64], &[u64])>,
    csrf: &str,
) -> Markup {
    let flows_table = |rows: &[StoredFlows], peer_is_source: bool| {
        html! {
            table.flows {
                thead { tr { th { @if peer_is_source { "Source" } @else { "Destination" } } th { "Service" } th { "Conversations" } th { "Packets" } th { "Bytes" } th { "Anomalous" } } }
                tbody {
                    @for f in rows {
                        tr {
                            td { (ip_link(if peer_is_source { f.source } else { f.destination })) }
                            td { (agent_common::proto::name(f.protocol)) "/" (f.port) }
                            td { (f.flows) } td { (f.packets) } td { (chart::bytes(f.bytes)) } td { (f.anomalous) }
                        }
                    }
                }
            }
        }
    };
    layout(
        &ip.to_string(),
        Some(csrf),
        &html! {
            h1 { "Host " (ip) }
            @if let Some((start_minute, step_minutes, sent, received)) = over_time {
                h2 { "Bytes over the last 24 h" }
                (chart::stacked_columns(
                    "bytes of the conversations it started and of those started with it",
                    &[
                        chart::Stack { label: "it started".into(), values: sent },
                        chart::Stack { label: "started with it".into(), values: received },
                    ],
                    &[],
                    start_minute,
                    step_minutes,
                ))
                p.legend { span.swatch.c0 {} " conversations it started " span.swatch.c1 {} " conversations others started with it (bytes of both directions)" }
            }
            h2 { "Alerts (last 24 h, newest first)" }
            @if alerts.is_empty() { p { "None." } } @else {
                table #host-alerts { tbody { @for a in alerts { (alert_row(a, 0, csrf)) } } }
            }
            h2 { "Its peers and services: what it started (last 24 h, most bytes first)" }
            (flows_table(out, false))
            h2 { "Who talked to it (last 24 h, most bytes first)" }
            (flows_table(inbound, true))
            h2 { "Block actions" }
            @if actions.is_empty() { p { "None." } } @else {
                ul { @for b in actions { li { (time(b.time_ms)) " " (b.action) " " (b.prefix.as_deref().unwrap_or("-")) " " (b.reason.as_deref().unwrap_or("")) } } }
            }
        },
    )
}

/// The traffic page's window, as the query string carries it.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct TrafficQuery {
    pub window: Option<String>,
}

/// The windows the traffic page offers, with their length in minutes. Each is drawn as 60
/// columns.
pub const WINDOWS: [(&str, i64); 4] = [("1h", 60), ("6h", 360), ("24h", 1440), ("7d", 10_080)];

/// A series' name as people read it.
#[must_use]
pub fn key_label(key: &TrafficKey) -> String {
    match key {
        TrafficKey::Host(ip) => ip.to_string(),
        TrafficKey::Service { protocol, port } if *port == 0 => agent_common::proto::name(*protocol).to_string(),
        TrafficKey::Service { protocol, port } => format!("{}/{port}", agent_common::proto::name(*protocol)),
    }
}

/// The traffic page: for each of top talkers, destinations and services, bytes over the
/// window as stacked columns and the busiest keys with their totals.
#[must_use]
pub fn traffic(window: &str, sections: &[(&str, &str, Traffic)], csrf: &str) -> Markup {
    layout(
        "Traffic",
        Some(csrf),
        &html! {
            h1 { "Traffic" }
            nav.windows {
                "Window: "
                @for (name, _) in WINDOWS {
                    @if name == window { strong { (name) } } @else { a href={ "/traffic?window=" (name) } { (name) } }
                    " "
                }
            }
            @for (title, id, t) in sections {
                section id=(id) {
                    h2 { (title) }
                    @let labels: Vec<String> = t.series.iter().map(|s| key_label(&s.key)).collect();
                    @let stacks: Vec<chart::Stack<'_>> = t.series.iter().zip(&labels)
                        .map(|(s, l)| chart::Stack { label: l.clone(), values: &s.bytes }).collect();
                    (chart::stacked_columns(title, &stacks, &t.other, t.start_minute, t.step_minutes))
                    @if t.series.is_empty() {
                        p { "No traffic recorded in this window." }
                    } @else {
                        table.top {
                            thead { tr { th {} th { "Who" } th { "Bytes" } th { "Conversations" } th { "Anomalous" } } }
                            tbody {
                                @for (i, (s, label)) in t.series.iter().zip(&labels).enumerate() {
                                    tr {
                                        td { span class={ "swatch " (chart::SERIES_CLASSES[i % chart::SERIES_CLASSES.len()]) } {} }
                                        td {
                                            @if let TrafficKey::Host(ip) = s.key { (ip_link(Some(ip))) } @else { (label) }
                                        }
                                        td { (chart::bytes(s.total_bytes)) } td { (s.flows) } td { (s.anomalous) }
                                    }
                                }
                                tr { td { span.swatch.other {} } td { "everything else" } td { (chart::bytes(t.other.iter().sum())) } td {} td {} }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// The message of an error page.
#[must_use]
pub fn error(status: u16, message: &str, csrf: Option<&str>) -> Markup {
    layout(
        &status.to_string(),
        csrf,
        &html! { h1 { (status) } p.error { (message) } p { a href="/" { "Back to the inbox" } } },
    )
}

/// The blocks page: the kernel's rules (or why they cannot be read), the form to add one,
/// and the history of block actions.
#[must_use]
pub fn blocks(
    rules: &Result<Vec<crate::control::RuleView>, String>,
    history: &[StoredAction],
    notice: Option<(bool, &str)>,
    csrf: &str,
) -> Markup {
    layout(
        "Blocks",
        Some(csrf),
        &html! {
            h1 { "Blocks" }
            @if let Some((ok, text)) = notice { p class=(if ok { "notice" } else { "error" }) #notice { (text) } }
            h2 { "Rules in the kernel" }
            @match rules {
                Err(e) => { p.error { (e) } }
                Ok(rules) if rules.is_empty() => { p #no-rules { "No rules." } }
                Ok(rules) => {
                    table #rules {
                        thead { tr { th { "Prefix" } th { "Origin" } th { "Drops" } th { "Time left" } th {} } }
                        tbody {
                            @for r in rules {
                                tr data-prefix=(r.prefix) {
                                    td { (r.prefix) }
                                    td { (format!("{:?}", r.origin).to_lowercase()) }
                                    td { (r.drops) }
                                    td { @if r.active { (humantime::format_duration(std::time::Duration::from_secs(r.expires_in_s))) } @else { "lapsed" } }
                                    td {
                                        form method="post" action="/blocks/remove" {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="prefix" value=(r.prefix);
                                            button type="submit" { "Remove" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Block a source" }
            form.filters #add-block method="post" action="/blocks/add" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Prefix " input type="text" name="prefix" placeholder="address or prefix" required; }
                label { "For " input type="text" name="ttl" value="1h" required; }
                button type="submit" { "Block" }
            }
            p.hint {
                "The rails of " code { "vigil block add" } " hold: the allowlist, the host's own addresses, gateways and \
                 loopback, your own address, and " code { "block.max_ttl" } ". The kernel lets the prefix through again when the time is up."
            }
            h2 { "History (last 24 h)" }
            @if history.is_empty() { p { "None." } } @else {
                table #block-history {
                    thead { tr { th { "Time (UTC)" } th { "Action" } th { "Prefix" } th { "Origin" } th { "Reason" } } }
                    tbody {
                        @for b in history {
                            tr { td { (time(b.time_ms)) } td { (b.action) } td { (b.prefix.as_deref().unwrap_or("-")) }
                                 td { (b.origin.as_deref().unwrap_or("-")) } td { (b.reason.as_deref().unwrap_or("")) } }
                        }
                    }
                }
            }
        },
    )
}

/// The health page: each sensor's latest snapshot and the models it scored with.
#[must_use]
pub fn health(
    rows: &[(String, crate::store::HealthRow)],
    models: &[crate::store::query::StoredModel],
    pictures: &[(String, i64)],
    eval_dir: Option<&std::path::Path>,
    csrf: &str,
) -> Markup {
    layout(
        "Health",
        Some(csrf),
        &html! {
            h1 { "Health" }
            @if rows.is_empty() { p { "No health snapshot yet: the agent stores one a minute." } }
            @for (host, h) in rows {
                h2 { (host) " at " (time(h.time_ms)) }
                table.facts {
                    tr { th { "Packets / bytes" } td { (h.packets) " / " (h.bytes) } }
                    tr { th { "Malformed packets" } td { (h.malformed) } }
                    tr { th { "Dropped by rules" } td { (h.blocklist_drops) " (" (h.rules_active) " rules active)" } }
                    tr { th { "Flow table" } td { (h.flows_tracked) " of " (h.flow_capacity)
                        @if h.flow_capacity > 0 { " (" (h.flows_tracked * 100 / h.flow_capacity) "% full)" } } }
                    tr { th { "Last harvest / scoring" } td { (format!("{:.1} ms / {:.1} ms", h.harvest_ms, h.scoring_ms)) } }
                    tr { th { "Flows scored / alerts" } td { (h.flows_scored) " / " (h.alerts) } }
                    tr { th { "Model" } td { (h.model_phase) " " code { (h.model_sha256.get(..12).unwrap_or(&h.model_sha256)) } } }
                    tr { th { "Store records dropped" } td { (h.store_dropped) } }
                }
            }
            h2 { "Models" }
            table {
                thead { tr { th { "Sensor" } th { "Model" } th { "Phase" } th { "sha256" } th { "First used" } th { "Last used" } } }
                tbody { @for m in models { tr { td { (m.host) } td { (m.name) } td { (m.phase) } td { code { (m.sha256) } } td { (time(m.first_ms)) } td { (time(m.last_ms)) } } } }
            }
            h2 { "Latest evaluation" }
            @if pictures.is_empty() {
                p.hint {
                    "No evaluation pictures"
                    @if let Some(dir) = eval_dir { " in " code { (dir.display()) } }
                    ". " code { "vigil eval captures --labels labels.json --out DIR" } " writes them; "
                    code { "console.eval_dir" } " names the directory."
                }
            }
            @for (name, ms) in pictures {
                figure.eval {
                    img src={ "/eval/" (name) } alt={ "evaluation " (name) };
                    figcaption { (name) ", " (time(*ms)) }
                }
            }
        },
    )
}
