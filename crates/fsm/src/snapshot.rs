//! The snapshot file format, and [`SnapshotFile`], the handle openraft passes around.
//!
//! ```text
//! header   magic "RKVSNAP\0" (8 bytes) | format version u32 LE | meta length u32 LE | meta
//! records  repeated: tag u8 | name length u32 LE | name | body length u32 LE | body
//! end      tag 0 u8 | record count u64 LE | CRC32 (IEEE) u32 LE of every byte before it
//! ```
//!
//! `meta` is the [`codec`]-encoded openraft [`SnapshotMeta`]. A record with tag 1 is a key
//! (name) and its stored value and indexes (body, see `store.rs`), in key order; tag 2 is a
//! remembered request id (name) and the encoded outcome of its write (body), so at-most-once
//! writes survive a snapshot; tag 3, present only while an alarm is active, is the active
//! alarms (name `alarms`, body an encoded `Vec<types::Alarm>`); tag 4, present once
//! authentication was ever configured, is the authentication state (name `auth`, body an
//! encoded `types::auth::AuthState`: users with their password hashes, roles, the token
//! key); tag 5 is one etcd lease (name: its id, i64 BE; body: its granted TTL in seconds, i64
//! LE). The keys attached to a lease are the records that name it (see `store.rs`). Every
//! length is
//! bounded ([`MAX_META_LEN`], [`MAX_KEY_LEN`], [`MAX_RECORD_LEN`]), so a corrupt file can not
//! make a reader allocate without limit; the reader never holds more than one record.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use types::{SnapshotMeta, codec};

use crate::Error;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"RKVSNAP\0";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest encoded metadata accepted.
pub const MAX_META_LEN: u32 = 1 << 20;
/// The largest key accepted in a snapshot (the API allows far less).
pub const MAX_KEY_LEN: u32 = 64 << 10;
/// The largest stored record accepted in a snapshot (the API allows far less).
pub const MAX_RECORD_LEN: u32 = 64 << 20;

const TAG_RECORD: u8 = 1;
const TAG_REQUEST: u8 = 2;
const TAG_ALARMS: u8 = 3;
/// The authentication state.
const TAG_AUTH: u8 = 4;
/// One etcd lease.
const TAG_LEASE: u8 = 5;
const TAG_END: u8 = 0;

/// One record of a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    /// A key and its stored record.
    Kv(Vec<u8>, Vec<u8>),
    /// A request id and the encoded outcome of its write.
    Request(String, Vec<u8>),
    /// The encoded authentication state.
    Auth(Vec<u8>),
    /// The active alarms, encoded.
    Alarms(Vec<u8>),
    /// An etcd lease: its id and granted TTL.
    Lease(i64, i64),
}

/// A snapshot on disk: the data openraft hands between the state machine and the network.
///
/// It wraps an open file and reads it with positioned reads, so clones of the handle never
/// disturb each other, and a file removed while a handle is open stays readable.
#[derive(Debug)]
pub struct SnapshotFile {
    file: File,
    len: u64,
    /// Told how many bytes each sequential read ([`SnapshotFile::reader`]) returned.
    on_read: Option<ReadProgress>,
}

/// A callback told the number of bytes of each read of a snapshot file, for progress
/// reports of long reads (`raftkv restore`); clones share it.
#[derive(Clone)]
pub struct ReadProgress(std::sync::Arc<dyn Fn(u64) + Send + Sync>);

impl ReadProgress {
    /// Calls `f` with the size of every read.
    pub fn new(f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    fn read(&self, n: usize) {
        (self.0)(n as u64);
    }
}

impl std::fmt::Debug for ReadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadProgress")
    }
}

/// A reader that reports the size of every read to a [`ReadProgress`].
struct Counting<R> {
    inner: R,
    on_read: Option<ReadProgress>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = &self.on_read {
            p.read(n);
        }
        Ok(n)
    }
}

impl SnapshotFile {
    /// Opens the snapshot file at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io(format!("opening snapshot {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::io(format!("reading metadata of {}", path.display()), e))?.len();
        Ok(Self { file, len, on_read: None })
    }

    /// Reports the bytes of every sequential read ([`SnapshotFile::reader`]) to `progress`.
    #[must_use]
    pub fn with_progress(mut self, progress: ReadProgress) -> Self {
        self.on_read = Some(progress);
        self
    }

    /// The file's size in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (a valid snapshot never is).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at the end).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    /// A sequential reader from the start of the file.
    pub fn reader(&self) -> io::Result<impl Read + '_> {
        let positioned = PositionedReader { file: self, pos: 0 };
        Ok(BufReader::with_capacity(256 << 10, Counting { inner: positioned, on_read: self.on_read.clone() }))
    }

    /// Another handle on the same file.
    pub fn try_clone(&self) -> Result<Self, Error> {
        let file = self.file.try_clone().map_err(|e| Error::io("cloning a snapshot handle", e))?;
        Ok(Self { file, len: self.len, on_read: self.on_read.clone() })
    }
}

