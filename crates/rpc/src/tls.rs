//! TLS for both ports and every channel: rustls with the ring provider, PEM files named by
//! the operator, re-read when they change.
//!
//! - [`ServerTlsFiles`] / [`ServerTls`]: a port's certificate, key and (for mutual TLS) the
//!   CA its clients' certificates must chain to. [`ServerTls::config`] checks the files'
//!   modification times and lengths on every handshake and builds a new rustls
//!   configuration when one changed, so a rotated certificate is served to the next
//!   connection without a restart. A rotation caught half-written (a key that does not match
//!   its certificate) keeps the previous configuration and logs why.
//! - [`ClientTlsFiles`] / [`ClientTls`]: the CA a client trusts and, optionally, the
//!   certificate it presents. The files are read whenever a new channel is built, and
//!   [`Pool`](crate::channel::Pool) drops its channels when they change.
//! - Private keys are read through [`secrets::read_private`]: a key file the group or
//!   others may read is refused (at start, and on a rotation, which then keeps the previous
//!   files), naming the file and the `chmod 600` to run.
//! - The node-id rule: [`cert_names`] lists what a certificate names (its subject common
//!   names and DNS subject alternative names); a peer that claims node id `X` on the Raft
//!   port must present a certificate naming `X` ([`check_claimed_id`]), and a node
//!   connecting to peer `X` verifies that the peer's server certificate is valid for the
//!   name `X`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// How long a TLS handshake may take on a server before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most TLS handshakes a server runs at once; connections past it are closed at once.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// How often a client checks whether its certificate files changed.
pub const CLIENT_RELOAD_CHECK: Duration = Duration::from_secs(1);
/// The ALPN protocol both sides speak.
const ALPN_H2: &[u8] = b"h2";

/// A TLS setting that cannot be used: a file that cannot be read or parsed, or a
/// combination rustls refuses. Each names the file or the setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind expected.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the configuration (for example a key that does not match the
    /// certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// Which configuration.
        context: String,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// A private key file cannot be used: unreadable, or readable by the group or others
    /// (the message names the `chmod` to run).
    #[error(transparent)]
    KeyFile(#[from] secrets::SecretFileError),
    /// The client-certificate verifier could not be built from the CA file.
    #[error("the client CA in {}: {reason}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The TLS files of one server port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain the server presents (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA (PEM, one or more certificates) that client certificates must chain to; with
    /// none, clients are not asked for a certificate.
    pub client_ca: Option<PathBuf>,
    /// Refuse a client without a certificate (needs `client_ca`). Without it a client may
    /// present none, but one it presents must still chain to `client_ca`.
    pub require_client_cert: bool,
    /// When not empty: a client certificate must name one of these (as a subject common
    /// name or a DNS subject alternative name), else the connection is closed after the
    /// handshake (etcd's `--peer-cert-allowed-cn`).
    pub allowed_names: Vec<String>,
}

/// The TLS files of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA (PEM) that servers' certificates must chain to.
    pub ca: PathBuf,
    /// The certificate the client presents, with its key (both or neither).
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// What identifies one version of a set of files: each one's modification time, length
/// and (on Unix) inode, so a file replaced by a rename is noticed even within the file
/// system's timestamp granularity.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(paths: &[&Path]) -> Stamp {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len(), inode(&m)))))
        .collect()
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(m)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: format!("not PEM certificates: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), what: "holds no PEM certificate".into() });
    }
    Ok(certs)
}

/// A private key, read through [`secrets::read_private`]: refused when the group or others
/// may read the file.
fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = secrets::read_private(path)?;
    PrivateKeyDer::from_pem_slice(pem.expose())
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), what: format!("holds no PEM private key: {e}") })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions_error(source: rustls::Error) -> TlsError {
    TlsError::Rustls { context: "the TLS protocol versions".into(), source }
}

