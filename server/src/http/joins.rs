//! Spatial joins over HTTP (issue 4), all under `/joins`: units inside a
//! hazard, hazards containing a unit, region summaries, nearest available
//! units, H3 aggregates, the enter/exit/alert event log, and coverage rules
//! with their alerts. Every answer is read from `layers::Relations`, which
//! the store keeps current with each change; nothing here scans the picture.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use beeld_layers::attrs::{RegionCode, UnitStatus, UnitType};
use beeld_layers::relate::{Category, Event, EventKind, Rule, RuleState, RuleTarget};
use beeld_layers::{Collection, FeatureId};
use geo::{Rect, coord};
use serde_json::{Value, json};

use crate::problem::Problem;
use crate::state::{LoadStatus, StateHandle, now};

/// Most units `nearest` returns.
pub const MAX_NEAREST: usize = 100;
/// Most events per page.
pub const MAX_EVENTS: usize = 10_000;

fn ok(body: &Value) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body.to_string(),
    )
        .into_response()
}

fn bad(detail: impl Into<String>) -> Problem {
    Problem::bad_request("invalid-parameter", detail)
}

fn params(raw: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn number<T: std::str::FromStr>(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<T>, Problem> {
    params
        .get(name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| bad(format!("'{name}' must be a number, got '{v}'")))
        })
        .transpose()
}

fn region_param(text: &str) -> Result<RegionCode, Problem> {
    RegionCode::parse(text).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "unknown-region",
            "Unknown region",
            format!("'{text}' is not a veiligheidsregio code; they are VR01 to VR25"),
        )
    })
}

fn unit_filters(
    params: &BTreeMap<String, String>,
) -> Result<(Option<UnitType>, Option<UnitStatus>), Problem> {
    let unit_type = params
        .get("type")
        .map(|t| {
            UnitType::parse(t).ok_or_else(|| {
                bad(format!(
                    "'type' must be a unit type ({}), got '{t}'",
                    names(UnitType::ALL.iter().map(|v| v.as_str()))
                ))
            })
        })
        .transpose()?;
    let status = params
        .get("status")
        .map(|s| {
            UnitStatus::parse(s).ok_or_else(|| {
                bad(format!(
                    "'status' must be a unit status ({}), got '{s}'",
                    names(UnitStatus::ALL.iter().map(|v| v.as_str()))
                ))
            })
        })
        .transpose()?;
    Ok((unit_type, status))
}

fn names<'a>(all: impl Iterator<Item = &'a str>) -> String {
    all.collect::<Vec<_>>().join(", ")
}

/// One count as JSON, as `/joins/h3` and the live protocol send it.
pub(crate) fn category_json(category: Category, count: u32) -> Value {
    let mut v = json!({
        "collection": category.collection().as_str(),
        "type": category.type_str(),
        "count": count,
    });
    if let Some(status) = category.status_str() {
        v["status"] = json!(status);
    }
    v
}

fn ids(list: &[FeatureId]) -> Vec<&str> {
    list.iter().map(|id| &**id).collect()
}

/// `GET /joins/hazards/{id}/units`
pub async fn units_in_hazard(
    State(state): State<StateHandle>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let store = state.read();
    let relations = store.relations();
    let units = relations
        .units_in_hazard(&id)
        .ok_or_else(|| Problem::unknown_feature("hazards", &id))?;
    let regions: Vec<Value> = relations
        .hazard_regions(&id)
        .unwrap_or_default()
        .iter()
        .map(|(code, km2)| json!({"region": code.to_string(), "area_km2": km2}))
        .collect();
    let body = json!({"hazard": id, "count": units.len(), "units": ids(&units), "regions": regions, "seq": store.seq().0});
    drop(store);
    Ok(ok(&body))
}

/// `GET /joins/units/{id}/hazards`
pub async fn hazards_of_unit(
    State(state): State<StateHandle>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let store = state.read();
    let hazards = store
        .relations()
        .hazards_of_unit(&id)
        .ok_or_else(|| Problem::unknown_feature("units", &id))?;
    let body =
        json!({"unit": id, "count": hazards.len(), "hazards": ids(&hazards), "seq": store.seq().0});
    drop(store);
    Ok(ok(&body))
}

