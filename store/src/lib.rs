//! # herald-store
//!
//! History that survives a restart: a [`Journal`] for the broker that
//! writes every recorded message to a [redb](https://docs.rs/redb)
//! database, and [`open`], which reads it back into a [`Restored`] for
//! `Broker::restored`.
//!
//! The broker hands each message to [`DiskJournal::record`] under its
//! publish lock, so that call only queues it (a bounded channel: if the
//! disk cannot keep up, publishing slows to its pace). A writer thread
//! commits what is queued every `flush_interval`, in one transaction with
//! `Durability::Immediate` (an fsync), and deletes what has aged out of
//! `history.max_age`.
//!
//! What survives what:
//!
//! - **Clean shutdown** ([`DiskJournal::close`], on SIGTERM): everything is
//!   committed and the database is marked clean. The next start keeps the
//!   epoch and goes on numbering after the last position: a client resumes
//!   with nothing lost and no gap.
//! - **Crash** (SIGKILL, power loss): what was committed survives, that is
//!   everything but at most the last `flush_interval` of messages. The
//!   next start sees the database was not closed cleanly, keeps the epoch
//!   and skips [`UNCLEAN_SKIP`] sequences, so the numbers of messages that
//!   were delivered but never written are never reused; a resume from
//!   before the skip gets a gap that covers them.
//!
//! The store keeps messages by age only; the count, byte and subject limits
//! are the broker's, applied again to what is restored.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_broker::{Envelope, Headers, Journal, Message, Payload, Restored, StoredMessage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use thiserror::Error;

/// Messages by sequence: `published_at_millis` (8 bytes, big-endian), the
/// subject's length (2 bytes), the subject, the payload's JSON.
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// `epoch`, `last_sequence`, `floor` (highest sequence deleted), `clean`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Messages the journal queues before publishing waits for the disk.
const QUEUE_CAPACITY: usize = 64 * 1024;
/// Sequences skipped after a crash: more than could have been numbered and
/// not yet written (the queue, and a batch being written).
pub const UNCLEAN_SKIP: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("history database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("history database {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the store is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// The database file.
    pub path: PathBuf,
    /// How often queued messages are committed (and fsynced).
    pub flush_interval: Duration,
    /// Messages older than this are not restored, and are deleted.
    pub max_age: Duration,
}

/// The broker's journal on disk. [`DiskJournal::close`] commits the rest
/// and marks the database clean.
#[derive(Debug)]
pub struct DiskJournal {
    queue: SyncSender<Entry>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
enum Entry {
    Message {
        sequence: u64,
        value: Vec<u8>,
    },
    /// Delete these messages: an operator cleared their subject.
    Forget(Vec<u64>),
    Close,
}

/// Opens (or creates) the database at `options.path`: what it holds comes
/// back as a [`Restored`], and the journal writes what comes next.
pub fn open(options: &StoreOptions) -> Result<(Restored, DiskJournal), StoreError> {
    let path = options.path.clone();
    let database_error = |source: redb::Error| StoreError::Database {
        path: path.clone(),
        source,
    };
    if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
            path: parent.to_owned(),
            source,
        })?;
    }
    let database = Database::create(&path).map_err(|error| database_error(error.into()))?;
    let restored = restore(&database, options).map_err(database_error)?;
    let (queue, entries) = mpsc::sync_channel(QUEUE_CAPACITY);
    let writer = Writer {
        database,
        path: path.clone(),
        options: options.clone(),
        last_sequence: restored.last_sequence,
    };
    let writer = std::thread::Builder::new()
        .name("herald-history-store".into())
        .spawn(move || writer.run(entries))
        .map_err(|source| StoreError::Io { path, source })?;
    Ok((
        restored,
        DiskJournal {
            queue,
            writer: Mutex::new(Some(writer)),
        },
    ))
}

