//! The append-only journal: segment files of checksummed records, written by
//! one dedicated thread with group commit.
//!
//! # Durability policy
//!
//! Writers append their encoded record to an in-memory queue *while they
//! hold the store's write lock*, so journal order is seq order, and receive
//! a ticket. The writer thread takes everything queued, writes it as one
//! *group* frame (`[len][crc32]["GRP1"][record frames…]`), calls `fdatasync`
//! ([`SyncPolicy::Fsync`], the default) and only then publishes the group's
//! last ticket as durable. An HTTP write is acknowledged only once its ticket
//! is durable. While one `fdatasync` runs, the next group collects, so many
//! concurrent writers share one sync (group commit).
//!
//! A group is written only after the previous group was synced. So after a
//! crash only the *last* group can be torn, and a torn group is dropped as a
//! whole (nothing in it was acknowledged). A bad group followed by a good one
//! cannot come from a crash: that is corruption, and the server refuses to
//! start, naming the file and offset.
//!
//! # Files
//!
//! `DATA_DIR/journal/{first_seq:020}.wal`: a 12-byte header
//! ([`SEGMENT_MAGIC`] + version) and group frames. A segment is closed when
//! it passes `segment_bytes`; closed segments never change and are compacted
//! into snapshots ([`super::snapshot`]).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use beeld_layers::store::Applied;
use beeld_layers::{ChangeCause, ChangeOp, Seq, Store, Timestamp};
use tokio::sync::watch;

use super::Error;
use super::codec::{self, Encode, Framed, Record};

/// First bytes of every segment: name and format version 1.
pub const SEGMENT_MAGIC: &[u8; 12] = b"BEELDWAL\x01\x00\x00\x00";

/// Queued bytes above which new writes wait (before taking the store lock)
/// until the writer catches up. Bounds the memory held by records that are
/// not on disk yet while the disk is slow; at 50,000 writes/s of ~200 bytes
/// this is several seconds of ingest, far more than one group.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// First bytes of every group's payload. Record payloads start with their
/// kind (1 or 2), never with this, so a search for later good groups (to
/// tell a torn tail from corruption) cannot mistake a complete record
/// inside a torn group for a group.
pub const GROUP_MAGIC: &[u8; 4] = b"GRP1";

/// Bytes before the first record in a group: frame header + magic.
const GROUP_PREFIX: usize = codec::FRAME_HEADER + GROUP_MAGIC.len();

fn group_prefix() -> Vec<u8> {
    let mut prefix = vec![0; codec::FRAME_HEADER];
    prefix.extend_from_slice(GROUP_MAGIC);
    prefix
}

/// The record frames of a good group frame's payload, if it is a group.
fn group_records(payload: &[u8]) -> Option<&[u8]> {
    payload.strip_prefix(GROUP_MAGIC.as_slice())
}

/// Whether a whole, good group frame starts at the beginning of `bytes`.
fn is_group(bytes: &[u8]) -> bool {
    matches!(codec::unframe(bytes), Framed::Ok(payload, _) if group_records(payload).is_some())
}

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// After `fdatasync` of its group: survives power loss (the default).
    #[default]
    Fsync,
    /// After `write` of its group to the OS: survives a crash of beeld
    /// (kill -9) but not of the machine. For tests and disposable setups.
    None,
}

/// The segment file name for a segment starting at `first`.
pub fn segment_name(first: Seq) -> String {
    format!("{:020}.wal", first.0)
}

/// The journal's segments, in seq order.
pub fn list_segments(dir: &Path) -> Result<Vec<(Seq, PathBuf)>, Error> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            out.push((Seq(first), path));
        }
    }
    out.sort();
    Ok(out)
}

/// How a segment's scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Every byte belongs to a good group.
    Clean,
    /// From `offset` on, the bytes are a torn last group (or a torn header).
    Torn {
        /// Where the good part ends.
        offset: u64,
    },
    /// The caller stopped early.
    Stopped,
}