/// `GET /joins/regions/{code}`
pub async fn region_summary(
    State(state): State<StateHandle>,
    Path(code): Path<String>,
) -> Result<Response, Problem> {
    let region = region_param(&code)?;
    let store = state.read();
    let summary = store.relations().region_summary(region);
    let name = store
        .get(Collection::Regions, &region.to_string())
        .and_then(|f| serde_json::from_str::<Value>(&f.properties).ok())
        .and_then(|p| p.get("name").cloned())
        .unwrap_or(Value::Null);
    let seq = store.seq().0;
    drop(store);
    let counts: Vec<Value> = summary
        .counts
        .iter()
        .map(|(c, n)| category_json(*c, *n))
        .collect();
    let units: u32 = summary
        .counts
        .iter()
        .filter(|(c, _)| c.collection() == Collection::Units)
        .map(|(_, n)| n)
        .sum();
    let incidents: u32 = summary
        .counts
        .iter()
        .filter(|(c, _)| c.collection() == Collection::Incidents)
        .map(|(_, n)| n)
        .sum();
    let hazards: Vec<Value> = summary
        .hazards
        .iter()
        .map(|(id, km2)| json!({"id": &**id, "area_km2": km2}))
        .collect();
    Ok(ok(&json!({
        "region": region.to_string(), "name": name, "units": units, "incidents": incidents,
        "counts": counts, "hazards": hazards, "seq": seq,
    })))
}

/// `GET /joins/nearest?incident=ID | lon=..&lat=..`, with `n`, `type`,
/// `status` (default `available`), `exclude_own_region`.
pub async fn nearest(
    State(state): State<StateHandle>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let params = params(raw.as_deref());
    let n = number::<usize>(&params, "n")?.unwrap_or(5);
    if n == 0 || n > MAX_NEAREST {
        return Err(bad(format!("'n' must be between 1 and {MAX_NEAREST}")));
    }
    let (unit_type, mut status) = unit_filters(&params)?;
    if !params.contains_key("status") {
        status = Some(UnitStatus::Available);
    }
    let exclude = match params.get("exclude_own_region").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(format!(
                "'exclude_own_region' must be true or false, got '{other}'"
            )));
        }
    };
    let store = state.read();
    let relations = store.relations();
    let (from, from_region, incident) = match params.get("incident") {
        Some(id) => {
            let (at, place) = relations
                .point(Collection::Incidents, id)
                .ok_or_else(|| Problem::unknown_feature("incidents", id))?;
            (at, place.region, Some(id.clone()))
        }
        None => {
            let (Some(lon), Some(lat)) = (
                number::<f64>(&params, "lon")?,
                number::<f64>(&params, "lat")?,
            ) else {
                return Err(bad(
                    "give either 'incident' (an incident id) or both 'lon' and 'lat' (WGS84 degrees)",
                ));
            };
            if !((-180.0..=180.0).contains(&lon) && (-90.0..=90.0).contains(&lat)) {
                return Err(bad("'lon' must be in -180..180 and 'lat' in -90..90"));
            }
            let at = coord! { x: lon, y: lat };
            (at, relations.place_point(at).region, None)
        }
    };
    let excluded = if exclude { from_region } else { None };
    let found = relations.nearest(from, n, unit_type, status, excluded);
    let seq = store.seq().0;
    drop(store);
    let units: Vec<Value> = found
        .iter()
        .map(|u| {
            json!({
                "id": &*u.id, "lon": u.at.x, "lat": u.at.y,
                "type": u.category.type_str(), "status": u.category.status_str(),
                "region": u.region.map(|r| r.to_string()),
                "distance_m": (u.distance_m * 10.0).round() / 10.0,
            })
        })
        .collect();
    Ok(ok(&json!({
        "from": {"lon": from.x, "lat": from.y, "region": from_region.map(|r| r.to_string()), "incident": incident},
        "excluded_region": excluded.map(|r| r.to_string()),
        "units": units, "seq": seq,
    })))
}

