//! An on-disk spool for what an exporter could not hand to its bus: bounded in bytes and in
//! age, kept across restarts, replayed oldest first once the bus is back.
//!
//! Two classes share one byte cap. Alerts are never dropped to make room for flows' sake or
//! before the cap: when a record does not fit, the oldest flow segment goes first (flows are
//! dropped oldest-first), and only when no flow is left is the new record refused. Records older
//! than `max_age` are dropped as expired, both when room is made and when they come up for
//! replay. Everything spooled, replayed, dropped and expired is counted ([`SpoolCounters`]).
//!
//! Layout: `DIR/alerts/` and `DIR/flows/` hold segment files named by a sequence number
//! (`0000000000000001.seg`), appended to until they reach a segment size (a sixteenth of the
//! cap, between 4 KiB and 1 MiB), then sealed. A record is framed as `length (u32 LE) | CRC-32
//! of the body (u32 LE) | body`, the body `time_ns (u64 LE) | id length (u16 LE) | id |
//! payload`. Files are 0600 in a 0700 directory; a lock file keeps a second process (or a
//! second sink configured with the same directory) out. Alerts are synced to disk as they are
//! written; flows are only written (a crash can lose the last flows, never an alert).
//!
//! Replay reads the oldest segment of a class into memory, hands out its records
//! ([`Spool::front`]) and forgets them once the caller says the bus acknowledged them
//! ([`Spool::commit`]); a segment is deleted when its last record is committed. A crash during
//! replay replays that segment again: the export is at-least-once and the receiving side drops
//! repeats by the record's id. A torn or corrupt frame (a crash in the middle of a write, a bad
//! disk) ends its segment's readable part; it is counted and logged, and the rest of the spool
//! is still replayed.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

/// What a record is; decides what is dropped first when the spool is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Alert,
    Flow,
}

impl Class {
    pub const ALL: [Class; 2] = [Class::Alert, Class::Flow];

    /// The directory and metric label.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Class::Alert => "alerts",
            Class::Flow => "flows",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The bounds of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Bytes on disk, all classes together.
    pub max_bytes: u64,
    /// Records older than this are dropped as expired.
    pub max_age: Duration,
}

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unix epoch nanoseconds when it was spooled.
    pub time_ns: u64,
    /// The id the bus deduplicates on.
    pub id: String,
    pub payload: Vec<u8>,
}

/// Why a record was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("spool full ({max_bytes} bytes, no flows left to drop)")]
    Full { max_bytes: u64 },
    #[error("record too large for the spool ({0} bytes)")]
    TooLarge(usize),
    #[error("writing the spool: {0}")]
    Io(#[from] io::Error),
}

/// Running counters, shared with whoever reports them (metrics, `vigil status`).
#[derive(Debug, Default)]
pub struct SpoolCounters {
    spooled: [AtomicU64; 2],
    replayed: [AtomicU64; 2],
    dropped: [AtomicU64; 2],
    expired: [AtomicU64; 2],
    pending: [AtomicU64; 2],
    corrupt: AtomicU64,
    bytes: AtomicU64,
}

/// A snapshot of one class's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStats {
    /// Records written to the spool.
    pub spooled: u64,
    /// Records replayed and acknowledged by the bus.
    pub replayed: u64,
    /// Records dropped because the spool was full (for flows: evicted oldest-first).
    pub dropped: u64,
    /// Records dropped because they were older than `max_age`.
    pub expired: u64,
    /// Records waiting in the spool now.
    pub pending: u64,
}

/// A snapshot of a spool's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolStats {
    pub alerts: ClassStats,
    pub flows: ClassStats,
    /// Corrupt or torn frames found (each ends its segment's readable part).
    pub corrupt: u64,
    /// Bytes on disk now.
    pub bytes: u64,
}

