//! TLS on both ports (docs/security.md): a three-node cluster serving `raftkvctl` with
//! `--cacert --cert --key`, clients refused at the handshake with a clear error, the
//! node-id rule of the Raft port, certificate rotation without a restart, and the refusal
//! to serve plaintext on a non-loopback address without `--insecure`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, ClientOptions, RaftState};
use proc_harness::certs::{Authority, CertFiles};
use proto::raft::v1::RaftMessage;
use proto::raft::v1::raft_client::RaftClient;
use rpc::tls::ClientTlsFiles;
use tests::{BoxError, FAST_TIMING, NodeProc, TestResult, binary, node, raftkvctl, test_options, wait_for};

/// The TLS client settings of the tests: the CA and the client certificate.
fn tls_options(files: &CertFiles) -> ClientOptions {
    ClientOptions {
        tls: Some(ClientTlsFiles { ca: files.ca.clone(), identity: Some(files.client.clone()) }),
        ..test_options()
    }
}

/// Starts node `id` with TLS on both ports (its own certificate) and `extra` flags.
fn tls_node(id: &str, dir: &Path, files: &CertFiles, bootstrap: bool, extra: &[&str]) -> Result<NodeProc, BoxError> {
    Ok(node(id, dir).bootstrap(bootstrap).args(FAST_TIMING).args(files.node_args(id)).args(extra).start()?)
}

/// A TLS cluster of `n1..n{n}` with `--client-cert-auth`, all voters with a leader known.
async fn tls_cluster(n: usize, dir: &Path, files: &CertFiles) -> Result<Vec<NodeProc>, BoxError> {
    let mut nodes = vec![tls_node("n1", dir, files, true, &["--client-cert-auth"])?];
    let first = Client::new([nodes[0].grpc_addr.clone()], tls_options(files))?;
    wait_for("n1 to lead", Duration::from_secs(30), || async {
        first.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
    })
    .await?;
    for i in 2..=n {
        let id = format!("n{i}");
        let node = tls_node(&id, dir, files, false, &["--client-cert-auth"])?;
        first.add_voter(&node.id, &node.raft_addr, &node.grpc_addr, Duration::from_secs(60)).await?;
        nodes.push(node);
    }
    Ok(nodes)
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_raftkvctl_and_refuses_clients_without_the_right_credentials() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let (_, files) = proc_harness::certs::generate(&certs, &["n1", "n2", "n3"], "client")?;
    let nodes = tls_cluster(3, dir.path(), &files).await?;
    let client_args = files.client_args();
    let tls: Vec<&str> = client_args.iter().map(String::as_str).collect();

    // Writes through every node: a follower forwards to the leader's client port over TLS,
    // with its peer certificate (the client port requires one).
    for (i, n) in nodes.iter().enumerate() {
        let key = format!("k{i}");
        let out = raftkvctl(std::slice::from_ref(&n.grpc_addr), &[tls.as_slice(), &["put", &key, "v"]].concat())?;
        assert!(out.status.success(), "put through {}: {}", n.id, stderr(&out));
    }
    // Linearizable reads on every node: followers ask the leader's Raft port for a read
    // index over mutual TLS.
    for n in &nodes {
        for i in 0..nodes.len() {
            let out =
                raftkvctl(std::slice::from_ref(&n.grpc_addr), &[tls.as_slice(), &["get", &format!("k{i}")]].concat())?;
            assert!(out.status.success(), "get through {}: {}", n.id, stderr(&out));
            assert_eq!(stdout(&out), "v");
        }
    }

    let target = [nodes[1].grpc_addr.clone()];
    let quick = ["--command-timeout", "3s"];
    // Plaintext on a TLS port: refused, and raftkvctl says what to do.
    let out = raftkvctl(&target, &[quick.as_slice(), &["get", "k0"]].concat())?;
    assert!(!out.status.success(), "a plaintext client was served: {}", stdout(&out));
    assert!(stderr(&out).contains("give --cacert"), "plaintext client's error: {}", stderr(&out));
    // A CA that did not sign the node's certificate: refused at the handshake.
    let (_, other) = proc_harness::certs::generate(&dir.path().join("other"), &[], "client")?;
    let ca = other.ca.display().to_string();
    let out = raftkvctl(&target, &[quick.as_slice(), &["--cacert", &ca, "get", "k0"]].concat())?;
    assert!(!out.status.success(), "a client of another CA was served");
    assert!(stderr(&out).contains("invalid peer certificate"), "unknown-CA client's error: {}", stderr(&out));
    // The right CA but no client certificate, on a port with --client-cert-auth.
    let ca = files.ca.display().to_string();
    let out = raftkvctl(&target, &[quick.as_slice(), &["--cacert", &ca, "get", "k0"]].concat())?;
    assert!(!out.status.success(), "a client without a certificate was served");
    assert!(stderr(&out).contains("give --cert and --key"), "certificate-less client's error: {}", stderr(&out));
    // A client certificate from another CA.
    let (c, k) = (other.client.0.display().to_string(), other.client.1.display().to_string());
    let out =
        raftkvctl(&target, &[quick.as_slice(), &["--cacert", &ca, "--cert", &c, "--key", &k, "get", "k0"]].concat())?;
    assert!(!out.status.success(), "a client with another CA's certificate was served");
    assert!(
        stderr(&out).contains("is --cert signed by a CA the node trusts"),
        "foreign client's error: {}",
        stderr(&out)
    );

    // Each refusal was at the handshake, logged by the node, which goes on serving.
    let log = nodes[1].log();
    assert!(log.contains("TLS handshake refused"), "no refusal logged:\n{}", nodes[1].log_tail());
    assert!(log.contains("a plaintext client on a TLS port"), "the plaintext refusal is not explained");
    assert!(log.contains("the client presented no certificate and this port requires one"), "no-certificate refusal");
    let out = raftkvctl(&target, &[tls.as_slice(), &["put", "after", "ok"]].concat())?;
    assert!(out.status.success(), "the node stopped serving: {}", stderr(&out));
    Ok(())
}