/// Reads the numbering and the retained messages, and marks the database
/// in use (not clean) until the journal is closed.
fn restore(database: &Database, options: &StoreOptions) -> Result<Restored, redb::Error> {
    let cutoff = now_millis().saturating_sub(options.max_age.as_millis() as u64);
    let mut restored = Restored::default();
    let (epoch, clean, floor);
    {
        let read = database.begin_read()?;
        let meta = match read.open_table(META) {
            Ok(meta) => Some(meta),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(error) => return Err(error.into()),
        };
        let get = |key: &str| -> Result<Option<u64>, redb::Error> {
            match &meta {
                Some(meta) => Ok(meta.get(key)?.map(|value| value.value())),
                None => Ok(None),
            }
        };
        epoch = get("epoch")?;
        clean = get("clean")? == Some(1);
        floor = get("floor")?.unwrap_or(0);
        restored.last_sequence = get("last_sequence")?.unwrap_or(0);
        let mut expired_through = floor;
        match read.open_table(MESSAGES) {
            Ok(messages) => {
                for entry in messages.iter()? {
                    let (sequence, value) = entry?;
                    let sequence = sequence.value();
                    restored.last_sequence = restored.last_sequence.max(sequence);
                    match decode(sequence, value.value()) {
                        Some(stored) if stored.published_at_millis >= cutoff => {
                            restored.messages.push(stored)
                        }
                        _ => expired_through = expired_through.max(sequence),
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(error.into()),
        }
        restored.lost_through = expired_through;
    }
    restored.epoch = match epoch {
        Some(epoch) => epoch as u32,
        None => fresh_epoch(),
    };
    if epoch.is_some() && !clean {
        tracing::warn!(
            last_written = restored.last_sequence,
            "history was not closed cleanly (a crash?): messages of the last flush interval may be lost; \
             numbering skips ahead so that none is reused"
        );
        restored.last_sequence += UNCLEAN_SKIP;
        restored.lost_through = restored.last_sequence;
    }
    let write = database.begin_write()?;
    {
        let mut meta = write.open_table(META)?;
        meta.insert("epoch", u64::from(restored.epoch))?;
        meta.insert("last_sequence", restored.last_sequence)?;
        meta.insert("clean", 0)?;
        write.open_table(MESSAGES)?;
    }
    write.commit()?;
    tracing::info!(
        epoch = restored.epoch,
        last_sequence = restored.last_sequence,
        messages = restored.messages.len(),
        "history restored from disk"
    );
    Ok(restored)
}

impl Journal for DiskJournal {
    fn record(&self, message: &Message) {
        let entry = Entry::Message {
            sequence: message.sequence(),
            value: encode(message),
        };
        if self.queue.send(entry).is_err() {
            tracing::error!(
                sequence = message.sequence(),
                "history store is closed: message not written"
            );
        }
    }

    fn forget(&self, sequences: &[u64]) {
        if !sequences.is_empty() && self.queue.send(Entry::Forget(sequences.to_vec())).is_err() {
            tracing::error!("history store is closed: cleared messages not deleted");
        }
    }
}

impl DiskJournal {
    /// Commits everything queued, marks the database clean and stops the
    /// writer. Later messages are not written (and are logged).
    pub fn close(&self) {
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(writer) = writer {
            let _ = self.queue.send(Entry::Close);
            if writer.join().is_err() {
                tracing::error!("history store writer panicked");
            }
        }
    }
}

struct Writer {
    database: Database,
    path: PathBuf,
    options: StoreOptions,
    last_sequence: u64,
}

impl Writer {
    /// Waits for a message, collects for one `flush_interval` (or until
    /// the batch is a queue's worth), commits; until closed.
    fn run(mut self, entries: Receiver<Entry>) {
        let mut batch = Vec::new();
        loop {
            let mut closing = entries.recv().map_or(true, |entry| take(entry, &mut batch));
            let deadline = Instant::now() + self.options.flush_interval;
            while !closing && batch.len() < QUEUE_CAPACITY {
                match entries.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(entry) => closing = take(entry, &mut batch),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => closing = true,
                }
            }
            if let Err(error) = self.commit(&mut batch, closing) {
                tracing::error!(path = %self.path.display(), %error, "cannot write history to disk");
            }
            if closing {
                return;
            }
        }
    }

    /// Writes `batch`, deletes what aged out, and records the numbering
    /// (and `clean` when closing), in one durable transaction.
    fn commit(&mut self, batch: &mut Vec<(u64, Option<Vec<u8>>)>, closing: bool) -> Result<(), redb::Error> {
        if batch.is_empty() && !closing {
            return Ok(());
        }
        let cutoff = now_millis().saturating_sub(self.options.max_age.as_millis() as u64);
        let mut write = self.database.begin_write()?;
        write.set_durability(Durability::Immediate)?;
        {
            let mut messages = write.open_table(MESSAGES)?;
            for (sequence, value) in batch.drain(..) {
                match value {
                    Some(value) => {
                        messages.insert(sequence, value.as_slice())?;
                        self.last_sequence = self.last_sequence.max(sequence);
                    }
                    None => {
                        messages.remove(sequence)?;
                    }
                }
            }
            // Sequence order is publish order: what aged out is at the front.
            let mut expired = Vec::new();
            for entry in messages.iter()? {
                let (sequence, value) = entry?;
                if published_at(value.value()).is_some_and(|at| at >= cutoff) {
                    break;
                }
                expired.push(sequence.value());
            }
            for sequence in &expired {
                messages.remove(sequence)?;
            }
            let mut meta = write.open_table(META)?;
            if let Some(&floor) = expired.last() {
                let previous = meta.get("floor")?.map_or(0, |value| value.value());
                meta.insert("floor", previous.max(floor))?;
            }
            meta.insert("last_sequence", self.last_sequence)?;
            if closing {
                meta.insert("clean", 1)?;
            }
        }
        write.commit()?;
        Ok(())
    }
}

/// Adds a message (or a deletion: `None`) to `batch`; true for the
/// closing entry.
fn take(entry: Entry, batch: &mut Vec<(u64, Option<Vec<u8>>)>) -> bool {
    match entry {
        Entry::Message { sequence, value } => {
            batch.push((sequence, Some(value)));
            false
        }
        Entry::Forget(sequences) => {
            batch.extend(sequences.into_iter().map(|sequence| (sequence, None)));
            false
        }
        Entry::Close => true,
    }
}

/// Bits of a record's flags byte. The byte has its top bit set, which no
/// JSON text starts with: records written before it existed hold the JSON
/// payload right after the subject, and still read.
const FORMAT_FLAGS: u8 = 0x80;
const BINARY_PAYLOAD: u8 = 0x01;
const HAS_REPLY: u8 = 0x02;
const HAS_HEADERS: u8 = 0x04;

/// A record: publish time (8 bytes), subject length (2) and subject, flags
/// (1), then the reply subject (length 2) and the header block (length 4)
/// when the flags say so, then the payload.
fn encode(message: &Message) -> Vec<u8> {
    let subject = message.subject().as_str().as_bytes();
    let payload = message.payload();
    let reply = message.reply().map(|reply| reply.as_str().as_bytes());
    let headers = message.headers().map(|headers| &headers.block()[..]);
    let mut flags = FORMAT_FLAGS;
    if !payload.is_json() {
        flags |= BINARY_PAYLOAD;
    }
    if reply.is_some() {
        flags |= HAS_REPLY;
    }
    if headers.is_some() {
        flags |= HAS_HEADERS;
    }
    let mut value = Vec::with_capacity(11 + subject.len() + payload.len() + message.envelope().len() + 6);
    value.extend_from_slice(&message.published_at_millis().to_be_bytes());
    value.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    value.extend_from_slice(subject);
    value.push(flags);
    if let Some(reply) = reply {
        value.extend_from_slice(&(reply.len() as u16).to_be_bytes());
        value.extend_from_slice(reply);
    }
    if let Some(headers) = headers {
        value.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        value.extend_from_slice(headers);
    }
    value.extend_from_slice(payload.body());
    value
}

fn published_at(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.get(..8)?.try_into().ok()?))
}