impl ServerTlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }

    /// A rustls server configuration from the files as they are now (ALPN `h2`).
    ///
    /// # Errors
    /// When a file cannot be read or parsed, the key does not match the certificate, or a
    /// client certificate is required without a client CA.
    pub fn load(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(versions_error)?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider);
                let verifier = if self.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
                let verifier =
                    verifier.build().map_err(|e| TlsError::Verifier { path: ca.clone(), reason: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
            None if self.require_client_cert => {
                return Err(TlsError::Pem {
                    path: self.cert.clone(),
                    what: "requiring client certificates needs a CA to check them against".into(),
                });
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_single_cert(certs(&self.cert)?, key(&self.key)?).map_err(|source| TlsError::Rustls {
                context: format!("the certificate {} with the key {}", self.cert.display(), self.key.display()),
                source,
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

/// A server port's TLS: the configuration built from [`ServerTlsFiles`], rebuilt when the
/// files change. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct ServerTls {
    files: ServerTlsFiles,
    current: Mutex<(Stamp, Arc<rustls::ServerConfig>)>,
}

impl ServerTls {
    /// Loads the files now, so a node with unusable files refuses to start.
    ///
    /// # Errors
    /// As [`ServerTlsFiles::load`].
    pub fn new(files: ServerTlsFiles) -> Result<Self, TlsError> {
        let stamp = stamp(&files.paths());
        let config = Arc::new(files.load()?);
        Ok(Self { files, current: Mutex::new((stamp, config)) })
    }

    /// The files this port's TLS comes from.
    #[must_use]
    pub fn files(&self) -> &ServerTlsFiles {
        &self.files
    }

    /// The configuration for the next handshake: rebuilt first when a file changed since the
    /// last build; when the new files cannot be used, the previous configuration stays (and
    /// the next handshake tries again).
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let now = stamp(&self.files.paths());
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != now {
            match self.files.load() {
                Ok(config) => {
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate files changed; serving the new ones");
                    *current = (now, Arc::new(config));
                }
                Err(e) => {
                    tracing::warn!(cert = %self.files.cert.display(), error = %e, "TLS certificate files changed but cannot be used; keeping the previous ones");
                }
            }
        }
        current.1.clone()
    }

    /// Whether a client whose certificate chain is `certs` may stay connected under
    /// [`ServerTlsFiles::allowed_names`]; `Err` says why not.
    ///
    /// # Errors
    /// When a list of allowed names is set and the client's certificate names none of them.
    pub fn check_allowed(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<(), String> {
        if self.files.allowed_names.is_empty() {
            return Ok(());
        }
        let Some(leaf) = certs.and_then(<[_]>::first) else {
            return Err("no client certificate, and the port allows only named peers".into());
        };
        let names = cert_names(leaf)?;
        if names.iter().any(|n| self.files.allowed_names.contains(n)) {
            Ok(())
        } else {
            Err(format!(
                "the client certificate names {names:?}, none of the allowed names {:?}",
                self.files.allowed_names
            ))
        }
    }
}

/// What a certificate names: its subject common names, then its DNS subject alternative
/// names, exactly as written (no case folding).
///
/// # Errors
/// When the certificate cannot be parsed.
pub fn cert_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("unparsable certificate: {e}"))?;
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok().map(str::to_string)).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push((*dns).to_string());
            }
        }
    }
    Ok(names)
}

/// The node-id rule of the Raft port: on a TLS connection, the peer's certificate must name
/// `claimed` (the node id the message says it comes from) as a subject common name or a
/// DNS subject alternative name, exactly. A plaintext connection (loopback, TLS off) is not
/// checked.
///
/// # Errors
/// `PERMISSION_DENIED` naming the claimed id and what the certificate names;
/// `UNAUTHENTICATED` when the connection is TLS but the peer presented no certificate.
pub fn check_claimed_id<T>(request: &tonic::Request<T>, claimed: &str) -> Result<(), tonic::Status> {
    let Some(info) = request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
    else {
        return Ok(());
    };
    let Some(leaf) = info.peer_certs().and_then(|certs| certs.first().cloned()) else {
        return Err(tonic::Status::unauthenticated(format!(
            "a message from node {claimed:?} came without a client certificate; the Raft port needs one naming the node id"
        )));
    };
    let names = cert_names(&leaf).map_err(tonic::Status::unauthenticated)?;
    if names.iter().any(|n| n == claimed) {
        Ok(())
    } else {
        Err(tonic::Status::permission_denied(format!(
            "a message claiming to come from node {claimed:?} was sent with a certificate naming {names:?}; a node's certificate must name its node id (common name or DNS SAN)"
        )))
    }
}

impl ClientTlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.ca.as_path()];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.as_path(), key.as_path()]);
        }
        paths
    }

    /// tonic's client TLS settings from the files as they are now, verifying the server's
    /// certificate for `server_name` (a node id, a host name or an IP address).
    ///
    /// # Errors
    /// When a file cannot be read or holds no PEM item.
    pub fn load(&self, server_name: &str) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let ca = read(&self.ca)?;
        certs(&self.ca)?;
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name(server_name)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some((cert, key_path)) = &self.identity {
            certs(cert)?;
            key(key_path)?;
            let key_pem = secrets::read_private(key_path)?;
            config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, key_pem.expose()));
        }
        Ok(config)
    }
}

/// A client's TLS: the files, checked at most every [`CLIENT_RELOAD_CHECK`] for changes.
/// One `ClientTls` may serve several [`Pool`](crate::channel::Pool)s (a node's Raft
/// network and its forwarding share one); each notices a change through
/// [`generation`](Self::generation), so one pool seeing it does not hide it from another.
#[derive(Debug)]
pub struct ClientTls {
    files: ClientTlsFiles,
    seen: Mutex<Seen>,
}

/// When the files were last checked, what they were then, and how many changes were seen.
#[derive(Debug)]
struct Seen {
    checked: Instant,
    stamp: Stamp,
    generation: u64,
}

impl ClientTls {
    /// Checks the files now, so a client with unusable files fails at once.
    ///
    /// # Errors
    /// As [`ClientTlsFiles::load`].
    pub fn new(files: ClientTlsFiles) -> Result<Self, TlsError> {
        files.load("localhost")?;
        let stamp = stamp(&files.paths());
        Ok(Self { files, seen: Mutex::new(Seen { checked: Instant::now(), stamp, generation: 0 }) })
    }

