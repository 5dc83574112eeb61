//! The JSON contract: the answers `hydromesh query --json` and `hydromesh admin policy --json`
//! print and the HTTP API serves, built in one place so that they cannot drift apart.

use std::time::Duration;

use hydromesh_proto::control::Policy;
use hydromesh_proto::query::{
    AlertsAnswer, Bill, BlockedAnswer, Coverage, MeterAnswer, PeersAnswer, PolicyOrigin, StatsAnswer,
    TopAnswer,
};
use hydromesh_proto::{MeterId, Reading};
use serde_json::{json, Value};

use super::input::format_timestamp;

/// The coverage fields every global JSON answer carries.
fn with_coverage(mut value: Value, coverage: &Coverage) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.insert("nodes".into(), json!(coverage.included.len()));
        object.insert("stale_nodes".into(), json!(coverage.stale.len()));
        object.insert("included".into(), json!(coverage.included));
        object.insert("stale".into(), json!(coverage.stale));
        object.insert("missing".into(), json!(coverage.missing));
        object.insert("data_age_ms".into(), json!(coverage.oldest_data_age_ms));
    }
    value
}

/// `query top --json` and `GET /api/v1/top`.
pub fn top_json(answer: &TopAnswer) -> Value {
    let entries: Vec<Value> = answer
        .entries
        .iter()
        .map(|e| json!({"meter": e.meter, "consumption_l": e.consumption_l, "home": e.home}))
        .collect();
    with_coverage(json!({ "entries": entries }), &answer.coverage)
}

/// `query stats --json` and `GET /api/v1/stats`.
pub fn stats_json(answer: &StatsAnswer) -> Value {
    with_coverage(
        json!({
            "meters": answer.meters,
            "total_consumption_l": answer.total_consumption_l,
            "average_consumption_l": answer.average_consumption_l(),
        }),
        &answer.coverage,
    )
}

/// `query peers --json` and `GET /api/v1/peers`.
pub fn peers_json(answer: &PeersAnswer) -> Value {
    let peers: Vec<Value> = answer
        .peers
        .iter()
        .map(|p| {
            json!({
                "peer": p.peer, "name": p.name, "addrs": p.addrs, "meters": p.meters,
                "version": p.version, "last_heard_ms_ago": p.last_heard_ms_ago,
                "stale": p.stale, "self": p.is_self, "connected": p.connected,
            })
        })
        .collect();
    with_coverage(json!({ "peers": peers }), &answer.coverage)
}

/// `query meter --json` and `GET /api/v1/meters/{id}/readings`.
pub fn meter_json(answer: &MeterAnswer) -> Value {
    let readings: Vec<Value> = answer.history.readings.iter().map(reading_json).collect();
    json!({
        "meter": answer.meter,
        "home": answer.home,
        "consumption_l": answer.consumption_l,
        "readings": readings,
        "truncated": answer.history.truncated,
        "blocked": answer.status.blocked.as_ref().map(|b| json!({
            "reason": b.reason.as_str(), "since": format_timestamp(b.since_ms), "detail": b.detail,
        })),
        "alerts": answer.status.alerts.iter().map(|a| json!({"kind": a.kind.as_str(), "since": format_timestamp(a.since_ms)})).collect::<Vec<_>>(),
        "bill": answer.status.bill.as_ref().map(bill_json),
        "unknown_status": answer.status.unknown_status,
    })
}

fn reading_json(r: &Reading) -> Value {
    let mut reading = json!({"ts": format_timestamp(r.ts_ms), "litres": r.litres});
    if let Some(flow) = r.flow_lph {
        reading["flow_lph"] = json!(flow);
    }
    if !r.alarms.is_empty() {
        reading["alarms"] = json!(r.alarms.names().collect::<Vec<_>>());
    }
    reading
}

/// `query bill --json` and `GET /api/v1/meters/{id}/bill`.
pub fn bill_json(bill: &Bill) -> Value {
    json!({
        "meter": bill.meter,
        "period_start": format_timestamp(bill.period_start_ms),
        "period_end": format_timestamp(bill.period_end_ms),
        "consumption_l": bill.consumption_l,
        "amount": bill.amount_cents as f64 / 100.0,
        "currency": bill.currency,
        "paid": bill.paid,
        "home": bill.home,
    })
}

/// `query blocked --json` and `GET /api/v1/blocked`.
pub fn blocked_json(answer: &BlockedAnswer) -> Value {
    let blocked: Vec<Value> = answer
        .blocked
        .iter()
        .map(|e| {
            json!({
                "meter": e.blocked.meter, "reason": e.blocked.reason.as_str(),
                "since": format_timestamp(e.blocked.since_ms), "detail": e.blocked.detail, "home": e.home,
            })
        })
        .collect();
    with_coverage(json!({ "blocked": blocked }), &answer.coverage)
}

/// `query alerts --json` and `GET /api/v1/alerts`.
pub fn alerts_json(answer: &AlertsAnswer) -> Value {
    let alerts: Vec<Value> = answer
        .alerts
        .iter()
        .map(|e| json!({"meter": e.alert.meter, "kind": e.alert.kind.as_str(), "since": format_timestamp(e.alert.since_ms), "home": e.home}))
        .collect();
    with_coverage(json!({ "alerts": alerts }), &answer.coverage)
}

/// One line of `query meter ID --follow --json` and one event of `GET /api/v1/meters/{id}/live`:
/// a reading with its meter and home.
pub fn follow_json(meter: MeterId, home: &str, reading: &Reading) -> Value {
    let mut line = reading_json(reading);
    line["meter"] = json!(meter);
    line["home"] = json!(home);
    line
}

/// `admin policy --json` and `GET /api/v1/policy`: the policy in force and who set it when.
pub fn policy_json(policy: &Policy, origin: Option<&PolicyOrigin>) -> Value {
    json!({
        "period": humantime::format_duration(Duration::from_millis(policy.period_ms)).to_string(),
        "period_ms": policy.period_ms,
        "cap_l": policy.cap_l,
        "above_average": policy.above_average_permille.map(|p| f64::from(p) / 1000.0),
        "set_by": origin.map(|o| o.admin.clone()),
        "set_at": origin.map(|o| format_timestamp(o.issued_at_ms)),
    })
}
