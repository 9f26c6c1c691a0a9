//! The Backup stream: a snapshot file sent as a header, data chunks and a CRC32 trailer.
//!
//! The file is read with positioned reads on the blocking pool, one chunk at a time, so the
//! memory used does not grow with the snapshot. A read failure ends the stream with an
//! `INTERNAL` status before the trailer, so the receiver can never take a short file for a
//! whole one.

use std::pin::Pin;

use fsm::SnapshotFile;
use proto::admin::v1::backup_chunk::Chunk;
use proto::admin::v1::{BackupChunk, BackupHeader, BackupTrailer};
use tonic::Status;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

use crate::ServiceError;

/// The size of one data chunk of a backup stream.
pub const BACKUP_CHUNK_BYTES: usize = 1 << 20;

/// The stream type of `Admin.Backup`.
pub(crate) type BackupStream = Pin<Box<dyn Stream<Item = Result<BackupChunk, Status>> + Send + 'static>>;

/// Streams `file`: `header`, the file's bytes in chunks of [`BACKUP_CHUNK_BYTES`], then the
/// trailer with the CRC32 of those bytes. The reading runs in its own task and stops when the
/// receiver goes away.
pub(crate) fn stream_file(header: BackupHeader, file: SnapshotFile) -> BackupStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<BackupChunk, Status>>(2);
    tokio::spawn(async move {
        let chunk = |c: Chunk| Ok(BackupChunk { chunk: Some(c) });
        if tx.send(chunk(Chunk::Header(header))).await.is_err() {
            return;
        }
        let file = std::sync::Arc::new(file);
        let mut crc = crc32fast::Hasher::new();
        let mut offset = 0u64;
        loop {
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || read_chunk(&f, offset)).await;
            let buf = match read {
                Ok(Ok(buf)) => buf,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, offset, "reading the snapshot for a backup failed");
                    let _ =
                        tx.send(Err(ServiceError::Internal(format!("reading the snapshot: {e}").into()).into())).await;
                    return;
                }
                Err(e) => {
                    let _ =
                        tx.send(Err(ServiceError::Internal(format!("reading the snapshot: {e}").into()).into())).await;
                    return;
                }
            };
            if buf.is_empty() {
                let _ = tx.send(chunk(Chunk::Trailer(BackupTrailer { crc32: crc.finalize() }))).await;
                return;
            }
            crc.update(&buf);
            offset += buf.len() as u64;
            if tx.send(chunk(Chunk::Data(buf.into()))).await.is_err() {
                tracing::debug!(offset, "the backup receiver went away");
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Reads up to one chunk at `offset`; an empty buffer means the end of the file.
fn read_chunk(file: &SnapshotFile, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; BACKUP_CHUNK_BYTES];
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use tonic::codegen::tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn streams_header_chunks_and_a_matching_trailer() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(BACKUP_CHUNK_BYTES * 2 + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data)?;
        let header = BackupHeader { node_id: "n1".into(), index: 5, term: 1, size: data.len() as u64 };
        let mut stream = stream_file(header, SnapshotFile::open(&path)?);
        let mut received = Vec::new();
        let mut chunks = 0;
        let mut trailer = None;
        while let Some(msg) = stream.next().await {
            match msg?.chunk {
                Some(Chunk::Header(h)) => assert_eq!(h.size, data.len() as u64),
                Some(Chunk::Data(d)) => {
                    chunks += 1;
                    received.extend_from_slice(&d);
                }
                Some(Chunk::Trailer(t)) => trailer = Some(t.crc32),
                None => return Err("empty chunk".into()),
            }
        }
        assert_eq!(chunks, 3);
        assert_eq!(received, data);
        assert_eq!(trailer, Some(crc32fast::hash(&data)));
        Ok(())
    }
}
