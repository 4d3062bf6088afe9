//! The binary form of journal records and snapshot features, and the
//! checksummed frame around each.
//!
//! A frame is `[len: u32 LE][crc32 of payload: u32 LE][payload]`. One
//! accepted batch (or one expiry sweep) is one frame, so a torn write loses a
//! whole batch or nothing: the checksum cannot match half of one.
//!
//! Features are stored in full (id, geometry, properties text, typed
//! attributes, feed, times, expiry, seq), so replay restores exactly what was
//! acknowledged without re-validating or re-deriving anything. Numbers are
//! little-endian; text is `u32` length + UTF-8. The format is versioned by
//! the file magic ([`super::journal::SEGMENT_MAGIC`],
//! [`super::snapshot::SNAPSHOT_MAGIC`]).

use std::sync::Arc;

use beeld_layers::attrs::{HazardKind, IncidentType, RegionCode, UnitStatus, UnitType};
use beeld_layers::geometry::Area;
use beeld_layers::{Attrs, ChangeCause, Collection, Feature, FeatureId, Seq, Shape, Timestamp};
use geo::{BoundingRect, Coord, Geometry, LineString, MultiPolygon, Polygon};

/// Largest frame payload accepted when reading. A length above it is
/// garbage (a torn or overwritten header), not a real record: batches are
/// capped well below this by `--max-body-bytes`.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Bytes of the frame header.
pub const FRAME_HEADER: usize = 8;

/// A payload could not be decoded.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The payload ended early.
    #[error("record truncated")]
    Truncated,
    /// A tag or value is out of range.
    #[error("invalid {0} in record")]
    Invalid(&'static str),
}

/// One change inside a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The feature as it is after the change (its `seq` is the change's).
    Upsert(Collection, Feature),
    /// The feature was removed by the change `seq`.
    Delete(Collection, FeatureId, Seq),
    /// An upsert that a later change in the same batch replaced or removed;
    /// only its seq is kept (the batch's end state is what was acknowledged).
    Superseded(Collection, FeatureId, Seq),
}

impl Change {
    /// The seq of the change.
    pub fn seq(&self) -> Seq {
        match self {
            Change::Upsert(_, f) => f.seq,
            Change::Delete(_, _, seq) | Change::Superseded(_, _, seq) => *seq,
        }
    }
}

/// One journal record: the unit of atomicity.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The changes of one feed batch or one expiry sweep, with consecutive seqs.
    Changes {
        /// When the store applied them.
        at: Timestamp,
        /// Feed write or expiry.
        cause: ChangeCause,
        /// The changes, in seq order.
        changes: Vec<Change>,
    },
    /// Seqs `first..=last` were used for reference data (boundaries), which
    /// is reloaded from its files rather than journaled.
    Reserved {
        /// When.
        at: Timestamp,
        /// First seq used.
        first: Seq,
        /// Last seq used.
        last: Seq,
    },
}

impl Record {
    /// The first and last seq the record covers.
    pub fn seqs(&self) -> Option<(Seq, Seq)> {
        match self {
            Record::Changes { changes, .. } => {
                Some((changes.first()?.seq(), changes.last()?.seq()))
            }
            Record::Reserved { first, last, .. } => Some((*first, *last)),
        }
    }

    /// When the record was written.
    pub fn at(&self) -> Timestamp {
        match self {
            Record::Changes { at, .. } | Record::Reserved { at, .. } => *at,
        }
    }
}

const KIND_CHANGES: u8 = 1;
const KIND_RESERVED: u8 = 2;
const CAUSE_WRITE: u8 = 0;
const CAUSE_EXPIRED: u8 = 1;
const OP_UPSERT: u8 = 0;
const OP_DELETE: u8 = 1;
const OP_SUPERSEDED: u8 = 2;

