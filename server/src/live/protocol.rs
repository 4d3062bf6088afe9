//! The live protocol's wire format (JSON text frames), as documented in
//! `docs/protocol.md`. Client messages are parsed with serde; server messages
//! are written by hand so that feature JSON encoded once per tick can be
//! spliced into every client's message without re-encoding.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;

use beeld_layers::view::RemoveReason;
use beeld_layers::{Collection, Seq};
use serde::Deserialize;

use crate::output::push_json_str;

/// A message from a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Start (or replace) a subscription.
    Subscribe {
        /// Client-chosen subscription id.
        id: String,
        /// Collection ids.
        collections: Vec<String>,
        /// `[minLon, minLat, maxLon, maxLat]`.
        bbox: [f64; 4],
        /// `property = value` filters.
        #[serde(default)]
        filters: BTreeMap<String, FilterValue>,
        /// Resume after this seq.
        #[serde(default)]
        since: Option<u64>,
        /// The epoch of the snapshot `since` came from; another epoch's seq
        /// is not resumed.
        #[serde(default)]
        epoch: Option<String>,
        /// Coordinate decimals (0–15).
        #[serde(default)]
        precision: Option<u8>,
        /// Field-level deltas for changed features.
        #[serde(default)]
        deltas: bool,
        /// Also stream enter/exit/alert events touching the viewport.
        #[serde(default)]
        events: bool,
        /// Resume events after this event number.
        #[serde(default)]
        events_since: Option<u64>,
        /// The `run` of the events message `events_since` came from.
        #[serde(default)]
        events_run: Option<String>,
        /// Also stream H3 counts of units and incidents at this resolution (4-9).
        #[serde(default)]
        aggregates: Option<u8>,
    },
    /// Move a subscription's bbox.
    Viewport {
        /// Subscription id.
        id: String,
        /// The new bbox.
        bbox: [f64; 4],
    },
    /// End a subscription.
    Unsubscribe {
        /// Subscription id.
        id: String,
    },
    /// Replay the recorded picture of a viewport from `from` to `to`.
    Replay {
        /// Replay id, like a subscription id.
        id: String,
        /// Collection ids.
        collections: Vec<String>,
        /// `[minLon, minLat, maxLon, maxLat]`.
        bbox: [f64; 4],
        /// Start, RFC 3339.
        from: String,
        /// End, RFC 3339.
        to: String,
        /// Recorded seconds per second (default 1).
        #[serde(default)]
        speed: Option<f64>,
    },
    /// Pause, resume, stop or re-speed a replay.
    ReplayControl {
        /// Replay id.
        id: String,
        /// `pause`, `resume`, `stop` or `speed`.
        action: String,
        /// The new speed, for `speed`.
        #[serde(default)]
        speed: Option<f64>,
    },
    /// Liveness check; answered with `pong`.
    Ping {
        /// Echoed back.
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
}

/// A filter value: text, number or boolean, compared as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FilterValue {
    /// Text.
    Text(String),
    /// Number.
    Number(serde_json::Number),
    /// Boolean.
    Bool(bool),
}

impl FilterValue {
    /// The value as filter text.
    pub fn into_text(self) -> String {
        match self {
            FilterValue::Text(s) => s,
            FilterValue::Number(n) => n.to_string(),
            FilterValue::Bool(b) => b.to_string(),
        }
    }
}

/// One message to a client, with what SSE needs to frame it.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message `type`, used as the SSE event name.
    pub kind: &'static str,
    /// The seq the client is consistent with after it, used as the SSE id.
    pub seq: Option<Seq>,
    /// The JSON text, but for the `spliced` parts.
    pub json: String,
    /// Shared bytes (runs of a tick's encoded features) that belong at
    /// these offsets of `json`, in order. The WebSocket writer sends them
    /// as they are, so the largest part of a diff is never copied into it.
    pub spliced: Vec<(usize, Bytes)>,
}

impl Outgoing {
    /// A message that is all `json`.
    pub fn new(kind: &'static str, seq: Option<Seq>, json: String) -> Outgoing {
        Outgoing {
            kind,
            seq,
            json,
            spliced: Vec::new(),
        }
    }