struct PositionedReader<'a> {
    file: &'a SnapshotFile,
    pos: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes a snapshot file record by record, computing the checksum as it goes.
pub(crate) struct SnapshotWriter<W: Write> {
    out: CrcWriter<W>,
    count: u64,
}

impl SnapshotWriter<BufWriter<File>> {
    /// Starts a snapshot in `file`, writing the header.
    pub(crate) fn new(file: File, meta: &SnapshotMeta) -> Result<Self, Error> {
        Self::start(BufWriter::with_capacity(256 << 10, file), meta)
    }
}

impl<W: Write> SnapshotWriter<W> {
    pub(crate) fn start(inner: W, meta: &SnapshotMeta) -> Result<Self, Error> {
        let meta = codec::encode(meta)?;
        let meta_len = u32::try_from(meta.len())
            .ok()
            .filter(|l| *l <= MAX_META_LEN)
            .ok_or(Error::CorruptSnapshot(format!("metadata is {} bytes", meta.len())))?;
        let mut out = CrcWriter { inner, crc: crc32fast::Hasher::new() };
        let w = |out: &mut CrcWriter<W>, b: &[u8]| out.write_all(b).map_err(|e| Error::io("writing snapshot", e));
        w(&mut out, MAGIC)?;
        w(&mut out, &FORMAT_VERSION.to_le_bytes())?;
        w(&mut out, &meta_len.to_le_bytes())?;
        w(&mut out, &meta)?;
        Ok(Self { out, count: 0 })
    }

    /// Appends one key and its stored record.
    pub(crate) fn record(&mut self, key: &[u8], record: &[u8]) -> Result<(), Error> {
        self.item(TAG_RECORD, key, record)
    }

    /// Appends one remembered request id and its encoded outcome.
    pub(crate) fn request(&mut self, id: &str, outcome: &[u8]) -> Result<(), Error> {
        self.item(TAG_REQUEST, id.as_bytes(), outcome)
    }

    /// Appends the encoded authentication state.
    pub(crate) fn auth(&mut self, encoded: &[u8]) -> Result<(), Error> {
        self.item(TAG_AUTH, b"auth", encoded)
    }

    /// Appends one etcd lease.
    pub(crate) fn lease(&mut self, id: i64, ttl: i64) -> Result<(), Error> {
        self.item(TAG_LEASE, &id.to_be_bytes(), &ttl.to_le_bytes())
    }

    /// Appends the active alarms, encoded.
    pub(crate) fn alarms(&mut self, encoded: &[u8]) -> Result<(), Error> {
        self.item(TAG_ALARMS, b"alarms", encoded)
    }

    fn item(&mut self, tag: u8, name: &[u8], body: &[u8]) -> Result<(), Error> {
        let name_len = u32::try_from(name.len()).ok().filter(|l| *l <= MAX_KEY_LEN && *l > 0);
        let body_len = u32::try_from(body.len()).ok().filter(|l| *l <= MAX_RECORD_LEN);
        let (Some(name_len), Some(body_len)) = (name_len, body_len) else {
            return Err(Error::CorruptSnapshot(format!(
                "a name of {} bytes or a body of {} bytes is out of bounds",
                name.len(),
                body.len()
            )));
        };
        let out = &mut self.out;
        (|| {
            out.write_all(&[tag])?;
            out.write_all(&name_len.to_le_bytes())?;
            out.write_all(name)?;
            out.write_all(&body_len.to_le_bytes())?;
            out.write_all(body)
        })()
        .map_err(|e| Error::io("writing snapshot", e))?;
        self.count += 1;
        Ok(())
    }

