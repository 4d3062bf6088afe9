//! The five collections (layers) of the picture and what each accepts.

use std::fmt;
use std::str::FromStr;

/// One layer of the picture. The set is closed: every collection has typed
/// properties and a geometry rule, and the store keeps one index per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Collection {
    /// The 25 veiligheidsregio's; `id` is the VR code (`VR01`–`VR25`).
    Regions,
    /// The gemeenten, each with the VR code of its region.
    Municipalities,
    /// Incidents reported by the regional control rooms (points).
    Incidents,
    /// Deployed and available units (points that move).
    Units,
    /// Hazard areas: wildfire fronts, flood areas, plumes (polygons).
    Hazards,
}

/// The kinds of geometry a collection stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryRule {
    /// `Point` only.
    Point,
    /// `Polygon` or `MultiPolygon` (a `GeometryCollection` of polygons is
    /// normalised to a `MultiPolygon`).
    Area,
}

impl Collection {
    /// Every collection, in index order.
    pub const ALL: [Collection; 5] = [
        Collection::Regions,
        Collection::Municipalities,
        Collection::Incidents,
        Collection::Units,
        Collection::Hazards,
    ];

    /// The id used in URLs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Collection::Regions => "regions",
            Collection::Municipalities => "municipalities",
            Collection::Incidents => "incidents",
            Collection::Units => "units",
            Collection::Hazards => "hazards",
        }
    }

    /// A human title for catalogues and the OGC landing page.
    pub fn title(self) -> &'static str {
        match self {
            Collection::Regions => "Veiligheidsregio's (safety regions)",
            Collection::Municipalities => "Gemeenten (municipalities)",
            Collection::Incidents => "Incidents",
            Collection::Units => "Units",
            Collection::Hazards => "Hazard areas",
        }
    }

    /// Position in [`Collection::ALL`]; used to index per-collection arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Which geometries the collection accepts.
    pub fn geometry_rule(self) -> GeometryRule {
        match self {
            Collection::Incidents | Collection::Units => GeometryRule::Point,
            Collection::Regions | Collection::Municipalities | Collection::Hazards => {
                GeometryRule::Area
            }
        }
    }

    /// Whether feeds may write it. Boundaries are reference data loaded at
    /// start; a feed that could move a region border would corrupt every
    /// region attribution.
    pub fn is_feed_writable(self) -> bool {
        matches!(
            self,
            Collection::Incidents | Collection::Units | Collection::Hazards
        )
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text did not name a collection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown collection '{0}': expected one of regions, municipalities, incidents, units, hazards"
)]
pub struct UnknownCollection(pub String);

impl FromStr for Collection {
    type Err = UnknownCollection;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Collection::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCollection(s.to_owned()))
    }
}