    /// The whole text.
    pub fn text(&self) -> Cow<'_, str> {
        if self.spliced.is_empty() {
            return Cow::Borrowed(&self.json);
        }
        let size = self.json.len() + self.spliced.iter().map(|(_, b)| b.len()).sum::<usize>();
        let mut text = String::with_capacity(size);
        let mut at = 0;
        for (offset, bytes) in &self.spliced {
            text.push_str(&self.json[at..*offset]);
            // Cut from `str`s, so always UTF-8.
            text.push_str(&String::from_utf8_lossy(bytes));
            at = *offset;
        }
        text.push_str(&self.json[at..]);
        Cow::Owned(text)
    }

    /// The text as the parts to write, in order, sharing `json` and the
    /// spliced bytes rather than copying them.
    pub fn into_parts(self) -> Vec<Bytes> {
        let json = Bytes::from(self.json);
        let mut parts = Vec::with_capacity(2 * self.spliced.len() + 1);
        let mut at = 0;
        for (offset, bytes) in self.spliced {
            if offset > at {
                parts.push(json.slice(at..offset));
            }
            parts.push(bytes);
            at = offset;
        }
        if at < json.len() {
            parts.push(json.slice(at..));
        }
        parts
    }
}

/// An `error` message. It never closes the connection by itself.
pub fn error(code: &str, message: &str, sub: Option<&str>) -> Outgoing {
    let mut json = String::from("{\"type\":\"error\",\"code\":");
    push_json_str(&mut json, code);
    json.push_str(",\"message\":");
    push_json_str(&mut json, message);
    if let Some(sub) = sub {
        json.push_str(",\"sub\":");
        push_json_str(&mut json, sub);
    }
    json.push('}');
    Outgoing::new("error", None, json)
}

/// A `pong`.
pub fn pong(seq: Seq, id: Option<&serde_json::Value>) -> Outgoing {
    let mut json = format!("{{\"type\":\"pong\",\"seq\":{seq}");
    if let Some(id) = id {
        let _ = write!(json, ",\"id\":{id}");
    }
    json.push('}');
    Outgoing::new("pong", None, json)
}

/// A `heartbeat`: the server is alive and the picture is at `seq`.
pub fn heartbeat(seq: Seq, epoch: &str, at: &str) -> Outgoing {
    let mut json = String::from("{\"type\":\"heartbeat\",\"epoch\":");
    push_json_str(&mut json, epoch);
    let _ = write!(json, ",\"seq\":{seq},\"at\":\"{at}\"}}");
    Outgoing::new("heartbeat", None, json)
}

/// An `unsubscribed` acknowledgement.
pub fn unsubscribed(sub: &str) -> Outgoing {
    let mut json = String::from("{\"type\":\"unsubscribed\",\"sub\":");
    push_json_str(&mut json, sub);
    json.push('}');
    Outgoing::new("unsubscribed", None, json)
}

/// An `events` message: events `(from, to]` for one subscription, or with
/// `resync` when some were dropped from the bounded event log (reload the
/// relations from `/joins`, then continue from `to`).
pub fn events(
    sub: &str,
    run: &str,
    (from, to): (u64, u64),
    resync: bool,
    items: &[&str],
) -> Outgoing {
    let mut json = String::from("{\"type\":\"events\",\"sub\":");
    push_json_str(&mut json, sub);
    json.push_str(",\"run\":");
    push_json_str(&mut json, run);
    let _ = write!(
        json,
        ",\"from_event\":{from},\"event\":{to},\"resync\":{resync},\"events\":["
    );
    json.push_str(&items.join(","));
    json.push_str("]}");
    Outgoing::new("events", None, json)
}

/// An `aggregates` message: H3 cells of the viewport with their counts,
/// all of them (`reset`) or the ones that changed (empty `counts` = none left).
pub fn aggregates(
    sub: &str,
    seq: Seq,
    resolution: u8,
    reset: bool,
    cells: &[(u64, String)],
) -> Outgoing {
    let mut json = String::from("{\"type\":\"aggregates\",\"sub\":");
    push_json_str(&mut json, sub);
    let _ = write!(
        json,
        ",\"seq\":{seq},\"resolution\":{resolution},\"reset\":{reset},\"cells\":["
    );
    for (i, (cell, counts)) in cells.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "{{\"cell\":\"{cell:x}\",\"counts\":{counts}}}");
    }
    json.push_str("]}");
    Outgoing::new("aggregates", None, json)
}

/// Builds a `snapshot` message feature by feature.
#[derive(Debug)]
pub struct SnapshotWriter {
    json: String,
    collections: Vec<Collection>,
    current: Option<Collection>,
    first: bool,
    seq: Seq,
}

