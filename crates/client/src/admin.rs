//! Admin calls of [`Client`]: membership changes, leadership transfer, snapshots, backups,
//! barriers, leader verification, and the status of one given node.
//!
//! Membership changes describe the state wanted, so they are retried like reads (a retry of
//! a change that already happened finds it in place). A leadership transfer without a named
//! target is not idempotent: it is retried only when the server says it had no effect.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::admin::v1::admin_client::AdminClient;
use proto::admin::v1::alarm_request::AlarmAction;
use proto::admin::v1::backup_chunk::Chunk;
use proto::admin::v1::{
    AddLearnerRequest, AlarmRequest, BackupChunk, BackupRequest, BarrierRequest, DemoteRequest, PromoteRequest,
    RemoveRequest, SnapshotRequest, StatusRequest, TransferLeaderRequest, VerifyLeaderRequest, WriteStagesRequest,
};
pub use proto::admin::v1::{AlarmMember, AlarmResponse, AlarmType, HashKvRequest, HashKvResponse};
pub use proto::admin::v1::{
    BarrierResponse, GossipDrops, GossipLiveness, GossipNode, MembershipChangeResponse, SnapshotResponse,
    StatusResponse, TransferLeaderResponse, VerifyLeaderResponse, WriteStage, WriteStagesResponse,
};
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;

use crate::{Client, ClientError, Kind};

/// The largest backup message decoded: one data chunk (1 MiB) and its framing.
const MAX_BACKUP_MESSAGE_BYTES: usize = 4 << 20;

/// What [`Client::backup_to_file`] saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// The node whose snapshot it is.
    pub node_id: String,
    /// Index of the last log entry the snapshot holds.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Size of the file in bytes.
    pub size: u64,
    /// CRC32 (IEEE) of the file, as sent and as verified.
    pub crc32: u32,
}

fn admin(ch: Channel) -> AdminClient<Channel> {
    AdminClient::new(ch)
}