fn decode(sequence: u64, value: &[u8]) -> Option<StoredMessage> {
    let published_at_millis = published_at(value)?;
    let length = usize::from(u16::from_be_bytes(value.get(8..10)?.try_into().ok()?));
    let subject = std::str::from_utf8(value.get(10..10 + length)?).ok()?.to_owned();
    let mut rest = value.get(10 + length..)?;
    let mut envelope = Envelope::default();
    let flags = match rest.first() {
        Some(&flags) if flags & FORMAT_FLAGS != 0 => {
            rest = &rest[1..];
            flags
        }
        _ => FORMAT_FLAGS,
    };
    let mut take = |width: usize| -> Option<&[u8]> {
        let length = rest
            .get(..width)?
            .iter()
            .fold(0usize, |length, &byte| (length << 8) | usize::from(byte));
        let taken = rest.get(width..width + length)?;
        rest = &rest[width + length..];
        Some(taken)
    };
    if flags & HAS_REPLY != 0 {
        let reply = std::str::from_utf8(take(2)?).ok()?;
        // Checked when it was published; the limits may have changed since.
        let any_length = herald_broker::SubjectLimits {
            max_length: usize::MAX,
            max_tokens: usize::MAX,
        };
        envelope.reply = Some(herald_broker::Subject::parse(reply, &any_length).ok()?);
    }
    if flags & HAS_HEADERS != 0 {
        envelope.headers = Some(Headers::parse(Bytes::copy_from_slice(take(4)?)).ok()?);
    }
    let body = Bytes::copy_from_slice(rest);
    let payload = if flags & BINARY_PAYLOAD != 0 {
        Payload::from_bytes(body)
    } else {
        Payload::from_json(body).ok()?
    };
    Some(StoredMessage {
        subject,
        sequence,
        published_at_millis,
        payload,
        envelope,
    })
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn fresh_epoch() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use herald_broker::{Position, Subject, SubjectLimits};

    use super::*;

    fn options(path: PathBuf, max_age: Duration) -> StoreOptions {
        StoreOptions {
            path,
            flush_interval: Duration::from_millis(10),
            max_age,
        }
    }

    fn message(epoch: u32, sequence: u64, published_at_millis: u64, data: &str) -> Message {
        let subject = Subject::parse("room.a", &SubjectLimits::default()).unwrap();
        let payload = Payload::from_json(Bytes::from(data.to_owned())).unwrap();
        Message::new(
            subject,
            Position::new(epoch, sequence),
            published_at_millis,
            payload,
        )
    }

    #[test]
    fn a_clean_close_keeps_epoch_numbering_and_messages() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path().join("h.redb"), Duration::from_secs(60));
        let (first, journal) = open(&options).unwrap();
        assert_eq!((first.last_sequence, first.messages.len()), (0, 0));
        let now = now_millis();
        for sequence in 1..=3 {
            journal.record(&message(first.epoch, sequence, now, &sequence.to_string()));
        }
        journal.close();
        drop(journal);

        let (again, journal) = open(&options).unwrap();
        assert_eq!(again.epoch, first.epoch);
        assert_eq!(again.last_sequence, 3);
        assert_eq!(again.lost_through, 0, "nothing may be lost after a clean close");
        let restored: Vec<(u64, &[u8])> = again
            .messages
            .iter()
            .map(|stored| (stored.sequence, &stored.payload.body()[..]))
            .collect();
        assert_eq!(restored, [(1, &b"1"[..]), (2, b"2"), (3, b"3")]);
        assert_eq!(again.messages[0].subject, "room.a");
        journal.close();
    }

    #[test]
    fn forgotten_messages_are_not_restored() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path().join("h.redb"), Duration::from_secs(60));
        let (first, journal) = open(&options).unwrap();
        let now = now_millis();
        for sequence in 1..=4 {
            journal.record(&message(first.epoch, sequence, now, &sequence.to_string()));
        }
        journal.forget(&[2, 3]);
        journal.close();
        let (again, journal) = open(&options).unwrap();
        let sequences: Vec<u64> = again.messages.iter().map(|stored| stored.sequence).collect();
        assert_eq!(sequences, [1, 4]);
        assert_eq!(again.last_sequence, 4, "numbering goes on after what was cleared");
        journal.close();
    }

    #[test]
    fn bytes_headers_and_reply_subjects_survive_a_restart() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path().join("h.redb"), Duration::from_secs(60));
        let (first, journal) = open(&options).unwrap();
        let envelope = Envelope {
            headers: Some(Headers::from_pairs([("Trace", "t1")]).unwrap()),
            reply: Some(Subject::parse("_INBOX.x.1", &SubjectLimits::default()).unwrap()),
        };
        let subject = Subject::parse("raw.a", &SubjectLimits::default()).unwrap();
        let binary = Payload::from_bytes(Bytes::from_static(b"\x00\xff"));
        let position = Position::new(first.epoch, 1);
        let message =
            Message::with_envelope(subject, position, now_millis(), binary.clone(), envelope.clone());
        journal.record(&message);
        journal.record(&self::message(first.epoch, 2, now_millis(), "{}"));
        journal.close();
        drop(journal);

        let (again, journal) = open(&options).unwrap();
        assert_eq!(again.messages.len(), 2);
        assert_eq!(again.messages[0].payload, binary);
        assert!(!again.messages[0].payload.is_json());
        assert_eq!(again.messages[0].envelope, envelope);
        assert!(again.messages[1].payload.is_json());
        assert_eq!(again.messages[1].envelope, Envelope::default());
        journal.close();
    }

    #[test]
    fn records_written_before_the_flags_byte_still_read() {
        let mut old = Vec::new();
        old.extend_from_slice(&5u64.to_be_bytes());
        old.extend_from_slice(&6u16.to_be_bytes());
        old.extend_from_slice(b"room.a");
        old.extend_from_slice(br#"{"n":1}"#);
        let stored = decode(3, &old).expect("a record of the first format");
        assert_eq!((stored.sequence, stored.published_at_millis), (3, 5));
        assert_eq!(&stored.payload.body()[..], br#"{"n":1}"#);
        assert!(stored.payload.is_json());
    }

    #[test]
    fn aged_out_messages_are_not_restored_and_reported_lost() {
        let directory = tempfile::tempdir().unwrap();
        let options = options(directory.path().join("h.redb"), Duration::from_secs(60));
        let (first, journal) = open(&options).unwrap();
        let now = now_millis();
        journal.record(&message(first.epoch, 1, now - 120_000, "1"));
        journal.record(&message(first.epoch, 2, now, "2"));
        journal.close();
        drop(journal);

        let (again, journal) = open(&options).unwrap();
        assert_eq!(again.messages.iter().map(|m| m.sequence).collect::<Vec<_>>(), [2]);
        assert_eq!(again.lost_through, 1);
        journal.close();
    }
}