/// `GET /joins/h3?resolution=4..9&bbox=minLon,minLat,maxLon,maxLat`
pub async fn h3(
    State(state): State<StateHandle>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let params = params(raw.as_deref());
    let resolution = number::<u8>(&params, "resolution")?
        .ok_or_else(|| bad("'resolution' is required (4 to 9)"))?;
    if !beeld_layers::relate::H3_RESOLUTIONS.contains(&resolution) {
        return Err(bad(format!(
            "'resolution' must be 4 to 9, got {resolution}"
        )));
    }
    let bbox = match params.get("bbox") {
        None => Rect::new(coord! { x: -180.0, y: -90.0 }, coord! { x: 180.0, y: 90.0 }),
        Some(text) => {
            let v: Vec<f64> = text
                .split(',')
                .map(|p| p.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("'bbox' must be four numbers: minLon,minLat,maxLon,maxLat"))?;
            if v.len() != 4 || v[0] > v[2] || v[1] > v[3] {
                return Err(bad(
                    "'bbox' must be minLon,minLat,maxLon,maxLat with min <= max",
                ));
            }
            Rect::new(coord! { x: v[0], y: v[1] }, coord! { x: v[2], y: v[3] })
        }
    };
    let store = state.read();
    let rows = store
        .relations()
        .h3_counts(resolution, &bbox)
        .unwrap_or_default();
    let seq = store.seq().0;
    drop(store);
    let mut cells: Vec<Value> = Vec::new();
    let mut current: Option<(u64, Vec<Value>)> = None;
    for (cell, category, count) in rows {
        if current.as_ref().is_some_and(|(c, _)| *c != cell)
            && let Some((c, counts)) = current.take()
        {
            cells.push(json!({"cell": format!("{c:x}"), "counts": counts}));
        }
        current
            .get_or_insert_with(|| (cell, Vec::new()))
            .1
            .push(category_json(category, count));
    }
    if let Some((c, counts)) = current {
        cells.push(json!({"cell": format!("{c:x}"), "counts": counts}));
    }
    Ok(ok(
        &json!({"resolution": resolution, "cells": cells, "seq": seq}),
    ))
}

/// One event as JSON, as `/joins/events` and the live protocol send it.
pub(crate) fn event_json(event: &Event) -> Value {
    let mut v = json!({"n": event.n, "seq": event.cause.0, "at": event.at.to_rfc3339()});
    match &event.kind {
        EventKind::Enter { unit, hazard } => {
            v["type"] = json!("enter");
            v["unit"] = json!(&**unit);
            v["hazard"] = json!(&**hazard);
        }
        EventKind::Exit { unit, hazard } => {
            v["type"] = json!("exit");
            v["unit"] = json!(&**unit);
            v["hazard"] = json!(&**hazard);
        }
        EventKind::AlertRaised { rule, count } => {
            v["type"] = json!("alert_raised");
            v["rule"] = json!(rule);
            v["count"] = json!(count);
        }
        EventKind::AlertCleared { rule, count } => {
            v["type"] = json!("alert_cleared");
            v["rule"] = json!(rule);
            v["count"] = json!(count);
        }
    }
    v
}