impl SnapshotWriter {
    /// Starts a snapshot of `collections` for `sub`, consistent with `seq`.
    /// `epoch` names the history `seq` belongs to (echoed in `subscribe`).
    pub fn new(
        sub: &str,
        epoch: &str,
        seq: Seq,
        resync: bool,
        collections: &[Collection],
    ) -> SnapshotWriter {
        let mut json = String::from("{\"type\":\"snapshot\",\"sub\":");
        push_json_str(&mut json, sub);
        json.push_str(",\"epoch\":");
        push_json_str(&mut json, epoch);
        let _ = write!(
            json,
            ",\"seq\":{seq},\"resync\":{resync},\"collections\":{{"
        );
        SnapshotWriter {
            json,
            collections: collections.to_vec(),
            current: None,
            first: true,
            seq,
        }
    }

    fn open(&mut self, collection: Collection) {
        if self.current == Some(collection) {
            return;
        }
        if self.current.is_some() {
            self.json.push_str("],");
        }
        let _ = write!(self.json, "\"{collection}\":[");
        self.current = Some(collection);
        self.collections.retain(|c| *c != collection);
        self.first = true;
    }

    /// Adds one encoded feature; features must come grouped by collection.
    pub fn feature(&mut self, collection: Collection, feature_json: &str) {
        self.open(collection);
        if !self.first {
            self.json.push(',');
        }
        self.first = false;
        self.json.push_str(feature_json);
    }

    /// Finishes the message; collections without features appear empty.
    pub fn finish(mut self) -> Outgoing {
        for collection in std::mem::take(&mut self.collections) {
            self.open(collection);
        }
        if self.current.is_some() {
            self.json.push(']');
        }
        self.json.push_str("}}");
        Outgoing::new("snapshot", Some(self.seq), self.json)
    }
}

/// One upserted feature's JSON in a [`DiffWriter`]: borrowed from the
/// tick's shared encoding on the fan-out path, so that the bytes are copied
/// once, into the message.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Borrowed (a tick's shared encoding).
    Borrowed(&'a str),
    /// A large run of a tick's shared encodings, spliced into the message
    /// rather than copied (`Outgoing::spliced`); its text beside it.
    Spliced(Bytes, &'a str),
    /// Shared with other connections.
    Shared(Arc<str>),
    /// This message's own.
    Owned(String),
}

impl Piece<'_> {
    fn as_str(&self) -> &str {
        match self {
            Piece::Borrowed(s) | Piece::Spliced(_, s) => s,
            Piece::Shared(s) => s,
            Piece::Owned(s) => s,
        }
    }
}

impl<'a> From<&'a str> for Piece<'a> {
    fn from(s: &'a str) -> Self {
        Piece::Borrowed(s)
    }
}

impl From<Arc<str>> for Piece<'_> {
    fn from(s: Arc<str>) -> Self {
        Piece::Shared(s)
    }
}

impl<'a> From<std::borrow::Cow<'a, str>> for Piece<'a> {
    fn from(s: std::borrow::Cow<'a, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(s) => Piece::Borrowed(s),
            std::borrow::Cow::Owned(s) => Piece::Owned(s),
        }
    }
}

impl From<String> for Piece<'_> {
    fn from(s: String) -> Self {
        Piece::Owned(s)
    }
}

/// Builds a `diff` message. Upserts are kept as references to their
/// encodings and written once, into a buffer sized for the whole message:
/// on the fan-out path every byte is copied once (appending to growing
/// buffers and joining them at the end was a third of the server's CPU
/// in the dense fan-out benchmark).
#[derive(Debug, Default)]
pub struct DiffWriter<'a> {
    upserts: Vec<(Collection, Piece<'a>)>,
    removes: BTreeMap<Collection, String>,
    catch_up: bool,
}

impl<'a> DiffWriter<'a> {
    /// A writer for a catch-up diff: the collapsed form of diffs a client
    /// missed because it fell behind.
    pub fn catch_up() -> DiffWriter<'a> {
        DiffWriter {
            catch_up: true,
            ..DiffWriter::default()
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }

    /// Adds an upserted feature (or field delta), already encoded.
    pub fn upsert(&mut self, collection: Collection, json: impl Into<Piece<'a>>) {
        self.upserts.push((collection, json.into()));
    }

    /// Adds a removal.
    pub fn remove(&mut self, collection: Collection, id: &str, reason: RemoveReason) {
        let buffer = self.removes.entry(collection).or_default();
        if !buffer.is_empty() {
            buffer.push(',');
        }
        buffer.push_str("{\"id\":");
        push_json_str(buffer, id);
        let _ = write!(buffer, ",\"reason\":\"{}\"}}", reason.as_str());
    }

