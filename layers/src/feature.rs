//! A feature of the picture: id, shape, properties and provenance.

use std::sync::Arc;

use crate::attrs::Attrs;
use crate::change::Seq;
pub use crate::geometry::Shape;
use crate::relate::Place;
use crate::time::Timestamp;

/// A feature id, unique within its collection. Shared, because the id map,
/// the change log and the expiry queue all refer to the same feature.
pub type FeatureId = Arc<str>;

/// The name of the feed that wrote a feature (`cbs-pdok` for boundaries).
pub type FeedName = Arc<str>;

/// One feature as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Feature {
    /// Stable id within the collection.
    pub id: FeatureId,
    /// Geometry, WGS84 lon/lat.
    pub shape: Shape,
    /// The feed's properties as compact JSON object text, typed properties
    /// normalised and server-set names removed. Kept as text because it is
    /// written out far more often than it is read field by field.
    pub properties: Box<str>,
    /// The typed properties, for filtering without parsing `properties`.
    pub attrs: Attrs,
    /// The feed that wrote the current version.
    pub feed: FeedName,
    /// When the feed observed what it reports (defaults to `received_at`).
    pub observed_at: Timestamp,
    /// When beeld accepted the current version; this is also the time the
    /// feature last changed.
    pub received_at: Timestamp,
    /// When the server removes the feature by itself, if ever.
    pub expires_at: Option<Timestamp>,
    /// The global sequence number of the change that wrote this version.
    pub seq: Seq,
    /// Region and municipality (points) or regions (areas), set by the store.
    pub place: Place,
}
