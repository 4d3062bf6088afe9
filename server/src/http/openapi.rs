//! The OpenAPI 3.0 document served at `/api` (OGC API Features `oas30`).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::base_url;
use crate::state::StateHandle;

fn problem_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The document, with `base` as the server URL.
pub fn openapi(base: &str) -> Value {
    let collection_param = json!({"name": "collectionId", "in": "path", "required": true, "schema": {"type": "string", "enum": ["regions", "municipalities", "incidents", "units", "hazards"]}});
    let feature_param =
        json!({"name": "featureId", "in": "path", "required": true, "schema": {"type": "string"}});
    let geojson = json!({"application/geo+json": {"schema": {"$ref": "#/components/schemas/FeatureCollection"}}});
    let write_body = json!({"required": true, "content": {"application/geo+json": {"schema": {"type": "object", "description": "A GeoJSON Feature or FeatureCollection (RFC 7946). Units need properties type, status, home_region; incidents type, priority (1-3), started_at; hazards kind, valid_from (valid_until optional). Optional on all: observed_at, expires (RFC 3339)."}}}});
    let bearer = json!([{"feedToken": []}]);
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "beeld",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Live common operational picture (landelijk operationeel beeld) as OGC API Features. Errors are RFC 9457 application/problem+json."
        },
        "servers": [{"url": base}],
        "components": {
            "securitySchemes": {"feedToken": {"type": "http", "scheme": "bearer", "description": "A feed's token (--feed-token NAME=TOKEN or the config file)."}},
            "schemas": {
                "Problem": {"type": "object", "properties": {
                    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"},
                    "errors": {"type": "array", "items": {"type": "object", "properties": {"index": {"type": "integer"}, "id": {"type": "string", "nullable": true}, "pointer": {"type": "string"}, "detail": {"type": "string"}}}},
                    "errors_not_listed": {"type": "integer"}
                }},
                "FeatureCollection": {"type": "object", "required": ["type", "features"], "properties": {
                    "type": {"type": "string", "enum": ["FeatureCollection"]},
                    "numberMatched": {"type": "integer"}, "numberReturned": {"type": "integer"},
                    "seq": {"type": "integer", "description": "The store's change sequence number this page is consistent with."},
                    "features": {"type": "array", "items": {"$ref": "#/components/schemas/Feature"}},
                    "links": {"type": "array", "items": {"type": "object"}}
                }},
                "Feature": {"type": "object", "required": ["type", "geometry", "properties"], "properties": {
                    "type": {"type": "string", "enum": ["Feature"]}, "id": {"type": "string"},
                    "geometry": {"type": "object"},
                    "properties": {"type": "object", "description": "The feed's properties plus feed, observed_at, received_at, expires, seq (and ogc_valid for areas), and the attribution: region (VR code) and municipality (GM code) on points, regions (VR codes) on hazards."}
                }}
            }
        },
        "paths": {
            "/": {"get": {"summary": "Landing page", "operationId": "getLandingPage", "responses": {"200": {"description": "Links to the API", "content": {"application/json": {}}}}}},
            "/conformance": {"get": {"summary": "Conformance classes", "operationId": "getConformanceDeclaration", "responses": {"200": {"description": "conformsTo", "content": {"application/json": {}}}}}},
            "/api": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.0", "content": {"application/vnd.oai.openapi+json;version=3.0": {}}}}}},
            "/collections": {"get": {"summary": "The collections", "operationId": "getCollections", "responses": {"200": {"description": "Collections", "content": {"application/json": {}}}}}},
            "/collections/{collectionId}": {"get": {"summary": "One collection", "operationId": "describeCollection", "parameters": [collection_param], "responses": {"200": {"description": "Collection", "content": {"application/json": {}}}, "404": problem_response("Unknown collection")}}},
            "/collections/{collectionId}/items": {
                "get": {
                    "summary": "Features of a collection",
                    "operationId": "getFeatures",
                    "parameters": [
                        collection_param,
                        {"name": "bbox", "in": "query", "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}}, "style": "form", "explode": false, "description": "minLon,minLat,maxLon,maxLat (WGS84)"},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
                        {"name": "datetime", "in": "query", "schema": {"type": "string"}, "description": "Instant or interval (RFC 3339, '..' for open ends). Incidents from started_at, hazards over valid_from..valid_until, units at observed_at."},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "Paging cursor from a 'next' link."},
                        {"name": "f", "in": "query", "schema": {"type": "string", "enum": ["json", "fgb"]}, "description": "Output format. f=fgb without limit returns every match."},
                        {"name": "property filters", "in": "query", "schema": {"type": "string"}, "description": "Any other parameter filters on a property, e.g. status=available or home_region=VR24."}
                    ],
                    "responses": {"200": {"description": "Features", "content": {"application/geo+json": geojson["application/geo+json"].clone(), "application/flatgeobuf": {}}}, "400": problem_response("Invalid parameter"), "404": problem_response("Unknown collection")}
                },
                "post": {
                    "summary": "Upsert a Feature or a FeatureCollection (atomic)",
                    "operationId": "upsertFeatures",
                    "security": bearer,
                    "parameters": [collection_param],
                    "requestBody": write_body,
                    "responses": {
                        "200": {"description": "Written (batch, or replaced feature)"}, "201": {"description": "Created (single feature)"},
                        "400": problem_response("Malformed JSON"), "401": problem_response("Missing or unknown token"), "403": problem_response("Feed may not write this collection"),
                        "404": problem_response("Unknown collection"), "405": problem_response("Read-only collection"), "413": problem_response("Body or batch too large"),
                        "422": problem_response("Invalid features; nothing written"), "503": problem_response("Still loading")
                    }
                }
            },
            "/collections/{collectionId}/items/{featureId}": {
                "get": {"summary": "One feature", "operationId": "getFeature", "parameters": [collection_param, feature_param], "responses": {"200": {"description": "Feature", "content": {"application/geo+json": {}}}, "404": problem_response("Unknown feature")}},
                "put": {"summary": "Create or replace one feature", "operationId": "replaceFeature", "security": bearer, "parameters": [collection_param, feature_param], "requestBody": write_body, "responses": {"200": {"description": "Replaced"}, "201": {"description": "Created"}, "422": problem_response("Invalid feature")}},
                "delete": {"summary": "Delete one feature", "operationId": "deleteFeature", "security": bearer, "parameters": [collection_param, feature_param], "responses": {"204": {"description": "Deleted"}, "404": problem_response("Unknown feature")}}
            },
            "/feeds": {"get": {"summary": "Feeds with last write, counts and silence", "responses": {"200": {"description": "Feeds", "content": {"application/json": {}}}}}},
            "/healthz": {"get": {"summary": "Health: 200 when loaded, 503 while loading or failed", "responses": {"200": {"description": "Healthy"}, "503": {"description": "Loading or failed"}}}}
        }
    });
    // Separate, as one `json!` of everything exceeds the macro recursion limit.
    if let (Some(paths), Value::Object(joins)) =
        (doc["paths"].as_object_mut(), joins_paths(&bearer))
    {
        paths.extend(joins);
    }
    doc
}