    /// Finishes the message covering `(from, to]`.
    pub fn finish(mut self, sub: &str, from: Seq, to: Seq) -> Outgoing {
        let size: usize = self
            .upserts
            .iter()
            .map(|(_, piece)| match piece {
                Piece::Spliced(..) => 1,
                other => other.as_str().len() + 1,
            })
            .chain(self.removes.values().map(String::len))
            .sum();
        let mut spliced = Vec::new();
        let mut json = String::with_capacity(size + sub.len() + 160);
        json.push_str("{\"type\":\"diff\",\"sub\":");
        push_json_str(&mut json, sub);
        let _ = write!(json, ",\"from_seq\":{from},\"seq\":{to}");
        if self.catch_up {
            json.push_str(",\"catch_up\":true");
        }
        json.push_str(",\"collections\":{");
        // Stable: upserts keep their order within a collection.
        self.upserts.sort_by_key(|(collection, _)| *collection);
        let mut collections: Vec<Collection> = self
            .upserts
            .iter()
            .map(|(c, _)| *c)
            .chain(self.removes.keys().copied())
            .collect();
        collections.sort();
        collections.dedup();
        let mut upserts = self.upserts.iter().peekable();
        for (i, collection) in collections.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            let _ = write!(json, "\"{collection}\":{{\"upsert\":[");
            let mut first = true;
            while let Some((_, piece)) = upserts.next_if(|(c, _)| c == collection) {
                if !first {
                    json.push(',');
                }
                first = false;
                match piece {
                    Piece::Spliced(bytes, _) => spliced.push((json.len(), bytes.clone())),
                    other => json.push_str(other.as_str()),
                }
            }
            json.push_str("],\"remove\":[");
            if let Some(items) = self.removes.get(collection) {
                json.push_str(items);
            }
            json.push_str("]}");
        }
        json.push_str("}}");
        Outgoing {
            kind: "diff",
            seq: Some(to),
            json,
            spliced,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_valid_json() {
        let mut w = SnapshotWriter::new(
            "s\"1",
            "00ff00ff00ff00ff",
            Seq(7),
            true,
            &[Collection::Units, Collection::Hazards],
        );
        w.feature(Collection::Units, "{\"id\":\"a\"}");
        w.feature(Collection::Units, "{\"id\":\"b\"}");
        let v: serde_json::Value = serde_json::from_str(&w.finish().json).unwrap();
        assert_eq!(v["collections"]["units"].as_array().unwrap().len(), 2);
        assert_eq!(v["collections"]["hazards"], serde_json::json!([]));
        assert_eq!(v["resync"], true);

        let mut d = DiffWriter::default();
        d.upsert(Collection::Units, "{\"id\":\"a\"}");
        d.remove(Collection::Hazards, "h", RemoveReason::Expired);
        let v: serde_json::Value =
            serde_json::from_str(&d.finish("s1", Seq(7), Seq(9)).json).unwrap();
        assert_eq!(v["from_seq"], 7);
        assert_eq!(
            v["collections"]["hazards"]["remove"][0]["reason"],
            "expired"
        );
        assert_eq!(v["collections"]["units"]["remove"], serde_json::json!([]));
    }

    #[test]
    fn spliced_runs_read_as_if_copied() {
        let run = "{\"id\":\"b\"},{\"id\":\"c\"}";
        let bytes = Bytes::from_static(run.as_bytes());
        let mut d = DiffWriter::default();
        d.upsert(Collection::Units, "{\"id\":\"a\"}");
        d.upsert(Collection::Units, Piece::Spliced(bytes.clone(), run));
        d.upsert(Collection::Hazards, Piece::Spliced(bytes, run));
        d.upsert(Collection::Units, "{\"id\":\"d\"}");
        let message = d.finish("s1", Seq(7), Seq(9));
        assert_eq!(message.spliced.len(), 2, "not copied");
        let text = message.text().into_owned();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ids = |c: &str| -> Vec<String> {
            v["collections"][c]["upsert"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids("units"), ["a", "b", "c", "d"]);
        assert_eq!(ids("hazards"), ["b", "c"]);
        let written: Vec<u8> = message.into_parts().concat();
        assert_eq!(written, text.as_bytes());
    }

    #[test]
    fn client_messages_parse_and_reject_unknown_fields() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","id":"s1","collections":["units"],"bbox":[5.6,50.7,6.2,51.0],"since":12,"filters":{"status":"available","priority":1}}"#).unwrap();
        assert!(matches!(
            m,
            ClientMessage::Subscribe {
                since: Some(12),
                ..
            }
        ));
        assert!(
            serde_json::from_str::<ClientMessage>(
                r#"{"type":"viewport","id":"s1","bbox":[1,2,3]}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"ping","extra":1}"#).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_text_never_panics_the_message_parser(text in "\\PC{0,200}") {
            let _ = serde_json::from_str::<super::ClientMessage>(&text);
        }
    }
}
