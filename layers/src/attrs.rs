//! Typed properties of units, incidents and hazards.
//!
//! Feeds send these as ordinary GeoJSON properties; [`Attrs::extract`] checks
//! them, rewrites accepted spellings to one canonical form (so filters and
//! symbology see one vocabulary) and keeps a compact copy next to the feature
//! for fast filtering. Every other property passes through untouched.

use std::fmt;

use serde_json::{Map, Value};

use crate::collection::Collection;
use crate::time::Timestamp;

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses a value, accepting any case and `-` or space for `_`.
            pub fn parse(text: &str) -> Option<$name> {
                let normal: String = text
                    .trim()
                    .chars()
                    .map(|c| if c == '-' || c == ' ' { '_' } else { c.to_ascii_lowercase() })
                    .collect();
                Self::ALL.iter().copied().find(|v| v.as_str() == normal)
            }

            fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary! {
    /// What a unit is.
    UnitType {
        /// Tankautospuit and other fire appliances.
        FireEngine = "fire_engine",
        /// Ambulance.
        Ambulance = "ambulance",
        /// Police unit.
        Police = "police",
        /// Technical rescue, water rescue, USAR.
        Rescue = "rescue",
        /// Command and coordination vehicle (CoPI, OvD).
        Command = "command",
        /// Anything else; say what in an extra property.
        Other = "other",
    }
}

vocabulary! {
    /// Whether a unit can be tasked.
    UnitStatus {
        /// Ready for a new task.
        Available = "available",
        /// Driving to a task.
        EnRoute = "en_route",
        /// Working at a task.
        OnScene = "on_scene",
        /// Not deployable (maintenance, crew change).
        OutOfService = "out_of_service",
    }
}

vocabulary! {
    /// What an incident is about.
    IncidentType {
        /// Fire.
        Fire = "fire",
        /// Medical emergency.
        Medical = "medical",
        /// Road, rail or water traffic accident.
        Traffic = "traffic",
        /// Flooding, dike breach, water on the streets.
        Flood = "flood",
        /// People to be rescued, e.g. stranded by water.
        Rescue = "rescue",
        /// Evacuation of an area or building.
        Evacuation = "evacuation",
        /// Dangerous substances.
        Hazmat = "hazmat",
        /// Damaged infrastructure: roads, bridges, power, water.
        Infrastructure = "infrastructure",
        /// Public order.
        PublicOrder = "public_order",
        /// Anything else.
        Other = "other",
    }
}

vocabulary! {
    /// What kind of hazard an area is.
    HazardKind {
        /// A wildfire front or burnt area.
        Wildfire = "wildfire",
        /// A flooded or expected-to-flood area.
        Flood = "flood",
        /// A chemical plume or contaminated area.
        Chemical = "chemical",
        /// Anything else.
        Other = "other",
    }
}

/// A veiligheidsregio code, `VR01`–`VR25`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionCode(u8);

impl RegionCode {
    /// Parses `VR01`…`VR25` (case-insensitive).
    ///
    /// ```
    /// use beeld_layers::attrs::RegionCode;
    /// assert_eq!(RegionCode::parse("vr23").unwrap().to_string(), "VR23");
    /// assert!(RegionCode::parse("VR26").is_none());
    /// ```
    pub fn parse(text: &str) -> Option<RegionCode> {
        let text = text.trim();
        let digits = text.get(2..)?;
        if !text.get(..2)?.eq_ignore_ascii_case("vr") || digits.len() != 2 {
            return None;
        }
        let n: u8 = digits.parse().ok()?;
        (1..=25).contains(&n).then_some(RegionCode(n))
    }

    /// The number, 1–25.
    pub fn number(self) -> u8 {
        self.0
    }
}

impl fmt::Display for RegionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VR{:02}", self.0)
    }
}

/// The typed part of a feature's properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attrs {
    /// Regions and municipalities carry no typed properties beyond their names.
    Boundary,
    /// A unit.
    Unit {
        /// `type`.
        unit_type: UnitType,
        /// `status`.
        status: UnitStatus,
        /// `home_region`.
        home_region: RegionCode,
    },
    /// An incident.
    Incident {
        /// `type`.
        incident_type: IncidentType,
        /// `priority`, 1 (highest, lights and sirens) to 3.
        priority: u8,
        /// `started_at`.
        started_at: Timestamp,
    },
    /// A hazard area.
    Hazard {
        /// `kind`.
        kind: HazardKind,
        /// `valid_from`.
        valid_from: Timestamp,
        /// `valid_until`; [`Timestamp::MAX`] when open-ended.
        valid_until: Timestamp,
    },
}