    /// tonic's settings for a channel to `server_name`, from the files as they are now.
    ///
    /// # Errors
    /// As [`ClientTlsFiles::load`].
    pub fn config(&self, server_name: &str) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        self.files.load(server_name)
    }

    /// How many times the files have been seen to change: a caller that remembers the
    /// generation its connections were built with rebuilds them when this differs. The
    /// files are checked at most every [`CLIENT_RELOAD_CHECK`].
    pub fn generation(&self) -> u64 {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.checked.elapsed() >= CLIENT_RELOAD_CHECK {
            let now = stamp(&self.files.paths());
            seen.checked = Instant::now();
            if seen.stamp != now {
                seen.stamp = now;
                seen.generation += 1;
            }
        }
        seen.generation
    }
}

/// Whether `name` can be a name a server certificate is verified for, other than an IP
/// address (rustls's DNS name rules).
#[must_use]
pub fn is_dns_name(name: &str) -> bool {
    matches!(rustls::pki_types::ServerName::try_from(name), Ok(rustls::pki_types::ServerName::DnsName(_)))
}

/// The host part of `HOST:PORT` (without the brackets of an IPv6 address): the name a
/// client verifies a server's certificate for when it knows no node id.
#[must_use]
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `addr` (`HOST:PORT`) is a loopback address: `localhost`, `127.0.0.0/8` or
/// `::1`. Plaintext is allowed there without `--insecure`.
#[must_use]
pub fn is_loopback(addr: &str) -> bool {
    let host = host_of(addr);
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_recognised() {
        assert!(is_loopback("127.0.0.1:0"));
        assert!(is_loopback("127.1.2.3:80"));
        assert!(is_loopback("localhost:40051"));
        assert!(is_loopback("[::1]:5"));
        assert!(!is_loopback("0.0.0.0:40051"));
        assert!(!is_loopback("10.0.0.1:1"));
        assert!(!is_loopback("[::]:1"));
        assert!(!is_loopback("example.com:1"));
        assert_eq!(host_of("[::1]:5"), "::1");
        assert_eq!(host_of("node-a:5"), "node-a");
    }

    #[test]
    fn node_ids_that_can_name_a_certificate() {
        for ok in ["nodeA", "n1", "node-a.example", "a_b"] {
            assert!(is_dns_name(ok), "{ok}");
        }
        for bad in ["127.0.0.1", "1", "a.12", "-a", "a..b", ".", &"x".repeat(64)] {
            assert!(!is_dns_name(bad), "{bad}");
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Replaces `path` with `text` as an operator should: a new file renamed over it.
    fn replace(path: &Path, text: &str) -> std::io::Result<()> {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    #[test]
    fn a_server_serves_rotated_files_and_keeps_the_old_ones_while_they_do_not_match() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (ca, files) = proc_harness::certs::generate(dir.path(), &["n1"], "client")?;
        let (cert, key) = files.nodes["n1"].clone();
        let tls = ServerTls::new(ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: Some(files.ca.clone()),
            require_client_cert: true,
            allowed_names: Vec::new(),
        })?;
        let first = Arc::as_ptr(&tls.config());
        assert_eq!(Arc::as_ptr(&tls.config()), first, "rebuilt without a change");
        // Half a rotation: a new key beside the old certificate. Refused; the old stays.
        let next = ca.node("n1")?;
        next.write(&dir.path().join("next.crt"), &key)?;
        assert_eq!(Arc::as_ptr(&tls.config()), first, "a key that does not match was taken");
        // The whole rotation, but the new key readable by others: refused; the old stays.
        replace(&cert, &next.cert_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
            assert_eq!(Arc::as_ptr(&tls.config()), first, "a key others can read was taken");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        }
        // The whole rotation: the new configuration is built.
        assert_ne!(Arc::as_ptr(&tls.config()), first, "the rotated files were not taken");
        Ok(())
    }

    #[test]
    fn a_client_notices_changed_files() -> TestResult {
        let dir = tempfile::tempdir()?;
        let (ca, files) = proc_harness::certs::generate(dir.path(), &["n1"], "client")?;
        let tls = ClientTls::new(ClientTlsFiles { ca: files.ca.clone(), identity: Some(files.client.clone()) })?;
        assert_eq!(tls.generation(), 0);
        ca.client("client")?.write(&files.client.0, &files.client.1)?;
        let deadline = Instant::now() + CLIENT_RELOAD_CHECK * 5;
        while tls.generation() == 0 {
            assert!(Instant::now() < deadline, "the change was not noticed");
            std::thread::sleep(CLIENT_RELOAD_CHECK / 10);
        }
        std::thread::sleep(CLIENT_RELOAD_CHECK);
        assert_eq!(tls.generation(), 1, "one change counted twice");
        Ok(())
    }

    #[test]
    fn unreadable_files_are_named() {
        let files = ServerTlsFiles {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            client_ca: None,
            require_client_cert: false,
            allowed_names: Vec::new(),
        };
        let e = ServerTls::new(files).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
    }
}