/// `GET /joins/events?after=N&limit=M[&run=R]`: events numbered above
/// `after`. 410 when some were dropped from the bounded log, or when `run`
/// names an earlier run of the server, whose numbers meant other events
/// (resynchronise from the join endpoints, then continue from `last`).
pub async fn events(
    State(state): State<StateHandle>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let params = params(raw.as_deref());
    let after = number::<u64>(&params, "after")?.unwrap_or(0);
    let limit = number::<usize>(&params, "limit")?
        .unwrap_or(100)
        .clamp(1, MAX_EVENTS);
    let run = state.run();
    if let Some(asked) = params.get("run").filter(|r| r.as_str() != run) {
        let last = state.read().relations().events().last();
        return Err(Problem::new(
            StatusCode::GONE,
            "events-gone",
            "Events from another run",
            format!(
                "event numbers of run '{asked}' do not apply: the server restarted (run '{run}') and numbers events anew; read the current relations and continue from 'last' = {last} with run '{run}'"
            ),
        ));
    }
    let store = state.read();
    let log = store.relations().events();
    let last = log.last();
    let Some(iter) = log.since(after) else {
        return Err(Problem::new(
            StatusCode::GONE,
            "events-gone",
            "Events no longer held",
            format!(
                "events after {after} have partly left the log (oldest held: {}); read the current relations and continue from 'last' = {last}",
                log.oldest().unwrap_or(last + 1)
            ),
        ));
    };
    let page: Vec<Value> = iter.take(limit).map(event_json).collect();
    drop(store);
    let next = page
        .last()
        .and_then(|e| e["n"].as_u64())
        .unwrap_or(after.min(last));
    Ok(ok(&json!({
        "events": page,
        "run": run,
        "next_after": next,
        "last": last,
        "more": next < last,
    })))
}

/// A rule as the API shows it: its body plus its id and live state.
fn rule_json(state: &RuleState) -> Value {
    let mut json = rule_body(&state.rule);
    if let Some(object) = json.as_object_mut() {
        object.insert("id".to_owned(), json!(state.id));
        object.insert("count".to_owned(), json!(state.count));
        object.insert("alert".to_owned(), json!(state.alert));
        object.insert("since".to_owned(), json!(state.since.to_rfc3339()));
    }
    json
}

/// A rule as `POST /joins/rules` takes it: what `rules.json` stores.
fn rule_body(rule: &Rule) -> Value {
    let target = match &rule.target {
        RuleTarget::NearHazard { hazard, radius_km } => {
            json!({"hazard": &**hazard, "radius_km": radius_km})
        }
        RuleTarget::InRegion { region } => json!({"region": region.to_string()}),
    };
    json!({
        "target": target,
        "type": rule.unit_type.map(UnitType::as_str),
        "status": rule.status.map(UnitStatus::as_str),
        "min_units": rule.min_units,
    })
}

/// Every rule and the next id, for `rules.json`.
fn rule_bodies(store: &beeld_layers::Store) -> (Vec<(u64, Value)>, u64) {
    let relations = store.relations();
    let rules = relations
        .rules()
        .map(|r| (r.id, rule_body(&r.rule)))
        .collect();
    (rules, relations.next_rule_id())
}

/// Writes every rule to `rules.json`; the caller holds the rules lock, so
/// files are written in the order the changes were made.
async fn save_rules(
    state: &StateHandle,
    (rules, next_id): (Vec<(u64, Value)>, u64),
) -> Result<(), Problem> {
    let dir = state.config().data_dir.clone();
    let saved =
        tokio::task::spawn_blocking(move || crate::persist::rules::save(&dir, &rules, next_id))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
    saved.map_err(|e| {
        tracing::error!(error = %e, "could not store the coverage rules");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-durable",
            "Rules could not be stored",
            format!("the change was not made, because it could not be stored durably: {e}"),
        )
    })
}

/// Reads a stored or posted rule body.
pub(crate) fn parse_rule(body: &Value) -> Result<Rule, Problem> {
    let target = body
        .get("target")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad("'target' must be {\"hazard\": ID, \"radius_km\": R} or {\"region\": \"VRnn\"}")
        })?;
    let target = match (target.get("hazard"), target.get("region")) {
        (Some(Value::String(hazard)), None) => RuleTarget::NearHazard {
            hazard: hazard.as_str().into(),
            radius_km: target
                .get("radius_km")
                .and_then(Value::as_f64)
                .ok_or_else(|| bad("a hazard target needs 'radius_km' (a number)"))?,
        },
        (None, Some(Value::String(region))) => RuleTarget::InRegion {
            region: RegionCode::parse(region)
                .ok_or_else(|| bad(format!("'{region}' is not a region code (VR01 to VR25)")))?,
        },
        _ => {
            return Err(bad(
                "'target' must have either 'hazard' (an id) or 'region' (VRnn), as a string",
            ));
        }
    };
    let text = |name: &str| -> Result<Option<&str>, Problem> {
        match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("'{name}' must be a string"))),
        }
    };
    let unit_type = text("type")?
        .map(|t| UnitType::parse(t).ok_or_else(|| bad(format!("'{t}' is not a unit type"))))
        .transpose()?;
    let status = text("status")?
        .map(|s| UnitStatus::parse(s).ok_or_else(|| bad(format!("'{s}' is not a unit status"))))
        .transpose()?;
    let min_units = match body.get("min_units") {
        None => 1,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad("'min_units' must be a whole number"))?,
    };
    Ok(Rule {
        target,
        unit_type,
        status,
        min_units,
    })
}