    /// Writes the end marker and the checksum; returns the inner writer, flushed.
    pub(crate) fn finish(mut self) -> Result<W, Error> {
        let io = |e| Error::io("writing snapshot", e);
        self.out.write_all(&[TAG_END]).map_err(io)?;
        self.out.write_all(&self.count.to_le_bytes()).map_err(io)?;
        let crc = self.out.crc.clone().finalize();
        let mut inner = self.out.inner;
        inner.write_all(&crc.to_le_bytes()).map_err(io)?;
        inner.flush().map_err(io)?;
        Ok(inner)
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a snapshot file, checking every bound, the record count and the checksum.
pub(crate) struct SnapshotReader<R: Read> {
    input: R,
    crc: crc32fast::Hasher,
    count: u64,
    done: bool,
    /// The metadata from the header.
    pub(crate) meta: SnapshotMeta,
}

fn corrupt(what: impl Into<String>) -> Error {
    Error::CorruptSnapshot(what.into())
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and checks the header.
    pub(crate) fn new(mut input: R) -> Result<Self, Error> {
        let mut crc = crc32fast::Hasher::new();
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut crc, &mut magic, "magic")?;
        if &magic != MAGIC {
            return Err(corrupt("not a raftkv snapshot (bad magic bytes)"));
        }
        let version = read_u32(&mut input, &mut crc, "format version")?;
        if version != FORMAT_VERSION {
            return Err(corrupt(format!("format version {version}; this build reads version {FORMAT_VERSION}")));
        }
        let meta_len = read_u32(&mut input, &mut crc, "metadata length")?;
        if meta_len > MAX_META_LEN {
            return Err(corrupt(format!("metadata length {meta_len} exceeds {MAX_META_LEN}")));
        }
        let mut meta = vec![0u8; meta_len as usize];
        read_exact(&mut input, &mut crc, &mut meta, "metadata")?;
        let meta = codec::decode(&meta).map_err(|e| corrupt(format!("metadata: {e}")))?;
        Ok(Self { input, crc, count: 0, done: false, meta })
    }

    /// The next record, or `None` after the end marker, whose count and checksum have then
    /// been verified.
    pub(crate) fn next_record(&mut self) -> Result<Option<Item>, Error> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        read_exact(&mut self.input, &mut self.crc, &mut tag, "record tag")?;
        match tag[0] {
            TAG_RECORD | TAG_REQUEST | TAG_ALARMS | TAG_AUTH | TAG_LEASE => {
                let name_len = read_u32(&mut self.input, &mut self.crc, "key length")?;
                if name_len == 0 || name_len > MAX_KEY_LEN {
                    return Err(corrupt(format!("key length {name_len} is out of bounds")));
                }
                let mut name = vec![0u8; name_len as usize];
                read_exact(&mut self.input, &mut self.crc, &mut name, "key")?;
                let body_len = read_u32(&mut self.input, &mut self.crc, "record length")?;
                if body_len > MAX_RECORD_LEN {
                    return Err(corrupt(format!("record length {body_len} exceeds {MAX_RECORD_LEN}")));
                }
                let mut body = vec![0u8; body_len as usize];
                read_exact(&mut self.input, &mut self.crc, &mut body, "record")?;
                self.count += 1;
                if tag[0] == TAG_RECORD {
                    Ok(Some(Item::Kv(name, body)))
                } else if tag[0] == TAG_AUTH {
                    Ok(Some(Item::Auth(body)))
                } else if tag[0] == TAG_LEASE {
                    let (Ok(id), Ok(ttl)) =
                        (<[u8; 8]>::try_from(name.as_slice()), <[u8; 8]>::try_from(body.as_slice()))
                    else {
                        return Err(corrupt("a lease record is not an 8-byte id and an 8-byte TTL"));
                    };
                    Ok(Some(Item::Lease(i64::from_be_bytes(id), i64::from_le_bytes(ttl))))
                } else if tag[0] == TAG_ALARMS {
                    Ok(Some(Item::Alarms(body)))
                } else {
                    let id = String::from_utf8(name).map_err(|_| corrupt("a request id is not UTF-8"))?;
                    Ok(Some(Item::Request(id, body)))
                }
            }
            TAG_END => {
                let mut count = [0u8; 8];
                read_exact(&mut self.input, &mut self.crc, &mut count, "record count")?;
                let count = u64::from_le_bytes(count);
                if count != self.count {
                    return Err(corrupt(format!("end marker counts {count} records, the file has {}", self.count)));
                }
                let expected = self.crc.clone().finalize();
                let mut stored = [0u8; 4];
                self.input.read_exact(&mut stored).map_err(|_| corrupt("truncated: the checksum is missing"))?;
                let stored = u32::from_le_bytes(stored);
                if stored != expected {
                    return Err(corrupt(format!(
                        "checksum mismatch: stored {stored:#010x}, computed {expected:#010x}"
                    )));
                }
                let mut extra = [0u8; 1];
                match self.input.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(corrupt("bytes after the checksum")),
                    Err(e) => return Err(Error::io("reading snapshot", e)),
                }
                self.done = true;
                Ok(None)
            }
            other => Err(corrupt(format!("unknown record tag {other}"))),
        }
    }
}

fn read_exact<R: Read>(input: &mut R, crc: &mut crc32fast::Hasher, buf: &mut [u8], what: &str) -> Result<(), Error> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(format!("truncated while reading the {what}")),
        _ => Error::io("reading snapshot", e),
    })?;
    crc.update(buf);
    Ok(())
}

fn read_u32<R: Read>(input: &mut R, crc: &mut crc32fast::Hasher, what: &str) -> Result<u32, Error> {
    let mut b = [0u8; 4];
    read_exact(input, crc, &mut b, what)?;
    Ok(u32::from_le_bytes(b))
}