/// One typed property that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("property '{field}' {problem}")]
pub struct AttrError {
    /// The property name.
    pub field: &'static str,
    /// What is wrong, phrased to follow the property name.
    pub problem: String,
}

impl Attrs {
    /// Checks and normalises the typed properties of `collection` inside
    /// `properties`, returning their compact form or every problem found.
    pub fn extract(
        collection: Collection,
        properties: &mut Map<String, Value>,
    ) -> Result<Attrs, Vec<AttrError>> {
        let mut errors = Vec::new();
        let attrs = match collection {
            Collection::Regions | Collection::Municipalities => Some(Attrs::Boundary),
            Collection::Units => {
                let unit_type = vocab::<UnitType>(properties, "type", &mut errors);
                let status = vocab::<UnitStatus>(properties, "status", &mut errors);
                let home_region = region(properties, "home_region", &mut errors);
                match (unit_type, status, home_region) {
                    (Some(unit_type), Some(status), Some(home_region)) => Some(Attrs::Unit {
                        unit_type,
                        status,
                        home_region,
                    }),
                    _ => None,
                }
            }
            Collection::Incidents => {
                let incident_type = vocab::<IncidentType>(properties, "type", &mut errors);
                let priority = priority(properties, &mut errors);
                let started_at = time(properties, "started_at", true, &mut errors);
                match (incident_type, priority, started_at) {
                    (Some(incident_type), Some(priority), Some(Some(started_at))) => {
                        Some(Attrs::Incident {
                            incident_type,
                            priority,
                            started_at,
                        })
                    }
                    _ => None,
                }
            }
            Collection::Hazards => {
                let kind = vocab::<HazardKind>(properties, "kind", &mut errors);
                let valid_from = time(properties, "valid_from", true, &mut errors);
                let valid_until = time(properties, "valid_until", false, &mut errors);
                if let (Some(Some(from)), Some(Some(until))) = (valid_from, valid_until)
                    && until < from
                {
                    errors.push(AttrError {
                        field: "valid_until",
                        problem: "is before valid_from".to_owned(),
                    });
                }
                match (kind, valid_from, valid_until) {
                    (Some(kind), Some(Some(valid_from)), Some(valid_until)) => {
                        Some(Attrs::Hazard {
                            kind,
                            valid_from,
                            valid_until: valid_until.unwrap_or(Timestamp::MAX),
                        })
                    }
                    _ => None,
                }
            }
        };
        match attrs {
            Some(attrs) if errors.is_empty() => Ok(attrs),
            _ => Err(errors),
        }
    }

    /// The canonical text of a typed property, for property filters.
    pub fn text_of(&self, field: &str) -> Option<String> {
        match (self, field) {
            (Attrs::Unit { unit_type, .. }, "type") => Some(unit_type.as_str().to_owned()),
            (Attrs::Unit { status, .. }, "status") => Some(status.as_str().to_owned()),
            (Attrs::Unit { home_region, .. }, "home_region") => Some(home_region.to_string()),
            (Attrs::Incident { incident_type, .. }, "type") => {
                Some(incident_type.as_str().to_owned())
            }
            (Attrs::Incident { priority, .. }, "priority") => Some(priority.to_string()),
            (Attrs::Hazard { kind, .. }, "kind") => Some(kind.as_str().to_owned()),
            _ => None,
        }
    }

    /// The time span the feature is about, for `datetime` queries: the
    /// incident from its start on, the hazard over its validity.
    pub fn valid_time(&self) -> Option<(Timestamp, Timestamp)> {
        match *self {
            Attrs::Incident { started_at, .. } => Some((started_at, Timestamp::MAX)),
            Attrs::Hazard {
                valid_from,
                valid_until,
                ..
            } => Some((valid_from, valid_until)),
            Attrs::Boundary | Attrs::Unit { .. } => None,
        }
    }
}

trait Vocabulary: Sized + Copy {
    fn parse_text(text: &str) -> Option<Self>;
    fn canonical(self) -> &'static str;
    fn expected_values() -> String;
}

macro_rules! impl_vocabulary {
    ($($t:ty),+) => {$(
        impl Vocabulary for $t {
            fn parse_text(text: &str) -> Option<Self> { <$t>::parse(text) }
            fn canonical(self) -> &'static str { self.as_str() }
            fn expected_values() -> String { <$t>::expected() }
        }
    )+};
}
impl_vocabulary!(UnitType, UnitStatus, IncidentType, HazardKind);