/// Appends a frame to `out`, its payload written by `body`.
pub fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    body(out);
    let payload = &out[start + FRAME_HEADER..];
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What is at the start of `bytes`.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A whole frame with a matching checksum, and its total length.
    Ok(&'a [u8], usize),
    /// Fewer bytes than the header or the length announce.
    Short,
    /// The length is impossible or the checksum does not match.
    Bad,
}

/// Reads the frame at the start of `bytes`.
pub fn unframe(bytes: &[u8]) -> Framed<'_> {
    let Some(header) = bytes.get(..FRAME_HEADER) else {
        return Framed::Short;
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_FRAME {
        return Framed::Bad;
    }
    let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Framed::Short;
    };
    if crc32fast::hash(payload) != crc {
        return Framed::Bad;
    }
    Framed::Ok(payload, FRAME_HEADER + len)
}

/// What to encode for one change.
#[derive(Debug, Clone, Copy)]
pub enum Encode<'a> {
    /// The feature after an upsert.
    Upsert(&'a Feature),
    /// A removal.
    Delete,
    /// An upsert replaced later in the same batch.
    Superseded,
}

/// Encodes a changes record: per change, the collection, id, seq and what
/// the change left.
pub fn encode_changes<'a>(
    out: &mut Vec<u8>,
    at: Timestamp,
    cause: &ChangeCause,
    changes: impl ExactSizeIterator<Item = (Collection, &'a FeatureId, Seq, Encode<'a>)>,
) {
    frame(out, |out| {
        out.push(KIND_CHANGES);
        put_i64(out, at.0);
        match cause {
            ChangeCause::Write { feed } => {
                out.push(CAUSE_WRITE);
                put_str(out, feed);
            }
            ChangeCause::Expired => out.push(CAUSE_EXPIRED),
        }
        put_u32(out, u32::try_from(changes.len()).unwrap_or(u32::MAX));
        for (collection, id, seq, feature) in changes {
            match feature {
                Encode::Upsert(feature) => {
                    out.push(OP_UPSERT);
                    out.push(collection_tag(collection));
                    encode_feature(out, feature);
                }
                Encode::Delete | Encode::Superseded => {
                    out.push(if matches!(feature, Encode::Delete) {
                        OP_DELETE
                    } else {
                        OP_SUPERSEDED
                    });
                    out.push(collection_tag(collection));
                    put_str(out, id);
                    put_u64(out, seq.0);
                }
            }
        }
    });
}

/// Encodes a reserved-seqs record.
pub fn encode_reserved(out: &mut Vec<u8>, at: Timestamp, first: Seq, last: Seq) {
    frame(out, |out| {
        out.push(KIND_RESERVED);
        put_i64(out, at.0);
        put_u64(out, first.0);
        put_u64(out, last.0);
    });
}

/// Decodes a record payload.
pub fn decode_record(payload: &[u8]) -> Result<Record, Error> {
    let mut r = Reader(payload);
    match r.u8()? {
        KIND_CHANGES => {
            let at = Timestamp(r.i64()?);
            let cause = match r.u8()? {
                CAUSE_WRITE => ChangeCause::Write {
                    feed: r.str()?.into(),
                },
                CAUSE_EXPIRED => ChangeCause::Expired,
                _ => return Err(Error::Invalid("cause")),
            };
            let n = r.u32()? as usize;
            // Each change takes at least 10 bytes; a larger count is garbage.
            if n > payload.len() / 10 {
                return Err(Error::Invalid("change count"));
            }
            let mut changes = Vec::with_capacity(n);
            for _ in 0..n {
                let op = r.u8()?;
                let collection = tag_collection(r.u8()?)?;
                changes.push(match op {
                    OP_UPSERT => Change::Upsert(collection, decode_feature(&mut r)?),
                    OP_DELETE => {
                        let id: FeatureId = r.str()?.into();
                        Change::Delete(collection, id, Seq(r.u64()?))
                    }
                    OP_SUPERSEDED => {
                        let id: FeatureId = r.str()?.into();
                        Change::Superseded(collection, id, Seq(r.u64()?))
                    }
                    _ => return Err(Error::Invalid("op")),
                });
            }
            Ok(Record::Changes { at, cause, changes })
        }
        KIND_RESERVED => Ok(Record::Reserved {
            at: Timestamp(r.i64()?),
            first: Seq(r.u64()?),
            last: Seq(r.u64()?),
        }),
        _ => Err(Error::Invalid("record kind")),
    }
}