impl SpoolCounters {
    /// The counters now.
    #[must_use]
    pub fn snapshot(&self) -> SpoolStats {
        let class = |i: usize| ClassStats {
            spooled: self.spooled[i].load(Ordering::Relaxed),
            replayed: self.replayed[i].load(Ordering::Relaxed),
            dropped: self.dropped[i].load(Ordering::Relaxed),
            expired: self.expired[i].load(Ordering::Relaxed),
            pending: self.pending[i].load(Ordering::Relaxed),
        };
        SpoolStats {
            alerts: class(Class::Alert.index()),
            flows: class(Class::Flow.index()),
            corrupt: self.corrupt.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl SpoolStats {
    /// One class's counters.
    #[must_use]
    pub const fn class(&self, class: Class) -> &ClassStats {
        match class {
            Class::Alert => &self.alerts,
            Class::Flow => &self.flows,
        }
    }
}

const HEADER: usize = 8;
const BODY_FIXED: usize = 8 + 2;
/// Largest record body: a frame's length must be believable when read back.
const MAX_BODY: usize = 16 << 20;

/// A segment file of one class.
#[derive(Debug)]
struct Segment {
    seq: u64,
    bytes: u64,
    /// Records not yet committed.
    records: u64,
    /// Newest record's time.
    newest_ns: u64,
}

/// The oldest segment, read into memory for replay.
struct Head {
    seq: u64,
    records: VecDeque<Record>,
}

struct Queue {
    class: Class,
    dir: PathBuf,
    /// Oldest first; the last one may be open for appending.
    segments: VecDeque<Segment>,
    /// The segment being appended to: its sequence number and file.
    writer: Option<(u64, File)>,
    head: Option<Head>,
}

/// An on-disk spool (see the module documentation).
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    segment_bytes: u64,
    queues: [Queue; 2],
    next_seq: u64,
    bytes: u64,
    counters: Arc<SpoolCounters>,
    /// The class [`Spool::front`] last handed out, which [`Spool::commit`] applies to.
    fronted: Option<Class>,
    _lock: nix::fcntl::Flock<File>,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and takes its lock. What an earlier run left is kept
    /// and counted as pending.
    ///
    /// # Errors
    /// The directory cannot be made private, is in use by another spool, or a segment cannot be
    /// read.
    pub fn open(dir: &Path, limits: SpoolLimits) -> io::Result<Spool> {
        let named =
            |what: &str, e: io::Error| io::Error::new(e.kind(), format!("spool {}: {what}: {e}", dir.display()));
        crate::private_dir::ensure(dir).map_err(|e| io::Error::other(format!("spool directory: {e}")))?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("lock"))
            .map_err(|e| named("lock file", e))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("spool {} is in use by another process or sink; give each its own directory", dir.display()),
            )
        })?;
        let counters = Arc::new(SpoolCounters::default());
        let mut next_seq = 1;
        let mut bytes = 0;
        let mut queues = Class::ALL.map(|class| Queue {
            class,
            dir: dir.join(class.name()),
            segments: VecDeque::new(),
            writer: None,
            head: None,
        });
        for queue in &mut queues {
            crate::private_dir::ensure(&queue.dir).map_err(|e| io::Error::other(format!("spool directory: {e}")))?;
            let mut found = Vec::new();
            for entry in fs::read_dir(&queue.dir).map_err(|e| named(queue.class.name(), e))? {
                let entry = entry.map_err(|e| named(queue.class.name(), e))?;
                let name = entry.file_name();
                let Some(seq) =
                    name.to_str().and_then(|n| n.strip_suffix(".seg")).and_then(|n| u64::from_str_radix(n, 16).ok())
                else {
                    continue;
                };
                found.push(seq);
            }
            found.sort_unstable();
            for seq in found {
                let path = segment_path(&queue.dir, seq);
                let (records, corrupt) = read_segment(&path)?;
                if corrupt {
                    counters.corrupt.fetch_add(1, Ordering::Relaxed);
                }
                let size = fs::metadata(&path).map_err(|e| named("segment", e))?.len();
                bytes += size;
                next_seq = next_seq.max(seq + 1);
                queue.segments.push_back(Segment {
                    seq,
                    bytes: size,
                    records: records.len() as u64,
                    newest_ns: records.iter().map(|r| r.time_ns).max().unwrap_or(0),
                });
            }
        }
        let segment_bytes = (limits.max_bytes / 16).clamp(4 << 10, 1 << 20);
        let spool = Spool {
            dir: dir.to_owned(),
            limits,
            segment_bytes,
            queues,
            next_seq,
            bytes,
            counters,
            fronted: None,
            _lock: lock,
        };
        spool.publish_gauges();
        Ok(spool)
    }

    /// The counters, to report from another thread.
    #[must_use]
    pub fn counters(&self) -> Arc<SpoolCounters> {
        Arc::clone(&self.counters)
    }

    /// The spool's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether nothing waits for replay.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.pending() == 0)
    }

    /// Records of `class` waiting for replay.
    #[must_use]
    pub fn pending(&self, class: Class) -> u64 {
        self.queues[class.index()].pending()
    }

    /// Appends a record, making room as the module documentation says.
    ///
    /// # Panics
    /// Never: the segment being appended to is always the last of its class.
    ///
    /// # Errors
    /// [`PushError::Full`] when it does not fit (counted as dropped), or the write failed.
    pub fn push(&mut self, class: Class, id: &str, payload: &[u8], now_ns: u64) -> Result<(), PushError> {
        let body = BODY_FIXED + id.len() + payload.len();
        if body > MAX_BODY || id.len() > usize::from(u16::MAX) {
            self.counters.dropped[class.index()].fetch_add(1, Ordering::Relaxed);
            return Err(PushError::TooLarge(body));
        }
        let frame = (HEADER + body) as u64;
        self.expire(now_ns);
        while self.bytes + frame > self.limits.max_bytes && !self.queues[Class::Flow.index()].segments.is_empty() {
            self.drop_oldest(Class::Flow, false);
        }
        if self.bytes + frame > self.limits.max_bytes {
            self.counters.dropped[class.index()].fetch_add(1, Ordering::Relaxed);
            return Err(PushError::Full { max_bytes: self.limits.max_bytes });
        }
        let mut buf = Vec::with_capacity(HEADER + body);
        buf.extend_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&now_ns.to_le_bytes());
        buf.extend_from_slice(&u16::try_from(id.len()).unwrap_or(u16::MAX).to_le_bytes());
        buf.extend_from_slice(id.as_bytes());
        buf.extend_from_slice(payload);
        let crc = crc32fast::hash(&buf[HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());

        let seq = self.writer_for(class)?;
        let queue = &mut self.queues[class.index()];
        let Some((_, file)) = queue.writer.as_mut() else { unreachable!("writer_for opened it") };
        let written = file.write_all(&buf).and_then(|()| if class == Class::Alert { file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // The segment may now end in a torn frame: seal it so nothing is appended after one.
            queue.writer = None;
            self.counters.dropped[class.index()].fetch_add(1, Ordering::Relaxed);
            return Err(PushError::Io(e));
        }
        let segment = queue.segments.back_mut().filter(|s| s.seq == seq).expect("the writer's segment is the last");
        segment.bytes += frame;
        segment.records += 1;
        segment.newest_ns = segment.newest_ns.max(now_ns);
        if segment.bytes >= self.segment_bytes {
            queue.writer = None;
        }
        self.bytes += frame;
        self.counters.spooled[class.index()].fetch_add(1, Ordering::Relaxed);
        self.publish_gauges();
        Ok(())
    }

    /// Up to `max` of the oldest records waiting, alerts before flows, all of one class; expired
    /// ones are dropped on the way. The caller publishes them and then calls
    /// [`Spool::commit`] with how many, from the first, were acknowledged.
    ///
    /// # Panics
    /// Never: a class with records pending has a segment to load.
    ///
    /// # Errors
    /// A segment could not be read.
    pub fn front(&mut self, max: usize, now_ns: u64) -> io::Result<(Class, Vec<Record>)> {
        let cutoff = now_ns.saturating_sub(u64::try_from(self.limits.max_age.as_nanos()).unwrap_or(u64::MAX));
        for class in Class::ALL {
            loop {
                if self.queues[class.index()].pending() == 0 {
                    break;
                }
                self.load_head(class)?;
                let queue = &mut self.queues[class.index()];
                let head = queue.head.as_mut().expect("loaded");
                let mut expired = 0;
                while head.records.front().is_some_and(|r| r.time_ns < cutoff) {
                    head.records.pop_front();
                    expired += 1;
                }
                if expired > 0 {
                    self.counters.expired[class.index()].fetch_add(expired, Ordering::Relaxed);
                    self.forget(class, expired);
                }
                let queue = &self.queues[class.index()];
                if let Some(head) = &queue.head
                    && !head.records.is_empty()
                {
                    self.fronted = Some(class);
                    return Ok((class, head.records.iter().take(max).cloned().collect()));
                }
            }
        }
        self.fronted = None;
        Ok((Class::Alert, Vec::new()))
    }

    /// Forgets the first `n` records [`Spool::front`] handed out: the bus acknowledged them.
    pub fn commit(&mut self, n: usize) {
        let Some(class) = self.fronted else { return };
        let queue = &mut self.queues[class.index()];
        let Some(head) = queue.head.as_mut() else { return };
        let n = n.min(head.records.len());
        head.records.drain(..n);
        self.counters.replayed[class.index()].fetch_add(n as u64, Ordering::Relaxed);
        self.forget(class, n as u64);
    }

    /// Counts `n` records of the head segment of `class` as gone, deleting the segment once it
    /// has none left.
    fn forget(&mut self, class: Class, n: u64) {
        let queue = &mut self.queues[class.index()];
        if let Some(segment) = queue.segments.front_mut() {
            segment.records = segment.records.saturating_sub(n);
        }
        if queue.head.as_ref().is_some_and(|h| h.records.is_empty()) {
            self.drop_oldest(class, true);
        }
        self.publish_gauges();
    }

    /// Deletes the oldest segment of `class`; unless `replayed`, its records count as dropped.
    fn drop_oldest(&mut self, class: Class, replayed: bool) {
        let queue = &mut self.queues[class.index()];
        let Some(segment) = queue.segments.pop_front() else { return };
        if queue.writer.as_ref().is_some_and(|(seq, _)| *seq == segment.seq) {
            queue.writer = None;
        }
        if queue.head.as_ref().is_some_and(|h| h.seq == segment.seq) {
            queue.head = None;
        }
        if !replayed {
            self.counters.dropped[class.index()].fetch_add(segment.records, Ordering::Relaxed);
        }
        let path = segment_path(&queue.dir, segment.seq);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "could not delete a spool segment");
        }
        self.bytes = self.bytes.saturating_sub(segment.bytes);
        self.publish_gauges();
    }

    /// Drops whole segments whose newest record is older than `max_age`.
    fn expire(&mut self, now_ns: u64) {
        let cutoff = now_ns.saturating_sub(u64::try_from(self.limits.max_age.as_nanos()).unwrap_or(u64::MAX));
        for class in Class::ALL {
            while let Some(segment) = self.queues[class.index()].segments.front() {
                let open = self.queues[class.index()].writer.as_ref().is_some_and(|(seq, _)| *seq == segment.seq);
                if open || segment.newest_ns >= cutoff {
                    break;
                }
                let records = segment.records;
                self.drop_oldest(class, true);
                self.counters.expired[class.index()].fetch_add(records, Ordering::Relaxed);
            }
        }
    }

    /// The sequence number of the segment of `class` being appended to, opening a new one when
    /// there is none.
    fn writer_for(&mut self, class: Class) -> io::Result<u64> {
        let queue = &mut self.queues[class.index()];
        if let Some((seq, _)) = &queue.writer {
            return Ok(*seq);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let path = segment_path(&queue.dir, seq);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("creating spool segment {}: {e}", path.display())))?;
        queue.writer = Some((seq, file));
        queue.segments.push_back(Segment { seq, bytes: 0, records: 0, newest_ns: 0 });
        Ok(seq)
    }

    /// Reads the oldest segment of `class` into memory (sealing it if it is being appended to).
    fn load_head(&mut self, class: Class) -> io::Result<()> {
        let queue = &mut self.queues[class.index()];
        let Some(oldest) = queue.segments.front() else { return Ok(()) };
        if queue.head.as_ref().is_some_and(|h| h.seq == oldest.seq) {
            return Ok(());
        }
        let seq = oldest.seq;
        if queue.writer.as_ref().is_some_and(|(s, _)| *s == seq) {
            queue.writer = None;
        }
        // A segment found at open was counted (corrupt or not) then; one written since is read
        // whole, as written.
        let (records, _) = read_segment(&segment_path(&queue.dir, seq))?;
        queue.segments.front_mut().expect("checked above").records = records.len() as u64;
        queue.head = Some(Head { seq, records: records.into() });
        if queue.head.as_ref().is_some_and(|h| h.records.is_empty()) {
            self.drop_oldest(class, true);
        }
        Ok(())
    }

    fn publish_gauges(&self) {
        for queue in &self.queues {
            self.counters.pending[queue.class.index()].store(queue.pending(), Ordering::Relaxed);
        }
        self.counters.bytes.store(self.bytes, Ordering::Relaxed);
    }
}