/// A channel to the Raft port at `raft_addr` (node `server`) with the certificate `files`,
/// and the node id `claimed` that the message sent on it will name.
async fn raft_port_as(
    raft_addr: &str,
    files: &ClientTlsFiles,
    server: &str,
    claimed: &str,
) -> Result<(tonic::transport::Channel, types::NodeId), tonic::Status> {
    let tls = rpc::tls::ClientTls::new(files.clone()).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let security = rpc::channel::Security::Tls { tls: &tls, name: server };
    let channel = rpc::channel::connect(raft_addr, &rpc::channel::ChannelOptions::default(), security)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let id = types::NodeId::new(claimed).map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok((channel, id))
}

/// A raw Raft vote from a connection with `presenting`'s certificate, claiming to be
/// `claimed`, to the Raft port at `raft_addr`.
async fn vote_claiming(
    raft_addr: &str,
    files: &ClientTlsFiles,
    server: &str,
    claimed: &str,
    term: u64,
) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    let (channel, id) = raft_port_as(raft_addr, files, server, claimed).await?;
    let vote = types::Vote::new(term, id);
    let request = openraft::raft::VoteRequest::<types::TypeConfig>::new(vote, None);
    let payload = types::codec::encode(&request).map_err(|e| tonic::Status::internal(e.to_string()))?;
    RaftClient::new(channel).vote(RaftMessage { payload: payload.into() }).await
}