/// Encodes one feature with its collection (snapshot entries).
pub fn encode_entry(out: &mut Vec<u8>, collection: Collection, feature: &Feature) {
    out.push(collection_tag(collection));
    encode_feature(out, feature);
}

/// Decodes the entries written by [`encode_entry`] until `payload` ends.
pub fn decode_entries(payload: &[u8]) -> Result<Vec<(Collection, Feature)>, Error> {
    let mut r = Reader(payload);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        let collection = tag_collection(r.u8()?)?;
        out.push((collection, decode_feature(&mut r)?));
    }
    Ok(out)
}

/// Small fixed headers (snapshot metadata): raw little-endian numbers.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(s.as_bytes());
}

fn collection_tag(c: Collection) -> u8 {
    // Five collections: the index always fits.
    u8::try_from(c.index()).unwrap_or(u8::MAX)
}

fn tag_collection(tag: u8) -> Result<Collection, Error> {
    Collection::ALL
        .get(tag as usize)
        .copied()
        .ok_or(Error::Invalid("collection"))
}

fn vocab_tag<T: PartialEq + Copy>(all: &[T], v: T) -> u8 {
    all.iter()
        .position(|x| *x == v)
        .and_then(|i| u8::try_from(i).ok())
        .unwrap_or(u8::MAX)
}

fn tag_vocab<T: Copy>(all: &[T], tag: u8, what: &'static str) -> Result<T, Error> {
    all.get(tag as usize).copied().ok_or(Error::Invalid(what))
}

fn encode_feature(out: &mut Vec<u8>, f: &Feature) {
    put_str(out, &f.id);
    put_u64(out, f.seq.0);
    put_str(out, &f.feed);
    put_i64(out, f.observed_at.0);
    put_i64(out, f.received_at.0);
    match f.expires_at {
        Some(t) => {
            out.push(1);
            put_i64(out, t.0);
        }
        None => out.push(0),
    }
    match f.attrs {
        Attrs::Boundary => out.push(0),
        Attrs::Unit {
            unit_type,
            status,
            home_region,
        } => {
            out.push(1);
            out.push(vocab_tag(UnitType::ALL, unit_type));
            out.push(vocab_tag(UnitStatus::ALL, status));
            out.push(home_region.number());
        }
        Attrs::Incident {
            incident_type,
            priority,
            started_at,
        } => {
            out.push(2);
            out.push(vocab_tag(IncidentType::ALL, incident_type));
            out.push(priority);
            put_i64(out, started_at.0);
        }
        Attrs::Hazard {
            kind,
            valid_from,
            valid_until,
        } => {
            out.push(3);
            out.push(vocab_tag(HazardKind::ALL, kind));
            put_i64(out, valid_from.0);
            put_i64(out, valid_until.0);
        }
    }
    put_str(out, &f.properties);
    match &f.shape {
        Shape::Point(c) => {
            out.push(0);
            put_f64(out, c.x);
            put_f64(out, c.y);
        }
        Shape::Area(area) => {
            out.push(1);
            put_u32(out, u32::try_from(area.n_vertices).unwrap_or(u32::MAX));
            match &area.invalid_reason {
                Some(reason) => {
                    out.push(1);
                    put_str(out, reason);
                }
                None => out.push(0),
            }
            let polygons: Vec<&Polygon<f64>> = match &area.geometry {
                Geometry::Polygon(p) => vec![p],
                Geometry::MultiPolygon(mp) => mp.0.iter().collect(),
                // Areas are polygons or multipolygons by construction.
                _ => Vec::new(),
            };
            out.push(u8::from(matches!(area.geometry, Geometry::MultiPolygon(_))));
            put_u32(out, u32::try_from(polygons.len()).unwrap_or(u32::MAX));
            for polygon in polygons {
                put_u32(
                    out,
                    u32::try_from(polygon.interiors().len() + 1).unwrap_or(u32::MAX),
                );
                for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                    put_u32(out, u32::try_from(ring.0.len()).unwrap_or(u32::MAX));
                    for c in &ring.0 {
                        put_f64(out, c.x);
                        put_f64(out, c.y);
                    }
                }
            }
        }
    }
}