/// Reads the whole snapshot file at `path`, checking every bound, the record count and the
/// checksum, and returns its metadata and number of records. A file that is not a complete,
/// intact snapshot of this format is refused with [`Error::CorruptSnapshot`].
pub fn verify_file(path: &Path) -> Result<(SnapshotMeta, u64), Error> {
    verify_file_with(path, None)
}

/// [`verify_file`], reporting the bytes of every read to `progress`.
pub fn verify_file_with(path: &Path, progress: Option<ReadProgress>) -> Result<(SnapshotMeta, u64), Error> {
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let counting = Counting { inner: file, on_read: progress };
    let mut reader = SnapshotReader::new(BufReader::with_capacity(256 << 10, counting))?;
    while reader.next_record()?.is_some() {}
    Ok((reader.meta, reader.count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(records: &[(&[u8], &[u8])]) -> Result<Vec<u8>, Error> {
        let mut w = SnapshotWriter::start(Vec::new(), &SnapshotMeta::default())?;
        for (k, r) in records {
            w.record(k, r)?;
        }
        w.finish()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Item>, Error> {
        let mut r = SnapshotReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    #[test]
    fn reads_of_a_file_are_counted_to_the_last_byte() -> Result<(), Box<dyn std::error::Error>> {
        let big = vec![7u8; 600 << 10];
        let bytes = sample(&[(b"a", &big), (b"b", b"2")])?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.rkvs");
        std::fs::write(&path, &bytes)?;
        let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let progress = {
            let (counted, calls) = (counted.clone(), calls.clone());
            ReadProgress::new(move |n| {
                counted.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
        };
        let (_, records) = verify_file_with(&path, Some(progress.clone()))?;
        assert_eq!(records, 2);
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), bytes.len() as u64, "verify");
        assert!(calls.load(std::sync::atomic::Ordering::Relaxed) > 1, "a 600 KiB file is read in parts");
        counted.store(0, std::sync::atomic::Ordering::Relaxed);
        let file = SnapshotFile::open(&path)?.with_progress(progress).try_clone()?;
        io::copy(&mut file.reader()?, &mut io::sink())?;
        assert_eq!(counted.load(std::sync::atomic::Ordering::Relaxed), bytes.len() as u64, "reader of a clone");
        Ok(())
    }

    #[test]
    fn round_trip() -> Result<(), Error> {
        let mut w = SnapshotWriter::start(Vec::new(), &SnapshotMeta::default())?;
        w.record(b"a", b"1")?;
        w.record(b"\0\xff", b"")?;
        w.request("req-1", b"outcome")?;
        let bytes = w.finish()?;
        let recs = read_all(&bytes)?;
        assert_eq!(
            recs,
            vec![
                Item::Kv(b"a".to_vec(), b"1".to_vec()),
                Item::Kv(b"\0\xff".to_vec(), vec![]),
                Item::Request("req-1".into(), b"outcome".to_vec())
            ]
        );
        Ok(())
    }

    #[test]
    fn every_flipped_byte_is_refused() -> Result<(), Error> {
        let bytes = sample(&[(b"key", b"value"), (b"k2", b"v2")])?;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(read_all(&bad).is_err(), "flipping byte {i} was not detected");
        }
        Ok(())
    }

    #[test]
    fn truncation_and_trailing_bytes_are_refused() -> Result<(), Error> {
        let bytes = sample(&[(b"key", b"value")])?;
        for len in 0..bytes.len() {
            assert!(read_all(&bytes[..len]).is_err(), "truncation to {len} bytes was not detected");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(read_all(&longer), Err(Error::CorruptSnapshot(_))));
        Ok(())
    }

    #[test]
    fn whole_files_are_verified() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let path = dir.path().join("s.rkvs");
        let bytes = sample(&[(b"key", b"value"), (b"k2", b"v2")])?;
        std::fs::write(&path, &bytes).map_err(|e| Error::io("write", e))?;
        assert_eq!(verify_file(&path)?.1, 2);
        let mut bad = bytes.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).map_err(|e| Error::io("write", e))?;
        assert!(matches!(verify_file(&path), Err(Error::CorruptSnapshot(_))));
        Ok(())
    }

    #[test]
    fn huge_lengths_are_refused_without_allocating() -> Result<(), Error> {
        let mut bytes = sample(&[])?;
        // Replace the end marker with a record claiming a 4 GiB key.
        let end = bytes.len() - 13;
        bytes.truncate(end);
        bytes.push(TAG_RECORD);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        match read_all(&bytes) {
            Err(Error::CorruptSnapshot(msg)) => assert!(msg.contains("key length"), "{msg}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        Ok(())
    }
}