/// One AppendEntries (no entries) on a `StreamAppend` stream to the Raft port at
/// `raft_addr`, over a connection with the certificate `files`, claiming to come from the
/// leader `claimed` of term `term`: the follower's first answer, or the status the stream
/// ended with.
async fn append_claiming(
    raft_addr: &str,
    files: &ClientTlsFiles,
    server: &str,
    claimed: &str,
    term: u64,
) -> Result<Option<RaftMessage>, tonic::Status> {
    let (channel, id) = raft_port_as(raft_addr, files, server, claimed).await?;
    let request = openraft::raft::AppendEntriesRequest::<types::TypeConfig> {
        vote: types::Vote::new_committed(term, id),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    };
    let payload = types::codec::encode(&request).map_err(|e| tonic::Status::internal(e.to_string()))?;
    let messages = futures::stream::iter([RaftMessage { payload: payload.into() }]);
    RaftClient::new(channel).stream_append(messages).await?.into_inner().message().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_certificate_names_another_node_cannot_join_or_vote() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (ca, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n1", "n2", "n3"], "client")?;
    let nodes = tls_cluster(2, dir.path(), &files).await?;
    let client = Client::new([nodes[0].grpc_addr.clone()], tls_options(&files))?;
    let before = client.status().await?;

    // Node "n4" started with n3's certificate (a valid certificate of the cluster's CA):
    // the leader verifies every peer's certificate for the peer's node id, so it never
    // reaches n4, which stays empty, and n4 never becomes a voter.
    let mut impostor_args = files.node_args("n3");
    impostor_args.extend(["--client-cert-auth".to_string()]);
    let impostor = node("n4", dir.path()).args(FAST_TIMING).args(&impostor_args).start()?;
    let added = client.add_voter(&impostor.id, &impostor.raft_addr, &impostor.grpc_addr, Duration::from_secs(5)).await;
    assert!(added.is_err(), "a node with another node's certificate was added: {added:?}");
    let impostor_client = Client::new([impostor.grpc_addr.clone()], tls_options(&files))?;
    let seen = impostor_client.status().await?;
    assert_eq!((seen.applied_index, seen.term), (0, 0), "the impostor received Raft traffic: {seen:?}");
    let log = nodes[0].log();
    assert!(
        log.contains("NotValidForName") || log.contains("not valid for name") || log.contains("CertNotValidForName"),
        "the leader did not log the name mismatch:\n{}",
        nodes[0].log_tail()
    );

    // A vote on the Raft port that claims to come from n1 on a connection with n3's
    // certificate: refused, naming both; the term does not move.
    let n3 = ClientTlsFiles { ca: files.ca.clone(), identity: Some(files.nodes["n3"].clone()) };
    let refused = vote_claiming(&nodes[1].raft_addr, &n3, "n2", "n1", before.term + 10).await;
    let status = refused.err().ok_or("a vote claiming another node's id was accepted")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"n1\"") && status.message().contains("n3"), "{}", status.message());
    // The same vote from a certificate that does name n1 is let through to Raft (which
    // answers it): the check is the certificate's name, nothing else.
    let n1 = ClientTlsFiles { ca: files.ca.clone(), identity: Some(files.nodes["n1"].clone()) };
    let honest = vote_claiming(&nodes[1].raft_addr, &n1, "n2", "n1", 0).await;
    assert!(honest.is_ok(), "a vote from n1's own certificate was refused: {honest:?}");
    // Replication on the pipelined stream is checked the same way: an AppendEntries with a
    // higher term, claiming n1 on n3's connection, ends the stream with PERMISSION_DENIED
    // before it reaches Raft.
    let refused = append_claiming(&nodes[1].raft_addr, &n3, "n2", "n1", before.term + 10).await;
    let status = refused.err().ok_or("an append claiming another node's id was answered")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"n1\"") && status.message().contains("n3"), "{}", status.message());
    // From n1's own certificate, an AppendEntries of an old term reaches Raft, which answers
    // it (refusing the stale leader): the check is the certificate's name, nothing else.
    let honest = append_claiming(&nodes[1].raft_addr, &n1, "n2", "n1", 0).await;
    assert!(matches!(honest, Ok(Some(_))), "an append from n1's own certificate was not answered: {honest:?}");
    let after = client.status().await?;
    assert_eq!(after.term, before.term, "the refused vote or append moved the term");

    // A certificate of another CA is refused at the Raft port's handshake.
    let stranger = Authority::new("stranger CA")?.node("n1")?;
    let (sc, sk) = (dir.path().join("stranger.crt"), dir.path().join("stranger.key"));
    stranger.write(&sc, &sk)?;
    let foreign = ClientTlsFiles { ca: files.ca.clone(), identity: Some((sc, sk)) };
    assert!(vote_claiming(&nodes[1].raft_addr, &foreign, "n2", "n1", 0).await.is_err());
    drop(ca);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_allowed_cn_closes_the_raft_port_to_other_names() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n1", "n2", "n3"], "client")?;
    let n1 = tls_node("n1", dir.path(), &files, true, &["--peer-allowed-cn", "n1,n2"])?;
    // A node with no membership yet refuses no vote (it may be waiting to be added): wait
    // until the bootstrap's membership is applied, or the vote below could be granted.
    let client = Client::new([n1.grpc_addr.clone()], tls_options(&files))?;
    wait_for("n1 to lead", Duration::from_secs(30), || async {
        client.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
    })
    .await?;
    let as_node = |id: &str| ClientTlsFiles { ca: files.ca.clone(), identity: Some(files.nodes[id].clone()) };
    // n2 is allowed: its vote reaches the service, which refuses a non-member's vote.
    let allowed = vote_claiming(&n1.raft_addr, &as_node("n2"), "n1", "n2", 0).await;
    let status = allowed.err().ok_or("a non-member's vote was granted")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    // n3 has a certificate of the same CA but is not in the list: the connection is closed
    // after the handshake, before any request is read.
    let refused = vote_claiming(&n1.raft_addr, &as_node("n3"), "n1", "n3", 0).await;
    let status = refused.err().ok_or("a peer outside --peer-allowed-cn was served")?;
    assert_ne!(status.code(), tonic::Code::FailedPrecondition, "the request reached the service: {status:?}");
    wait_for("the refusal to be logged", Duration::from_secs(10), || async {
        n1.log().contains("TLS client refused after the handshake")
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_and_misnamed_certificates_are_refused_at_the_handshake() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (ca, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n1"], "client")?;
    let n1 = tls_node("n1", dir.path(), &files, true, &["--client-cert-auth"])?;
    let write = |name: &str, issued: proc_harness::certs::Issued| -> Result<(PathBuf, PathBuf), BoxError> {
        let (c, k) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        issued.write(&c, &k)?;
        Ok((c, k))
    };
    let as_args = |p: &Path| p.display().to_string();
    let target = std::slice::from_ref(&n1.grpc_addr);
    let ca_path = files.ca.display().to_string();
    let quick = ["--command-timeout", "3s", "--cacert", &ca_path];
    // An expired client certificate of the right CA.
    let (c, k) = write("expired-client", ca.issue_expired("client", &[], false)?)?;
    let (c, k) = (as_args(&c), as_args(&k));
    let out = raftkvctl(target, &[quick.as_slice(), &["--cert", &c, "--key", &k, "get", "x"]].concat())?;
    assert!(!out.status.success(), "an expired client certificate was accepted");
    let logged = wait_for("the expiry refusal to be logged", Duration::from_secs(10), || async {
        n1.log().contains("a certificate has expired")
    })
    .await;
    logged.map_err(|e| format!("{e}; raftkvctl said {}; the node logged:\n{}", stderr(&out), n1.log_tail()))?;
    // A node certificate that does not name the address the client dials (127.0.0.1):
    // n2 serves a certificate naming only "n2".
    let (c, k) = write("n2-by-name-only", ca.issue("n2", &["n2"], true)?)?;
    let args = proc_harness::certs::node_args(&c, &k, &files.ca);
    let n2 = node("n2", dir.path()).bootstrap(true).args(FAST_TIMING).args(args).start()?;
    let out = raftkvctl(std::slice::from_ref(&n2.grpc_addr), &[quick.as_slice(), &["get", "x"]].concat())?;
    assert!(!out.status.success(), "a certificate for another name was accepted");
    assert!(
        stderr(&out).contains("NotValidForName") || stderr(&out).contains("not valid for name"),
        "{}",
        stderr(&out)
    );
    // An expired server certificate: the client refuses it.
    let (c, k) = write("n3-expired", ca.issue_expired("n3", &["n3", "127.0.0.1"], true)?)?;
    let args = proc_harness::certs::node_args(&c, &k, &files.ca);
    let n3 = node("n3", dir.path()).bootstrap(true).args(FAST_TIMING).args(args).start()?;
    let out = raftkvctl(std::slice::from_ref(&n3.grpc_addr), &[quick.as_slice(), &["get", "x"]].concat())?;
    assert!(!out.status.success(), "an expired server certificate was accepted");
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));
    // The node with the good certificate still serves.
    let client_args = files.client_args();
    let tls: Vec<&str> = client_args.iter().map(String::as_str).collect();
    let out = raftkvctl(target, &[tls.as_slice(), &["put", "still", "serving"]].concat())?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

/// The certificate the TLS server at `addr` presents to a new connection (DER), verified
/// against `ca`.
async fn served_certificate(addr: &str, ca: &Path) -> Result<Vec<u8>, BoxError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await??;
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no certificate served")?;
    Ok(leaf.as_ref().to_vec())
}