fn missing(field: &'static str) -> AttrError {
    AttrError {
        field,
        problem: "is required".to_owned(),
    }
}

fn vocab<V: Vocabulary>(
    properties: &mut Map<String, Value>,
    field: &'static str,
    errors: &mut Vec<AttrError>,
) -> Option<V> {
    let Some(value) = properties.get_mut(field) else {
        errors.push(missing(field));
        return None;
    };
    match value.as_str().and_then(V::parse_text) {
        Some(parsed) => {
            *value = Value::String(parsed.canonical().to_owned());
            Some(parsed)
        }
        None => {
            errors.push(AttrError {
                field,
                problem: format!("is {value}; expected one of {}", V::expected_values()),
            });
            None
        }
    }
}

fn region(
    properties: &mut Map<String, Value>,
    field: &'static str,
    errors: &mut Vec<AttrError>,
) -> Option<RegionCode> {
    let Some(value) = properties.get_mut(field) else {
        errors.push(missing(field));
        return None;
    };
    match value.as_str().and_then(RegionCode::parse) {
        Some(code) => {
            *value = Value::String(code.to_string());
            Some(code)
        }
        None => {
            errors.push(AttrError {
                field,
                problem: format!("is {value}; expected a veiligheidsregio code VR01 to VR25"),
            });
            None
        }
    }
}

fn priority(properties: &mut Map<String, Value>, errors: &mut Vec<AttrError>) -> Option<u8> {
    let Some(value) = properties.get_mut("priority") else {
        errors.push(missing("priority"));
        return None;
    };
    let parsed = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().trim_start_matches(['P', 'p']).parse().ok(),
        _ => None,
    };
    match parsed {
        Some(p @ 1..=3) => {
            *value = Value::from(p);
            u8::try_from(p).ok()
        }
        _ => {
            errors.push(AttrError {
                field: "priority",
                problem: format!("is {value}; expected 1 (highest), 2 or 3"),
            });
            None
        }
    }
}

/// `Some(None)` is an absent optional time; `None` an error.
fn time(
    properties: &mut Map<String, Value>,
    field: &'static str,
    required: bool,
    errors: &mut Vec<AttrError>,
) -> Option<Option<Timestamp>> {
    match properties.get_mut(field) {
        None | Some(Value::Null) if !required => Some(None),
        None | Some(Value::Null) => {
            errors.push(missing(field));
            None
        }
        Some(value) => match value.as_str().and_then(Timestamp::parse_rfc3339) {
            Some(t) => {
                *value = Value::String(t.to_rfc3339());
                Some(Some(t))
            }
            None => {
                errors.push(AttrError {
                    field,
                    problem: format!(
                        "is {value}; expected an RFC 3339 time such as 2021-07-14T21:30:00+02:00"
                    ),
                });
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn unit_spellings_are_normalised() {
        let mut p = props(
            json!({"type": "Fire-Engine", "status": "en route", "home_region": "vr23", "call_sign": "23-4531"}),
        );
        let attrs = Attrs::extract(Collection::Units, &mut p).unwrap();
        assert_eq!(attrs.text_of("status").unwrap(), "en_route");
        assert_eq!(p["type"], "fire_engine");
        assert_eq!(p["home_region"], "VR23");
        assert_eq!(p["call_sign"], "23-4531");
    }

    #[test]
    fn every_bad_unit_field_is_reported() {
        let mut p = props(json!({"type": "tank", "home_region": "VR99"}));
        let errors = Attrs::extract(Collection::Units, &mut p).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["type", "status", "home_region"]);
        assert!(errors[0].to_string().contains("fire_engine, ambulance"));
    }

    #[test]
    fn hazard_validity_must_be_ordered() {
        let mut p = props(
            json!({"kind": "flood", "valid_from": "2021-07-15T00:00:00Z", "valid_until": "2021-07-14T00:00:00Z"}),
        );
        let errors = Attrs::extract(Collection::Hazards, &mut p).unwrap_err();
        assert_eq!(errors[0].field, "valid_until");
    }

    #[test]
    fn incident_priority_accepts_p_prefix() {
        let mut p = props(
            json!({"type": "flood", "priority": "P1", "started_at": "2021-07-14T21:30:00+02:00"}),
        );
        let attrs = Attrs::extract(Collection::Incidents, &mut p).unwrap();
        assert_eq!(p["priority"], 1);
        assert_eq!(p["started_at"], "2021-07-14T19:30:00.000Z");
        assert!(matches!(attrs, Attrs::Incident { priority: 1, .. }));
    }
}