impl Queue {
    fn pending(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum()
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

/// The records of a segment file, and whether it ended in a torn or corrupt frame (logged).
fn read_segment(path: &Path) -> io::Result<(Vec<Record>, bool)> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(|e| io::Error::new(e.kind(), format!("reading spool segment {}: {e}", path.display())))?;
    let mut records = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let Some((record, used)) = parse_frame(&data[at..]) else {
            warn!(path = %path.display(), offset = at, "spool segment ends in a torn or corrupt record; replaying what precedes it");
            return Ok((records, true));
        };
        records.push(record);
        at += used;
    }
    Ok((records, false))
}

/// One frame from the start of `data`: the record and the bytes it took.
fn parse_frame(data: &[u8]) -> Option<(Record, usize)> {
    let len = usize::try_from(u32::from_le_bytes(data.get(..4)?.try_into().ok()?)).ok()?;
    let crc = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?);
    if !(BODY_FIXED..=MAX_BODY).contains(&len) {
        return None;
    }
    let body = data.get(HEADER..HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let time_ns = u64::from_le_bytes(body[..8].try_into().ok()?);
    let id_len = usize::from(u16::from_le_bytes(body[8..10].try_into().ok()?));
    let id = std::str::from_utf8(body.get(BODY_FIXED..BODY_FIXED + id_len)?).ok()?.to_owned();
    let payload = body[BODY_FIXED + id_len..].to_vec();
    Some((Record { time_ns, id, payload }, HEADER + len))
}

#[cfg(test)]
mod tests;