fn decode_feature(r: &mut Reader<'_>) -> Result<Feature, Error> {
    let id: FeatureId = r.str()?.into();
    let seq = Seq(r.u64()?);
    let feed: Arc<str> = r.str()?.into();
    let observed_at = Timestamp(r.i64()?);
    let received_at = Timestamp(r.i64()?);
    let expires_at = match r.u8()? {
        0 => None,
        1 => Some(Timestamp(r.i64()?)),
        _ => return Err(Error::Invalid("expiry")),
    };
    let attrs = match r.u8()? {
        0 => Attrs::Boundary,
        1 => Attrs::Unit {
            unit_type: tag_vocab(UnitType::ALL, r.u8()?, "unit type")?,
            status: tag_vocab(UnitStatus::ALL, r.u8()?, "unit status")?,
            home_region: RegionCode::parse(&format!("VR{:02}", r.u8()?))
                .ok_or(Error::Invalid("home region"))?,
        },
        2 => Attrs::Incident {
            incident_type: tag_vocab(IncidentType::ALL, r.u8()?, "incident type")?,
            priority: r.u8()?,
            started_at: Timestamp(r.i64()?),
        },
        3 => Attrs::Hazard {
            kind: tag_vocab(HazardKind::ALL, r.u8()?, "hazard kind")?,
            valid_from: Timestamp(r.i64()?),
            valid_until: Timestamp(r.i64()?),
        },
        _ => return Err(Error::Invalid("attrs")),
    };
    let properties: Box<str> = r.str()?.into();
    let shape = match r.u8()? {
        0 => Shape::Point(Coord {
            x: r.f64()?,
            y: r.f64()?,
        }),
        1 => {
            let n_vertices = r.u32()? as usize;
            let invalid_reason = match r.u8()? {
                0 => None,
                1 => Some(r.str()?.into()),
                _ => return Err(Error::Invalid("validity")),
            };
            let multi = r.u8()? == 1;
            let n_polygons = r.u32()? as usize;
            let mut polygons = Vec::with_capacity(n_polygons.min(r.0.len() / 4));
            for _ in 0..n_polygons {
                let n_rings = r.u32()? as usize;
                let mut rings = Vec::with_capacity(n_rings.min(r.0.len() / 4));
                for _ in 0..n_rings {
                    let n = r.u32()? as usize;
                    if n > r.0.len() / 16 {
                        return Err(Error::Truncated);
                    }
                    let mut coords = Vec::with_capacity(n);
                    for _ in 0..n {
                        coords.push(Coord {
                            x: r.f64()?,
                            y: r.f64()?,
                        });
                    }
                    rings.push(LineString(coords));
                }
                let mut rings = rings.into_iter();
                let exterior = rings.next().ok_or(Error::Invalid("polygon"))?;
                polygons.push(Polygon::new(exterior, rings.collect()));
            }
            let geometry = if multi {
                Geometry::MultiPolygon(MultiPolygon(polygons))
            } else {
                Geometry::Polygon(polygons.pop().ok_or(Error::Invalid("polygon"))?)
            };
            let bbox = geometry.bounding_rect().ok_or(Error::Invalid("geometry"))?;
            Shape::Area(Box::new(Area {
                geometry,
                bbox,
                invalid_reason,
                n_vertices,
            }))
        }
        _ => return Err(Error::Invalid("shape")),
    };
    Ok(Feature {
        id,
        shape,
        properties,
        attrs,
        feed,
        observed_at,
        received_at,
        expires_at,
        seq,
        // Recomputed by the store's relations when the picture is loaded.
        place: beeld_layers::relate::Place::default(),
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    fn str(&mut self) -> Result<&'a str, Error> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| Error::Invalid("text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(id: &str, seq: u64) -> Feature {
        Feature {
            id: id.into(),
            shape: Shape::Point(Coord { x: 5.1, y: 52.1 }),
            properties: r#"{"status":"available"}"#.into(),
            attrs: Attrs::Unit {
                unit_type: UnitType::Ambulance,
                status: UnitStatus::EnRoute,
                home_region: RegionCode::parse("VR09").unwrap(),
            },
            feed: "vr09".into(),
            observed_at: Timestamp(1_000),
            received_at: Timestamp(2_000),
            expires_at: Some(Timestamp(9_000)),
            seq: Seq(seq),
            place: beeld_layers::relate::Place::default(),
        }
    }

    fn hazard(id: &str, seq: u64) -> Feature {
        let outer = geo::Rect::new(Coord { x: 5.0, y: 51.0 }, Coord { x: 5.2, y: 51.2 });
        let inner = geo::Rect::new(Coord { x: 5.05, y: 51.05 }, Coord { x: 5.1, y: 51.1 });
        let polygon = Polygon::new(
            outer.to_polygon().exterior().clone(),
            vec![inner.to_polygon().exterior().clone()],
        );
        Feature {
            shape: Shape::area(
                Geometry::MultiPolygon(MultiPolygon(vec![polygon.clone(), polygon])),
                20,
            ),
            attrs: Attrs::Hazard {
                kind: HazardKind::Chemical,
                valid_from: Timestamp(5),
                valid_until: Timestamp::MAX,
            },
            expires_at: None,
            ..unit(id, seq)
        }
    }

    #[test]
    fn a_record_round_trips_with_every_feature_field() {
        let (a, b) = (unit("u1", 7), hazard("h1", 8));
        let deleted: FeatureId = "gone".into();
        let mut out = Vec::new();
        encode_changes(
            &mut out,
            Timestamp(2_000),
            &ChangeCause::Write {
                feed: "vr09".into(),
            },
            [
                (Collection::Units, &a.id, a.seq, Encode::Upsert(&a)),
                (Collection::Hazards, &b.id, b.seq, Encode::Upsert(&b)),
                (Collection::Units, &deleted, Seq(9), Encode::Delete),
            ]
            .into_iter(),
        );
        let Framed::Ok(payload, len) = unframe(&out) else {
            panic!("frame")
        };
        assert_eq!(len, out.len());
        let record = decode_record(payload).unwrap();
        assert_eq!(record.seqs(), Some((Seq(7), Seq(9))));
        let Record::Changes { changes, .. } = record else {
            panic!("kind")
        };
        assert_eq!(changes[0], Change::Upsert(Collection::Units, a));
        assert_eq!(changes[1], Change::Upsert(Collection::Hazards, b));
        assert_eq!(
            changes[2],
            Change::Delete(Collection::Units, deleted, Seq(9))
        );
    }

    #[test]
    fn a_flipped_bit_or_a_short_tail_is_detected() {
        let a = unit("u1", 1);
        let mut out = Vec::new();
        encode_changes(
            &mut out,
            Timestamp(0),
            &ChangeCause::Expired,
            [(Collection::Units, &a.id, a.seq, Encode::Upsert(&a))].into_iter(),
        );
        assert_eq!(unframe(&out[..out.len() - 1]), Framed::Short);
        assert_eq!(unframe(&out[..5]), Framed::Short);
        let mut flipped = out.clone();
        flipped[20] ^= 0x10;
        assert_eq!(unframe(&flipped), Framed::Bad);
    }
}
