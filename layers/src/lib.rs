//! The pure core of beeld: the live picture of incidents, units, hazards and
//! administrative regions, its spatial indexes and the log of changes.
//!
//! # Layout
//!
//! * [`Collection`]: the five layers of the picture and what each accepts.
//! * [`geometry`]: GeoJSON geometry → [`Shape`], with the checks a feed
//!   operator needs (RD New sent as degrees, unclosed rings, …).
//! * [`attrs`]: the typed properties of units, incidents and hazards.
//! * [`prepare`]: one raw GeoJSON feature → a validated [`Draft`]; the only
//!   place where ingest input is judged.
//! * [`Store`]: every feature with its R-tree and id map; applies a [`Batch`]
//!   atomically and records each change in the [`ChangeLog`].
//! * [`query`]: bbox / datetime / property filters and id-ordered paging.
//! * [`zorder`]: Z-order cells, so a viewport finds a tick's changes in runs;
//!   [`occupancy`]: a coarse grid of where they are, to wake only the
//!   connections they may concern.
//! * [`relate`]: relations kept current with every change: region and
//!   municipality attribution, units in hazards, counts per region and H3
//!   cell, nearest units, coverage rules, and their event log.
//!
//! Coordinates are WGS84 lon/lat (EPSG:4326, RFC 7946 order) everywhere in
//! this crate. Time is milliseconds since the Unix epoch ([`Timestamp`]) and
//! always arrives from the caller: this crate does no I/O and never reads the
//! clock, so the server drives it and the benchmarks measure it directly.

pub mod attrs;
pub mod change;
pub mod collection;
pub mod feature;
pub mod geometry;
mod index;
pub mod occupancy;
pub mod prepare;
pub mod query;
pub mod relate;
pub mod store;
pub mod time;
pub mod view;
pub mod zorder;

pub use attrs::Attrs;
pub use change::{ChangeCause, ChangeLog, ChangeOp, ChangeRecord, Seq};
pub use collection::Collection;
pub use feature::{Feature, FeatureId, Shape};
pub use prepare::{Draft, FeatureError, FeatureErrorKind, Limits};
pub use query::{Interval, Page, Query};
pub use relate::{Place, Relations};
pub use store::{Applied, Batch, BatchError, Op, Store, StoreConfig};
pub use time::Timestamp;