fn pem_der(path: &Path) -> Result<Vec<u8>, BoxError> {
    use rustls::pki_types::pem::PemObject;
    Ok(rustls::pki_types::CertificateDer::from_pem_file(path)?.as_ref().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (ca, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n1"], "client")?;
    let n1 = tls_node("n1", dir.path(), &files, true, &[])?;
    let pid = n1.pid();
    let (cert, key) = files.nodes["n1"].clone();
    let old = pem_der(&cert)?;
    assert_eq!(served_certificate(&n1.grpc_addr, &files.ca).await?, old);

    // Replace the files (a new key and certificate, so a new serial) on the running node.
    ca.node("n1")?.write(&cert, &key)?;
    let new = pem_der(&cert)?;
    assert_ne!(new, old);
    let addr = n1.grpc_addr.clone();
    let ca_path = files.ca.clone();
    wait_for("the client port to serve the new certificate", Duration::from_secs(20), || {
        let (addr, ca_path, new) = (addr.clone(), ca_path.clone(), new.clone());
        async move { served_certificate(&addr, &ca_path).await.is_ok_and(|served| served == new) }
    })
    .await?;
    assert_eq!(n1.pid(), pid, "the node restarted");
    assert!(n1.log().contains("TLS certificate files changed; serving the new ones"));
    // Clients go on working with the rotated certificate.
    let client_args = files.client_args();
    let tls: Vec<&str> = client_args.iter().map(String::as_str).collect();
    let out = raftkvctl(std::slice::from_ref(&n1.grpc_addr), &[tls.as_slice(), &["put", "rotated", "yes"]].concat())?;
    assert!(out.status.success(), "{}", stderr(&out));
    Ok(())
}

/// Replaces `path` with `text` whole (a temporary file renamed over it), as an operator
/// rotating a file should.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A node's outbound connections (forwarding a write to the leader's client port, asking the
/// leader's Raft port for a read index) present its rotated certificate without a restart.
/// n2's certificate is replaced by one of a second CA; then the leader n1 trusts that CA
/// only and is restarted, so every connection n2 makes to it is new and a connection with
/// n2's old certificate is refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbound_connections_present_a_rotated_certificate_without_a_restart() -> TestResult {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let (first_ca, files) = proc_harness::certs::generate(&certs, &["n1", "n2"], "client")?;
    let second_ca = Authority::new("second CA")?;
    // The client's certificate comes from the second CA; the client trusts both.
    second_ca.client("client")?.write(&files.client.0, &files.client.1)?;
    let both = certs.join("both.crt");
    std::fs::write(&both, format!("{}{}", first_ca.cert_pem(), second_ca.cert_pem()))?;
    // n1 trusts what `n1-trust.crt` holds: both CAs now, the second only later.
    let n1_trust = certs.join("n1-trust.crt");
    std::fs::write(&n1_trust, std::fs::read_to_string(&both)?)?;
    let ((n1_cert, n1_key), (n2_cert, n2_key)) = (files.nodes["n1"].clone(), files.nodes["n2"].clone());
    let n1_args = proc_harness::certs::node_args(&n1_cert, &n1_key, &n1_trust);
    let mut n1 =
        node("n1", dir.path()).bootstrap(true).args(FAST_TIMING).args(n1_args).args(["--client-cert-auth"]).start()?;
    let n2_args = proc_harness::certs::node_args(&n2_cert, &n2_key, &both);
    let n2 = node("n2", dir.path()).args(FAST_TIMING).args(n2_args).args(["--client-cert-auth"]).start()?;
    let tls = ClientTlsFiles { ca: both.clone(), identity: Some(files.client.clone()) };
    let cluster = Client::new(
        [n1.grpc_addr.clone(), n2.grpc_addr.clone()],
        ClientOptions { tls: Some(tls.clone()), ..test_options() },
    )?;
    wait_for("n1 to lead", Duration::from_secs(30), || async {
        cluster.status_of(&n1.grpc_addr).await.is_ok_and(|s| s.state == RaftState::Leader as i32)
    })
    .await?;
    cluster.add_voter("n2", &n2.raft_addr, &n2.grpc_addr, Duration::from_secs(60)).await?;
    let via_n2 = Client::new(
        [n2.grpc_addr.clone()],
        ClientOptions { tls: Some(tls), max_retries: 0, auto_request_ids: false, ..test_options() },
    )?;
    via_n2.put("before", "1").await?;

    // Rotate n2's certificate (the second CA's), then let n1 trust the second CA only.
    let n2_pid = n2.pid();
    second_ca.node("n2")?.write(&n2_cert, &n2_key)?;
    replace_file(&n1_trust, second_ca.cert_pem())?;
    // A node checks its client files at most this often (docs/security.md, Rotation).
    tokio::time::sleep(rpc::tls::CLIENT_RELOAD_CHECK).await;
    assert!(n1.stop(), "n1 did not stop cleanly");
    n1.restart(false)?;
    wait_for("n1 to lead again", Duration::from_secs(30), || async {
        if cluster.status_of(&n1.grpc_addr).await.is_ok_and(|s| s.state == RaftState::Leader as i32) {
            return true;
        }
        let _ = cluster.transfer_leader(Some("n1"), Duration::from_secs(5)).await;
        false
    })
    .await?;
    // A write through n2 is forwarded to n1's client port, and a linearizable read on n2
    // asks n1's Raft port for a read index: both over new connections from n2.
    let put = via_n2.put("after", "2").await?;
    assert_eq!(put.header.map(|h| h.node_id).as_deref(), Some("n1"), "the write was not forwarded to the leader");
    let got = via_n2.get("after").await?;
    assert!(got.found, "n2 did not read the write made through it");
    assert_eq!(got.header.map(|h| h.node_id).as_deref(), Some("n2"), "the read was not served by n2");
    assert_eq!(n2.pid(), n2_pid, "n2 restarted");
    Ok(())
}

/// A private key file the group or others can read stops the node at start, naming the file
/// and the `chmod` to run; with mode 0600 the same files start it.
#[test]
fn a_key_file_readable_by_group_or_others_is_refused_with_the_chmod_to_run() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let (_, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n1"], "client")?;
    let key = files.nodes["n1"].1.clone();
    let mut args: Vec<String> = ["--raft_id", "n1"].map(String::from).to_vec();
    args.extend(files.node_args("n1"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for mode in [0o640, 0o604] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode))?;
        let e = tests::refused_start(&args)?;
        assert!(e.contains(&format!("chmod 600 {}", key.display())), "mode {mode:o}: {e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
    }
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let n1 = tls_node("n1", dir.path(), &files, true, &[])?;
    assert!(n1.pid().is_some(), "a node with a 0600 key did not start");
    Ok(())
}

/// Runs `raftkv` with `args` and a fresh data directory; returns its exit success and
/// stderr once it exits, or `None` (after killing it) if it still runs after `wait`.
fn run_raftkv(args: &[&str], data_dir: &Path, wait: Duration) -> Result<Option<(bool, String)>, BoxError> {
    let mut child = Command::new(binary("raftkv"))
        .args(args)
        .arg("--raft_data_dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err)?;
            }
            return Ok(Some((status.success(), err)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_on_a_non_loopback_address_needs_insecure() -> TestResult {
    let dir = tempfile::tempdir()?;
    // 0.0.0.0 binds every local address (bound only; no traffic leaves the machine).
    let args = ["--raft_id", "n1", "--grpc_addr", "0.0.0.0:0", "--raft_addr", "127.0.0.1:0"];
    let refused = run_raftkv(&args, dir.path(), Duration::from_secs(20))?.ok_or("raftkv started without --insecure")?;
    assert!(!refused.0, "raftkv exited 0 on a non-loopback plaintext address");
    assert!(
        refused.1.contains("--grpc_addr 0.0.0.0:0 is not a loopback address") && refused.1.contains("--insecure"),
        "unclear refusal: {}",
        refused.1
    );
    // The same for the Raft port.
    let args = ["--raft_id", "n1", "--grpc_addr", "127.0.0.1:0", "--raft_addr", "0.0.0.0:0"];
    let refused = run_raftkv(&args, dir.path(), Duration::from_secs(20))?.ok_or("raftkv started without --insecure")?;
    assert!(refused.1.contains("--raft_addr 0.0.0.0:0 is not a loopback address"), "{}", refused.1);
    // With --insecure it starts and serves.
    let n1 = node("n1", dir.path()).addrs("0.0.0.0:0", "127.0.0.1:0").bootstrap(true).args(["--insecure"]).start()?;
    let port = n1.grpc_addr.rsplit_once(':').map(|(_, p)| p.to_string()).ok_or("no port")?;
    let client = Client::new([format!("127.0.0.1:{port}")], test_options())?;
    wait_for("n1 to serve a put", Duration::from_secs(30), || async { client.put("k", "v").await.is_ok() }).await?;
    assert!(n1.log().contains("--insecure: serving plaintext"));
    // Half the TLS flags: refused, naming the one missing.
    let (_, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n2"], "client")?;
    let cert = files.nodes["n2"].0.display().to_string();
    let args = ["--raft_id", "n2", "--grpc_addr", "127.0.0.1:0", "--raft_addr", "127.0.0.1:0", "--cert-file", &cert];
    let refused =
        run_raftkv(&args, dir.path(), Duration::from_secs(20))?.ok_or("raftkv started with half the TLS flags")?;
    assert!(refused.1.contains("--key-file is missing"), "{}", refused.1);
    Ok(())
}

/// `curl` (OpenSSL and nghttp2: a TLS and HTTP/2 stack that is not ours) sending one unary
/// gRPC call, `message` framed, to `https://ADDR/PATH` with `tls` (curl's TLS flags);
/// returns curl's success, the response body and the dumped headers and trailers.
fn curl_grpc(
    addr: &str,
    path: &str,
    message: &[u8],
    tls: &[String],
    dir: &Path,
) -> Result<(bool, Vec<u8>, String), BoxError> {
    let mut framed = vec![0u8];
    framed.extend(u32::try_from(message.len())?.to_be_bytes());
    framed.extend(message);
    let (body, out, headers) = (dir.join("curl-body"), dir.join("curl-out"), dir.join("curl-headers"));
    std::fs::write(&body, framed)?;
    let status = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(tls)
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg("-o")
        .arg(&out)
        .arg("-D")
        .arg(&headers)
        .arg(format!("https://{addr}{path}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let read = |p: &Path| std::fs::read(p).unwrap_or_default();
    Ok((status.success(), read(&out), String::from_utf8_lossy(&read(&headers)).to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_speaks_grpc_over_mutual_tls_to_a_node() -> TestResult {
    Command::new("curl").arg("--version").output().map_err(|e| format!("this test needs curl on PATH ({e})"))?;
    let dir = tempfile::tempdir()?;
    let (_, files) = proc_harness::certs::generate(&dir.path().join("certs"), &["n1"], "client")?;
    let n1 = tls_node("n1", dir.path(), &files, true, &["--client-cert-auth"])?;
    let client = Client::new([n1.grpc_addr.clone()], tls_options(&files))?;
    wait_for("n1 to lead", Duration::from_secs(30), || async {
        client.status().await.is_ok_and(|s| s.state == RaftState::Leader as i32)
    })
    .await?;
    let path = |p: &Path| p.display().to_string();
    let mtls = vec![
        "--cacert".to_string(),
        path(&files.ca),
        "--cert".to_string(),
        path(&files.client.0),
        "--key".to_string(),
        path(&files.client.1),
    ];
    let put = prost::Message::encode_to_vec(&proto::kv::v1::PutRequest {
        key: "from-curl".into(),
        value: "over TLS".into(),
        ..Default::default()
    });
    let (ok, body, headers) = curl_grpc(&n1.grpc_addr, "/raftkv.v1.KV/Put", &put, &mtls, dir.path())?;
    assert!(ok && headers.contains("grpc-status: 0"), "curl's Put failed: {headers}");
    assert_eq!(body.first(), Some(&0), "not a gRPC message: {body:?}");
    let got = client.get("from-curl").await?;
    assert_eq!(got.kv.map(|kv| kv.value.to_vec()), Some(b"over TLS".to_vec()));
    // Without the client certificate, curl is refused at the handshake.
    let (ok, _, headers) = curl_grpc(&n1.grpc_addr, "/raftkv.v1.KV/Put", &put, &mtls[..2], dir.path())?;
    assert!(!ok && !headers.contains("grpc-status"), "curl without a certificate was served: {headers}");
    Ok(())
}