/// The `/joins` paths (issue 4).
fn joins_paths(bearer: &Value) -> Value {
    json!({
            "/joins/hazards/{hazardId}/units": {"get": {"summary": "Units inside a hazard, and the hazard's overlap per region (km²)", "operationId": "getUnitsInHazard", "parameters": [{"name": "hazardId", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "{hazard, count, units: [id], regions: [{region, area_km2}], seq}", "content": {"application/json": {}}}, "404": problem_response("Unknown hazard")}}},
            "/joins/units/{unitId}/hazards": {"get": {"summary": "Hazards containing a unit", "operationId": "getHazardsOfUnit", "parameters": [{"name": "unitId", "in": "path", "required": true, "schema": {"type": "string"}}], "responses": {"200": {"description": "{unit, count, hazards: [id], seq}", "content": {"application/json": {}}}, "404": problem_response("Unknown unit")}}},
            "/joins/regions/{regionCode}": {"get": {"summary": "Region summary: unit and incident counts by type and status, hazards overlapping it (km²)", "operationId": "getRegionSummary", "parameters": [{"name": "regionCode", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^VR[0-2][0-9]$"}}], "responses": {"200": {"description": "{region, name, units, incidents, counts: [{collection, type, status?, count}], hazards: [{id, area_km2}], seq}", "content": {"application/json": {}}}, "404": problem_response("Unknown region")}}},
            "/joins/nearest": {"get": {"summary": "Nearest units (great-circle) to an incident or a point, from the index", "operationId": "getNearestUnits", "parameters": [
                {"name": "incident", "in": "query", "schema": {"type": "string"}, "description": "An incident id; or give lon and lat."},
                {"name": "lon", "in": "query", "schema": {"type": "number"}}, {"name": "lat", "in": "query", "schema": {"type": "number"}},
                {"name": "n", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5}},
                {"name": "type", "in": "query", "schema": {"type": "string", "enum": ["fire_engine", "ambulance", "police", "rescue", "command", "other"]}},
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["available", "en_route", "on_scene", "out_of_service"], "default": "available"}},
                {"name": "exclude_own_region", "in": "query", "schema": {"type": "boolean", "default": false}, "description": "Leave out units located in the region of the incident or point (bijstand from elsewhere)."}
            ], "responses": {"200": {"description": "{from: {lon, lat, region, incident}, excluded_region, units: [{id, lon, lat, type, status, region, distance_m}], seq}", "content": {"application/json": {}}}, "400": problem_response("Invalid parameter"), "404": problem_response("Unknown incident")}}},
            "/joins/h3": {"get": {"summary": "Counts of units and incidents per H3 cell (resolutions 4-9) whose centre is in a bbox", "operationId": "getH3Aggregates", "parameters": [
                {"name": "resolution", "in": "query", "required": true, "schema": {"type": "integer", "minimum": 4, "maximum": 9}},
                {"name": "bbox", "in": "query", "schema": {"type": "array", "minItems": 4, "maxItems": 4, "items": {"type": "number"}}, "style": "form", "explode": false, "description": "minLon,minLat,maxLon,maxLat (WGS84); default: everything"}
            ], "responses": {"200": {"description": "{resolution, cells: [{cell (hex H3 index), counts: [{collection, type, status?, count}]}], seq}", "content": {"application/json": {}}}, "400": problem_response("Invalid parameter")}}},
            "/joins/events": {"get": {"summary": "Recent enter/exit and alert events, paged by event number", "operationId": "getJoinEvents", "parameters": [
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}},
                {"name": "run", "in": "query", "description": "The run 'after' came from; numbers restart with every run of the server", "schema": {"type": "string"}}
            ], "responses": {"200": {"description": "{events: [{n, seq, at, type: enter|exit|alert_raised|alert_cleared, unit?, hazard?, rule?, count?}], run, next_after, last, more}", "content": {"application/json": {}}}, "410": problem_response("Events after 'after' have left the bounded log, or 'run' is an earlier run; resynchronise")}}},
            "/joins/rules": {
                "get": {"summary": "Coverage rules with their live count and alert state", "operationId": "getRules", "responses": {"200": {"description": "{rules: [Rule]}", "content": {"application/json": {}}}}},
                "post": {"summary": "Register a coverage rule", "operationId": "createRule", "security": bearer, "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["target"], "properties": {
                    "target": {"type": "object", "description": "{\"hazard\": id, \"radius_km\": R} (units within R km of any point of the hazard) or {\"region\": \"VRnn\"} (units inside the region)"},
                    "type": {"type": "string"}, "status": {"type": "string"},
                    "min_units": {"type": "integer", "minimum": 1, "default": 1, "description": "Alert while fewer units than this are counted."}}}}}},
                    "responses": {"201": {"description": "The rule with its state", "content": {"application/json": {}}}, "400": problem_response("Malformed rule"), "401": problem_response("Missing or unknown token"), "403": problem_response("Feed may not write hazards"), "409": problem_response("Already 1,000 rules"), "422": problem_response("Invalid rule"), "503": problem_response("The rule could not be stored durably; nothing changed")}}
            },
            "/joins/rules/{ruleId}": {
                "get": {"summary": "One coverage rule", "operationId": "getRule", "parameters": [{"name": "ruleId", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"200": {"description": "Rule", "content": {"application/json": {}}}, "404": problem_response("Unknown rule")}},
                "delete": {"summary": "Delete a coverage rule (clears its alert)", "operationId": "deleteRule", "security": bearer, "parameters": [{"name": "ruleId", "in": "path", "required": true, "schema": {"type": "integer"}}], "responses": {"204": {"description": "Deleted"}, "404": problem_response("Unknown rule")}}
            },
            "/joins/alerts": {"get": {"summary": "Active coverage alerts (rules whose count is below min_units)", "operationId": "getAlerts", "responses": {"200": {"description": "{alerts: [Rule]}", "content": {"application/json": {}}}}}}
    })
}

/// `GET /api`
pub async fn document(State(state): State<StateHandle>, headers: HeaderMap) -> Response {
    let body = openapi(&base_url(&state, &headers)).to_string();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/vnd.oai.openapi+json;version=3.0"),
        )],
        body,
    )
        .into_response()
}