impl Client {
    /// Adds a node as a learner; returns once the change is committed. A learner with these
    /// addresses already: nothing changes.
    pub async fn add_learner(
        &self,
        id: &str,
        raft_addr: &str,
        grpc_addr: &str,
        timeout: Duration,
    ) -> Result<MembershipChangeResponse, ClientError> {
        let req = AddLearnerRequest {
            id: id.into(),
            raft_addr: raft_addr.into(),
            grpc_addr: grpc_addr.into(),
            if_membership_index: None,
        };
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| {
            let req = req.clone();
            async move { admin(ch).add_learner(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Makes a learner a voter once it has caught up.
    pub async fn promote(&self, id: &str, timeout: Duration) -> Result<MembershipChangeResponse, ClientError> {
        let req = PromoteRequest { id: id.into(), if_membership_index: None };
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| {
            let req = req.clone();
            async move { admin(ch).promote(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Makes a voter a learner (never the last voter).
    pub async fn demote(&self, id: &str, timeout: Duration) -> Result<MembershipChangeResponse, ClientError> {
        let req = DemoteRequest { id: id.into(), if_membership_index: None };
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| {
            let req = req.clone();
            async move { admin(ch).demote(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Takes a node out of the cluster (never the last voter).
    pub async fn remove(&self, id: &str, timeout: Duration) -> Result<MembershipChangeResponse, ClientError> {
        let req = RemoveRequest { id: id.into(), if_membership_index: None };
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| {
            let req = req.clone();
            async move { admin(ch).remove(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Hands leadership to `to`, or to the most caught-up other voter; returns once the new
    /// leader is known.
    pub async fn transfer_leader(
        &self,
        to: Option<&str>,
        timeout: Duration,
    ) -> Result<TransferLeaderResponse, ClientError> {
        let req = TransferLeaderRequest { to: to.unwrap_or_default().into() };
        // Named: idempotent. Unnamed: a second transfer would move leadership again.
        let kind = if to.is_some() { Kind::Read } else { Kind::Write };
        let nf = self.meta();
        self.run(kind, timeout, |ch, t| {
            let req = req.clone();
            async move { admin(ch).transfer_leader(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// Makes the first reachable node take a snapshot; returns its index.
    pub async fn snapshot(&self, timeout: Duration) -> Result<SnapshotResponse, ClientError> {
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| async move {
            admin(ch).snapshot(Self::request(SnapshotRequest {}, t, nf)).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Waits until the first reachable node has applied everything committed before the call.
    pub async fn barrier(&self, timeout: Duration) -> Result<BarrierResponse, ClientError> {
        let nf = self.meta();
        self.run(Kind::Read, timeout, |ch, t| async move {
            admin(ch).barrier(Self::request(BarrierRequest {}, t, nf)).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// Finds the leader (following the leader hints) and has it confirm its leadership with a
    /// quorum.
    pub async fn verify_leader(&self) -> Result<VerifyLeaderResponse, ClientError> {
        let nf = self.meta();
        self.run(Kind::Read, self.options.request_timeout, |ch, t| async move {
            admin(ch).verify_leader(Self::request(VerifyLeaderRequest {}, t, nf)).await.map(tonic::Response::into_inner)
        })
        .await
    }

    /// The alarms active in the cluster, as the first reachable node has applied them.
    pub async fn alarm_list(&self) -> Result<AlarmResponse, ClientError> {
        self.alarm(AlarmAction::Get, None).await
    }

    /// Clears the alarms of `member` (every member for `None`) through the log (etcd's
    /// `alarm disarm`); returns the alarms still active. A member still short of space raises
    /// its alarm again at its next check. Clearing what is not active changes nothing, so it
    /// is retried like a read.
    pub async fn alarm_disarm(&self, member: Option<&str>) -> Result<AlarmResponse, ClientError> {
        self.alarm(AlarmAction::Deactivate, member).await
    }

    async fn alarm(&self, action: AlarmAction, member: Option<&str>) -> Result<AlarmResponse, ClientError> {
        let nf = self.meta();
        let req = AlarmRequest {
            action: action as i32,
            member_id: member.unwrap_or_default().to_string(),
            alarm: AlarmType::None as i32,
            detail: String::new(),
        };
        self.run(Kind::Read, self.options.request_timeout, |ch, t| {
            let req = req.clone();
            async move { admin(ch).alarm(Self::request(req, t, nf)).await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// The status of the node at `addr` exactly (not of any endpoint): one attempt, no
    /// failover.
    pub async fn status_of(&self, addr: &str) -> Result<StatusResponse, ClientError> {
        let timeout = self.options.request_timeout;
        let nf = self.meta().here();
        self.once_at(addr, |mut a| async move { a.status(Self::request(StatusRequest {}, timeout, nf)).await }).await
    }

    /// The hash of the key-value state of the node at `addr` exactly, once it has applied
    /// `min_index` (Admin.HashKV), waiting at most `timeout`. One attempt, no failover.
    pub async fn hash_kv_of(
        &self,
        addr: &str,
        min_index: u64,
        timeout: Duration,
    ) -> Result<HashKvResponse, ClientError> {
        let nf = self.meta().here();
        self.once_at(
            addr,
            |mut a| async move { a.hash_kv(Self::request(HashKvRequest { min_index }, timeout, nf)).await },
        )
        .await
    }

    /// The per-stage timing of the writes proposed on the node at `addr` exactly (ask the
    /// leader), since it started or since the last reset; with `reset`, a new period starts
    /// after this answer. One attempt, no failover.
    pub async fn write_stages_of(&self, addr: &str, reset: bool) -> Result<WriteStagesResponse, ClientError> {
        let timeout = self.options.request_timeout;
        let nf = self.meta().here();
        self.once_at(addr, |mut a| async move {
            a.write_stages(Self::request(WriteStagesRequest { reset }, timeout, nf)).await
        })
        .await
    }

    /// One admin call `call` to the node at `addr` exactly: no failover, no retry.
    async fn once_at<T, F, Fut>(&self, addr: &str, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(AdminClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let ch = self
            .connect(addr)
            .await
            .map_err(|e| ClientError::Unreachable { endpoints: addr.to_string(), last: e.to_string() })?;
        call(admin(ch)).await.map(tonic::Response::into_inner).map_err(|s| {
            if s.code() == tonic::Code::Unavailable {
                self.forget(addr);
            }
            ClientError::Status(s)
        })
    }

    /// Streams a backup from the first reachable node into `path`: written to `path.part`,
    /// checked against the announced size and the trailer's CRC32, synced, then renamed to
    /// `path`. Nothing is left at `path` unless the whole file arrived intact.
    pub async fn backup_to_file(&self, path: &Path, timeout: Duration) -> Result<BackupInfo, ClientError> {
        self.backup_to_file_with_progress(path, timeout, &mut |_, _| {}).await
    }

    /// [`Client::backup_to_file`], calling `progress(received, size)` with the bytes
    /// received so far and the size the stream announced: once after its header, then after
    /// each chunk.
    pub async fn backup_to_file_with_progress(
        &self,
        path: &Path,
        timeout: Duration,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<BackupInfo, ClientError> {
        let started = tokio::time::Instant::now();
        let nf = self.meta().here();
        let mut stream = self
            .run(Kind::Read, timeout, |ch, t| async move {
                admin(ch)
                    .max_decoding_message_size(MAX_BACKUP_MESSAGE_BYTES)
                    .backup(Self::request(BackupRequest {}, t, nf))
                    .await
                    .map(tonic::Response::into_inner)
            })
            .await?;
        let part = PathBuf::from(format!("{}.part", path.display()));
        let left = timeout.saturating_sub(started.elapsed());
        let result = match tokio::time::timeout(left, receive(&mut stream, &part, progress)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Backup(format!("the backup did not arrive within {timeout:?}"))),
        };
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| io(format!("renaming {} to {}", part.display(), path.display()), e))?;
        Ok(info)
    }
}

fn io(context: String, source: std::io::Error) -> ClientError {
    ClientError::Io { context, source }
}

/// Receives a backup stream into `part`, checking it as it comes.
async fn receive(
    stream: &mut tonic::Streaming<BackupChunk>,
    part: &Path,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<BackupInfo, ClientError> {
    let first = stream.message().await.map_err(ClientError::Status)?.and_then(|c| c.chunk);
    let Some(Chunk::Header(header)) = first else {
        return Err(ClientError::Backup("the stream did not start with a header".into()));
    };
    let mut file = tokio::fs::File::create(part).await.map_err(|e| io(format!("creating {}", part.display()), e))?;
    let mut crc = crc32fast::Hasher::new();
    let mut written = 0u64;
    progress(0, header.size);
    loop {
        match stream.message().await.map_err(ClientError::Status)?.and_then(|c| c.chunk) {
            Some(Chunk::Data(data)) => {
                written += data.len() as u64;
                if written > header.size {
                    return Err(ClientError::Backup(format!(
                        "the stream carries more than the {} bytes its header announced",
                        header.size
                    )));
                }
                crc.update(&data);
                file.write_all(&data).await.map_err(|e| io(format!("writing {}", part.display()), e))?;
                progress(written, header.size);
            }
            Some(Chunk::Trailer(trailer)) => {
                if written != header.size {
                    return Err(ClientError::Backup(format!(
                        "the stream carried {written} bytes; its header announced {}",
                        header.size
                    )));
                }
                let crc = crc.finalize();
                if crc != trailer.crc32 {
                    return Err(ClientError::Backup(format!(
                        "checksum mismatch: the server sent {:#010x}, the file received has {crc:#010x}",
                        trailer.crc32
                    )));
                }
                file.flush().await.map_err(|e| io(format!("writing {}", part.display()), e))?;
                file.sync_all().await.map_err(|e| io(format!("syncing {}", part.display()), e))?;
                return Ok(BackupInfo {
                    node_id: header.node_id,
                    index: header.index,
                    term: header.term,
                    size: written,
                    crc32: crc,
                });
            }
            Some(Chunk::Header(_)) => return Err(ClientError::Backup("a second header in the stream".into())),
            None => return Err(ClientError::Backup("the stream ended before its trailer".into())),
        }
    }
}