/// Reads every record of a segment in order, calling `each(record, offset)`,
/// which returns whether to go on (`false` ends the scan as [`ScanEnd::Stopped`]).
///
/// `last` says whether this is the newest segment: only there can a crash
/// leave a torn group. A bad group that is followed by a good one, or a bad
/// group in an older segment, is corruption and an error.
pub fn scan_segment(
    path: &Path,
    bytes: &[u8],
    last: bool,
    mut each: impl FnMut(Record, u64) -> Result<bool, Error>,
) -> Result<ScanEnd, Error> {
    let corrupt = |offset: usize, reason: &str| Error::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    if bytes.len() < SEGMENT_MAGIC.len() || &bytes[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        // A crash right after creating the newest segment can leave a short header.
        if last && SEGMENT_MAGIC.starts_with(bytes) {
            return Ok(ScanEnd::Torn { offset: 0 });
        }
        return Err(corrupt(0, "not a beeld journal segment (bad header)"));
    }
    let mut offset = SEGMENT_MAGIC.len();
    while offset < bytes.len() {
        match codec::unframe(&bytes[offset..]) {
            Framed::Ok(payload, len) => {
                let group = group_records(payload)
                    .ok_or_else(|| corrupt(offset, "frame is not a journal group"))?;
                let mut inner = 0;
                while inner < group.len() {
                    let Framed::Ok(payload, n) = codec::unframe(&group[inner..]) else {
                        return Err(corrupt(offset, "bad record inside a good group"));
                    };
                    let record = codec::decode_record(payload)
                        .map_err(|e| corrupt(offset, &e.to_string()))?;
                    if !each(record, offset as u64)? {
                        return Ok(ScanEnd::Stopped);
                    }
                    inner += n;
                }
                offset += len;
            }
            Framed::Short | Framed::Bad => {
                let good_later = (offset + 1..bytes.len()).any(|at| is_group(&bytes[at..]));
                if !last || good_later {
                    return Err(corrupt(
                        offset,
                        "checksum mismatch or truncated group before later data",
                    ));
                }
                return Ok(ScanEnd::Torn {
                    offset: offset as u64,
                });
            }
        }
    }
    Ok(ScanEnd::Clean)
}

/// Where the writer continues after recovery.
#[derive(Debug, Clone)]
pub struct Tail {
    /// The newest segment, if any (its good length).
    pub segment: Option<(PathBuf, u64)>,
    /// The seq of the last journaled change.
    pub seq: Seq,
}

/// The durable position, as published by the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durable {
    /// Every ticket up to this one is durable.
    pub ticket: u64,
    /// The seq of the last durable change.
    pub seq: Seq,
    /// The writer failed (I/O error); nothing more becomes durable.
    pub failed: bool,
}

/// A position in the journal queue, returned by [`Journal::append_applied`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Debug)]
struct Queue {
    /// Record frames not yet handed to the writer, after 8 bytes reserved
    /// for the group header (filled in by the writer, so no copy is needed).
    buf: Vec<u8>,
    /// Tickets handed out so far.
    ticket: u64,
    /// Seq of the last queued change.
    seq: Seq,
    /// Seq of the first change in `buf`, to name a new segment after it.
    first_in_buf: Option<Seq>,
    /// Set at shutdown: the writer drains the queue and stops.
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    /// `std::sync::Mutex`: held only to append one record's bytes (inside
    /// the store's write lock, which makes journal order equal seq order)
    /// or, by the writer, to swap the buffer out. Never across I/O.
    queue: Mutex<Queue>,
    /// Wakes the writer when records are queued or at shutdown.
    work: Condvar,
    /// The durable position. A `watch` because any number of waiting
    /// writers want the latest value, never a backlog of values.
    durable: watch::Sender<Durable>,
    /// Bytes queued or being written, for admission control.
    pending_bytes: AtomicUsize,
}

/// Handle to the journal writer. Cloning is an `Arc` increment.
#[derive(Debug, Clone)]
pub struct Journal {
    /// Queue, wake-up and durable position, shared with the writer thread.
    shared: Arc<Shared>,
    /// The writer thread, taken by the first `shutdown` to join it. A mutex
    /// only because clones share it; it is touched once.
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// Settings of the writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// `DATA_DIR/journal`.
    pub dir: PathBuf,
    /// When a write is durable.
    pub sync: SyncPolicy,
    /// A segment is closed once it is larger than this.
    pub segment_bytes: u64,
}

/// The writer lost the ability to make writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the journal cannot write; the change is not durable and was not acknowledged")]
pub struct JournalFailed;