/// `POST /joins/rules`: registers a coverage rule. Needs a feed token that
/// may write hazards (the crisis room's feeds).
pub async fn create_rule(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    crate::auth::authorize_write(&state, &headers, Collection::Hazards)?;
    if state.status() != LoadStatus::Ready {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "Still loading",
            "the boundaries are still loading; retry in a moment",
        ));
    }
    let body: Value = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request("malformed-json", format!("the body is not JSON: {e}"))
    })?;
    let rule = parse_rule(&body)?;
    let _ordered = state.rules_lock().lock().await;
    let (id, body, all) = {
        let mut store = state.write();
        let id = store.add_rule(rule, now()).map_err(|e| match e {
            beeld_layers::relate::RuleError::TooMany => Problem::new(
                StatusCode::CONFLICT,
                "too-many-rules",
                "Too many rules",
                e.to_string(),
            ),
            _ => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-rule",
                "Invalid rule",
                e.to_string(),
            ),
        })?;
        let body = store
            .relations()
            .rule(id)
            .map(rule_json)
            .unwrap_or(Value::Null);
        (id, body, rule_bodies(&store))
    };
    // Acknowledged only once durable; otherwise it never happened.
    if let Err(problem) = save_rules(&state, all).await {
        state.write().remove_rule(id, now());
        return Err(problem);
    }
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/joins/rules/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn rule_id(text: &str) -> Result<u64, Problem> {
    text.parse().map_err(|_| unknown_rule(text))
}

fn unknown_rule(text: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "unknown-rule",
        "Unknown rule",
        format!("there is no rule '{text}'; see /joins/rules"),
    )
}

/// `GET /joins/rules`
pub async fn list_rules(State(state): State<StateHandle>) -> Response {
    let store = state.read();
    let rules: Vec<Value> = store.relations().rules().map(rule_json).collect();
    drop(store);
    ok(&json!({ "rules": rules }))
}

/// `GET /joins/rules/{id}`
pub async fn get_rule(
    State(state): State<StateHandle>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let n = rule_id(&id)?;
    let store = state.read();
    let body = store
        .relations()
        .rule(n)
        .map(rule_json)
        .ok_or_else(|| unknown_rule(&id))?;
    drop(store);
    Ok(ok(&body))
}

/// `DELETE /joins/rules/{id}`
pub async fn delete_rule(
    State(state): State<StateHandle>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    crate::auth::authorize_write(&state, &headers, Collection::Hazards)?;
    let n = rule_id(&id)?;
    let _ordered = state.rules_lock().lock().await;
    let (removed, all) = {
        let mut store = state.write();
        let removed = store.relations().rule(n).map(|r| r.rule.clone());
        if removed.is_some() {
            store.remove_rule(n, now());
        }
        (removed, rule_bodies(&store))
    };
    let Some(rule) = removed else {
        return Err(unknown_rule(&id));
    };
    if let Err(problem) = save_rules(&state, all).await {
        // Still stored, so still in force.
        let _ = state.write().restore_rule(n, rule, now());
        return Err(problem);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /joins/alerts`: the rules whose alert is raised.
pub async fn alerts(State(state): State<StateHandle>) -> Response {
    let store = state.read();
    let alerts: Vec<Value> = store
        .relations()
        .rules()
        .filter(|r| r.alert)
        .map(rule_json)
        .collect();
    drop(store);
    ok(&json!({ "alerts": alerts }))
}