impl Journal {
    /// Starts the writer thread after `tail`. `closed` is told the last seq
    /// of every segment that gets closed (for snapshots).
    pub fn start(
        config: WriterConfig,
        tail: &Tail,
        closed: std::sync::mpsc::Sender<Seq>,
    ) -> Result<Journal, Error> {
        std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(&config.dir, e))?;
        // The journal directory's own entry must survive a power loss too.
        if let Some(parent) = config.dir.parent() {
            sync_dir(parent)?;
        }
        let (file, len) = match &tail.segment {
            Some((path, len)) => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                file.set_len(*len).map_err(|e| Error::io(path, e))?;
                if *len == 0 {
                    file.write_all(SEGMENT_MAGIC)
                        .map_err(|e| Error::io(path, e))?;
                }
                file.sync_all().map_err(|e| Error::io(path, e))?;
                let len = (*len).max(SEGMENT_MAGIC.len() as u64);
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len))
                    .map_err(|e| Error::io(path, e))?;
                (file, len)
            }
            None => (
                create_segment(&config.dir, tail.seq.next())?,
                SEGMENT_MAGIC.len() as u64,
            ),
        };
        let (durable, _) = watch::channel(Durable {
            ticket: 0,
            seq: tail.seq,
            failed: false,
        });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                buf: group_prefix(),
                ticket: 0,
                seq: tail.seq,
                first_in_buf: None,
                stop: false,
            }),
            work: Condvar::new(),
            durable,
            pending_bytes: AtomicUsize::new(0),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            config,
            file,
            len,
            last_synced_seq: tail.seq,
            closed,
        };
        let thread = std::thread::Builder::new()
            .name("journal-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| Error::io(Path::new("journal-writer thread"), e))?;
        Ok(Journal {
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Waits (without holding any lock) while too much is queued, so that a
    /// slow disk slows feeds down instead of filling memory. Fails at once
    /// when the writer has failed.
    pub async fn admit(&self) -> Result<(), JournalFailed> {
        let mut rx = self.shared.durable.subscribe();
        loop {
            if rx.borrow_and_update().failed {
                return Err(JournalFailed);
            }
            if self.shared.pending_bytes.load(Ordering::Acquire) < MAX_PENDING_BYTES {
                return Ok(());
            }
            rx.changed().await.map_err(|_| JournalFailed)?;
        }
    }

    /// Queues the changes of an applied batch or expiry sweep. Call it with
    /// the store's write lock still held (`store` is the locked store), so
    /// that records are queued in seq order.
    pub fn append_applied(
        &self,
        store: &Store,
        applied: &Applied,
        cause: &ChangeCause,
        at: Timestamp,
    ) -> Ticket {
        let changes = applied.changes.iter().map(|(collection, id, op, seq)| {
            let what = match op {
                ChangeOp::Delete => Encode::Delete,
                ChangeOp::Upsert => match store.get(*collection, id) {
                    Some(feature) if feature.seq == *seq => Encode::Upsert(feature),
                    _ => Encode::Superseded,
                },
            };
            (*collection, id, *seq, what)
        });
        let first = applied.changes.first().map(|c| c.3);
        self.append(first, applied.seq, |buf| {
            codec::encode_changes(buf, at, cause, changes);
        })
    }

    /// Queues a note that seqs `first..=last` went to reference data.
    pub fn append_reserved(&self, at: Timestamp, first: Seq, last: Seq) -> Ticket {
        self.append(Some(first), last, |buf| {
            codec::encode_reserved(buf, at, first, last);
        })
    }

    fn append(&self, first: Option<Seq>, last: Seq, encode: impl FnOnce(&mut Vec<u8>)) -> Ticket {
        let mut queue = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let before = queue.buf.len();
        encode(&mut queue.buf);
        self.shared
            .pending_bytes
            .fetch_add(queue.buf.len() - before, Ordering::AcqRel);
        queue.ticket += 1;
        queue.seq = queue.seq.max(last);
        if queue.first_in_buf.is_none() {
            queue.first_in_buf = first;
        }
        let ticket = Ticket(queue.ticket);
        drop(queue);
        self.shared.work.notify_one();
        ticket
    }

    /// Waits until `ticket` is durable.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), JournalFailed> {
        let mut rx = self.shared.durable.subscribe();
        let durable = rx
            .wait_for(|d| d.ticket >= ticket.0 || d.failed)
            .await
            .map_err(|_| JournalFailed)?;
        if durable.ticket >= ticket.0 {
            Ok(())
        } else {
            Err(JournalFailed)
        }
    }

    /// The durable position now.
    pub fn durable(&self) -> Durable {
        *self.shared.durable.borrow()
    }

    /// A receiver of durable positions (for consumers that tail the journal).
    pub fn subscribe(&self) -> watch::Receiver<Durable> {
        self.shared.durable.subscribe()
    }

    /// Writes what is queued, stops the writer and waits for it.
    pub fn shutdown(&self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.work.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn create_segment(dir: &Path, first: Seq) -> Result<File, Error> {
    let path = dir.join(segment_name(first));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.write_all(SEGMENT_MAGIC)
        .map_err(|e| Error::io(&path, e))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Makes a directory entry change (new or renamed file) durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// The writer thread. Owned by [`Journal`]; stopped by [`Journal::shutdown`].
struct Writer {
    shared: Arc<Shared>,
    config: WriterConfig,
    file: File,
    len: u64,
    last_synced_seq: Seq,
    closed: std::sync::mpsc::Sender<Seq>,
}

impl Writer {
    fn run(mut self) {
        let mut spare: Vec<u8> = Vec::new();
        loop {
            let (mut group, ticket, seq, first) = {
                let mut queue = self
                    .shared
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                while queue.buf.len() == GROUP_PREFIX && !queue.stop {
                    queue = self
                        .shared
                        .work
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if queue.buf.len() == GROUP_PREFIX {
                    return;
                }
                spare.clear();
                spare.extend_from_slice(&group_prefix());
                let group = std::mem::replace(&mut queue.buf, std::mem::take(&mut spare));
                (group, queue.ticket, queue.seq, queue.first_in_buf.take())
            };
            let n_bytes = group.len() - GROUP_PREFIX;
            match self.write_group(&mut group, first) {
                Ok(()) => {
                    self.last_synced_seq = seq;
                    self.shared
                        .pending_bytes
                        .fetch_sub(n_bytes, Ordering::AcqRel);
                    self.shared.durable.send_replace(Durable {
                        ticket,
                        seq,
                        failed: false,
                    });
                }
                Err(e) => {
                    tracing::error!(error = %e, "journal write failed; refusing further writes until restart");
                    self.shared.durable.send_modify(|d| d.failed = true);
                    return;
                }
            }
            spare = group;
        }
    }

    fn write_group(&mut self, group: &mut [u8], first: Option<Seq>) -> Result<(), Error> {
        if self.len >= self.config.segment_bytes
            && let Some(first) = first
        {
            // The old segment is synced (every group is), so it is complete.
            let closed_seq = self.last_synced_seq;
            self.file = create_segment(&self.config.dir, first)?;
            self.len = SEGMENT_MAGIC.len() as u64;
            let _ = self.closed.send(closed_seq);
        }
        let payload_len = group.len() - codec::FRAME_HEADER;
        let crc = crc32fast::hash(&group[codec::FRAME_HEADER..]);
        group[..4].copy_from_slice(&u32::try_from(payload_len).unwrap_or(u32::MAX).to_le_bytes());
        group[4..8].copy_from_slice(&crc.to_le_bytes());
        let path = || self.config.dir.join("current segment");
        self.file
            .write_all(group)
            .map_err(|e| Error::io(&path(), e))?;
        if self.config.sync == SyncPolicy::Fsync {
            self.file.sync_data().map_err(|e| Error::io(&path(), e))?;
        }
        self.len += group.len() as u64;
        Ok(())
    }
}

/// Reads journal records in order from a position onwards, following the
/// writer across segments: the PostGIS copier's view of the journal.
///
/// It stops at the first incomplete group (the writer may be mid-write) and
/// continues from there on the next call; it never returns a record twice.
#[derive(Debug)]
pub struct Cursor {
    dir: PathBuf,
    /// The segment being read (its first seq, as named).
    segment: Option<Seq>,
    /// Byte offset of the next group in it.
    offset: u64,
    /// Records whose last seq is at or below this are skipped.
    after: Seq,
}

impl Cursor {
    /// A cursor returning records with changes after `after`.
    pub fn new(dir: &Path, after: Seq) -> Cursor {
        Cursor {
            dir: dir.to_path_buf(),
            segment: None,
            offset: 0,
            after,
        }
    }

    /// The last seq returned (or skipped).
    pub fn position(&self) -> Seq {
        self.after
    }

    /// Reads up to about `max_changes` changes' worth of records.
    pub fn read(&mut self, max_changes: usize) -> Result<Vec<Record>, Error> {
        use std::io::{Read as _, Seek as _};
        let segments = list_segments(&self.dir)?;
        if self.segment.is_none() {
            // The newest segment that starts at or before the next seq.
            let start = segments
                .iter()
                .rev()
                .find(|(first, _)| first.0 <= self.after.0 + 1)
                .or(segments.first());
            self.segment = start.map(|(first, _)| *first);
            self.offset = SEGMENT_MAGIC.len() as u64;
        }
        let mut out = Vec::new();
        let mut n_changes = 0;
        while let Some(current) = self.segment {
            let Some(index) = segments.iter().position(|(first, _)| *first == current) else {
                return Err(Error::Corrupt {
                    path: self.dir.join(segment_name(current)),
                    offset: self.offset,
                    reason: "segment removed before it was copied".to_owned(),
                });
            };
            let path = &segments[index].1;
            let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
            file.seek(std::io::SeekFrom::Start(self.offset))
                .map_err(|e| Error::io(path, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| Error::io(path, e))?;
            let mut at = 0;
            while at < bytes.len() && n_changes < max_changes {
                let Framed::Ok(payload, len) = codec::unframe(&bytes[at..]) else {
                    break;
                };
                let Some(group) = group_records(payload) else {
                    return Err(Error::Corrupt {
                        path: path.clone(),
                        offset: self.offset + at as u64,
                        reason: "frame is not a journal group".to_owned(),
                    });
                };
                let mut inner = 0;
                while inner < group.len() {
                    let Framed::Ok(payload, n) = codec::unframe(&group[inner..]) else {
                        return Err(Error::Corrupt {
                            path: path.clone(),
                            offset: self.offset + at as u64,
                            reason: "bad record inside a good group".to_owned(),
                        });
                    };
                    let record = codec::decode_record(payload).map_err(|e| Error::Corrupt {
                        path: path.clone(),
                        offset: self.offset + at as u64,
                        reason: e.to_string(),
                    })?;
                    if let Some((_, last)) = record.seqs()
                        && last > self.after
                    {
                        n_changes += match &record {
                            Record::Changes { changes, .. } => changes.len(),
                            Record::Reserved { .. } => 1,
                        };
                        self.after = last;
                        out.push(record);
                    }
                    inner += n;
                }
                at += len;
            }
            self.offset += at as u64;
            let consumed = at == bytes.len();
            match segments.get(index + 1) {
                // The writer moved on: this segment is complete.
                Some((next, _)) if consumed && n_changes < max_changes => {
                    self.segment = Some(*next);
                    self.offset = SEGMENT_MAGIC.len() as u64;
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(records: &[Seq]) -> Vec<u8> {
        let mut out = group_prefix();
        for seq in records {
            codec::encode_reserved(&mut out, Timestamp(0), *seq, *seq);
        }
        let payload_len = u32::try_from(out.len() - codec::FRAME_HEADER).unwrap();
        let crc = crc32fast::hash(&out[codec::FRAME_HEADER..]);
        out[..4].copy_from_slice(&payload_len.to_le_bytes());
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn scan(bytes: &[u8], last: bool) -> Result<(ScanEnd, Vec<Seq>), Error> {
        let mut seen = Vec::new();
        let end = scan_segment(Path::new("test.wal"), bytes, last, |record, _| {
            seen.push(record.seqs().unwrap().1);
            Ok(true)
        })?;
        Ok((end, seen))
    }

    #[test]
    fn a_torn_last_group_is_dropped_whole_even_if_it_holds_complete_records() {
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend(group(&[Seq(1)]));
        let good = bytes.len() as u64;
        let torn = group(&[Seq(2), Seq(3), Seq(4)]);
        // The first two records are whole; the group is not.
        bytes.extend_from_slice(&torn[..torn.len() - 5]);
        let (end, seen) = scan(&bytes, true).unwrap();
        assert_eq!(end, ScanEnd::Torn { offset: good });
        assert_eq!(seen, [Seq(1)]);
    }

    #[test]
    fn a_bad_group_before_a_good_one_or_in_an_old_segment_is_corruption() {
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend(group(&[Seq(1)]));
        let bad_at = bytes.len();
        bytes.extend(group(&[Seq(2)]));
        bytes.extend(group(&[Seq(3)]));
        bytes[bad_at + 20] ^= 0xFF;
        let error = scan(&bytes, true).unwrap_err().to_string();
        assert!(error.contains(&format!("offset {bad_at}")), "{error}");

        let mut old = SEGMENT_MAGIC.to_vec();
        old.extend(group(&[Seq(1)]));
        old.truncate(old.len() - 1);
        assert!(matches!(scan(&old, false), Err(Error::Corrupt { .. })));
        assert!(matches!(scan(&old, true), Ok((ScanEnd::Torn { .. }, _))));
    }
}
