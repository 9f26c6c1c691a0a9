//! Throwaway certificates for TLS clusters: a CA, one certificate per node and a client
//! certificate, made with rcgen (no `openssl` command). `cargo xtask certs` and the TLS
//! cluster tests both use [`generate`].
//!
//! A node's certificate names its node id as the subject common name and as a DNS subject
//! alternative name (the node-id rule of the Raft port), plus `localhost`, `127.0.0.1` and
//! `::1`, and may be used by a server and a client (the node presents it on its Raft port
//! and on its connections to other nodes). Private keys are written with mode 0600.
//!
//! [`write_gossip_key`] writes a gossip key (`--gossip-key-file`): 32 random bytes in
//! base64, mode 0600; [`generate`] writes one beside the certificates (`gossip.key`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters.
    #[error("making a certificate for {name:?}: {source}")]
    Rcgen {
        /// Whose certificate.
        name: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A file could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl Issued {
    /// Writes the certificate to `cert` and the key to `key` (mode 0600), each replaced
    /// whole: written to a temporary file beside it, then renamed over it.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn write(&self, cert: &Path, key: &Path) -> Result<(), CertError> {
        write_file(key, &self.key_pem, true)?;
        write_file(cert, &self.cert_pem, false)
    }
}

/// A throwaway certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

fn rcgen_error(name: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Rcgen { name: name.to_string(), source }
}

impl Authority {
    /// A new CA named `common_name`, with a fresh key.
    ///
    /// # Errors
    /// When rcgen cannot make it.
    pub fn new(common_name: &str) -> Result<Self, CertError> {
        let err = rcgen_error(common_name);
        let key = KeyPair::generate().map_err(rcgen_error(common_name))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error(common_name))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self { issuer: Issuer::new(params, key), cert_pem: cert.pem() })
    }

    /// The CA's certificate, PEM (what `--trusted-ca-file`, `--peer-trusted-ca-file` and
    /// `raftkvctl --cacert` name).
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate with a fresh key for `common_name`, also naming `alt_names` (each a DNS
    /// name or an IP address), for a server and a client when `server` is set, else for a
    /// client only.
    ///
    /// # Errors
    /// When rcgen refuses a name.
    pub fn issue(&self, common_name: &str, alt_names: &[&str], server: bool) -> Result<Issued, CertError> {
        self.issue_valid(common_name, alt_names, server, false)
    }

    /// As [`issue`](Self::issue), but valid only during the year 2000: an expired
    /// certificate, for tests of its refusal.
    ///
    /// # Errors
    /// When rcgen refuses a name.
    pub fn issue_expired(&self, common_name: &str, alt_names: &[&str], server: bool) -> Result<Issued, CertError> {
        self.issue_valid(common_name, alt_names, server, true)
    }

    fn issue_valid(
        &self,
        common_name: &str,
        alt_names: &[&str],
        server: bool,
        expired: bool,
    ) -> Result<Issued, CertError> {
        let key = KeyPair::generate().map_err(rcgen_error(common_name))?;
        let names: Vec<String> = alt_names.iter().map(|s| (*s).to_string()).collect();
        let mut params = CertificateParams::new(names).map_err(rcgen_error(common_name))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error(common_name))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Node `id`'s certificate: common name and DNS name `id`, plus `localhost`,
    /// `127.0.0.1` and `::1`; for a server and a client.
    ///
    /// # Errors
    /// When rcgen refuses the id as a DNS name.
    pub fn node(&self, id: &str) -> Result<Issued, CertError> {
        self.issue(id, &[id, "localhost", "127.0.0.1", "::1"], true)
    }

    /// A client certificate for `name` (common name), for a client only.
    ///
    /// # Errors
    /// When rcgen cannot make it.
    pub fn client(&self, name: &str) -> Result<Issued, CertError> {
        self.issue(name, &[], false)
    }
}

/// The files [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The CA certificate: `<dir>/ca.crt`.
    pub ca: PathBuf,
    /// Each node's certificate and key: `<dir>/<id>.crt`, `<dir>/<id>.key`.
    pub nodes: BTreeMap<String, (PathBuf, PathBuf)>,
    /// The client certificate and key: `<dir>/<client>.crt`, `<dir>/<client>.key`.
    pub client: (PathBuf, PathBuf),
    /// The cluster's gossip key (`--gossip-key-file`): `<dir>/gossip.key`.
    pub gossip_key: PathBuf,
}

impl CertFiles {
    /// The `raftkv` TLS flags for node `id` (both ports use its certificate, every CA flag
    /// names `ca.crt`); empty when `id` has no certificate here.
    #[must_use]
    pub fn node_args(&self, id: &str) -> Vec<String> {
        self.nodes.get(id).map(|(cert, key)| node_args(cert, key, &self.ca)).unwrap_or_default()
    }

    /// The `raftkvctl` TLS flags with the client certificate.
    #[must_use]
    pub fn client_args(&self) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.ca.display().to_string(),
            "--cert".into(),
            self.client.0.display().to_string(),
            "--key".into(),
            self.client.1.display().to_string(),
        ]
    }
}

/// The `raftkv` TLS flags for a node serving `cert` and `key` on both ports, with `ca` as
/// every CA flag.
#[must_use]
pub fn node_args(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    let (cert, key, ca) = (cert.display().to_string(), key.display().to_string(), ca.display().to_string());
    [
        ("--cert-file", &cert),
        ("--key-file", &key),
        ("--trusted-ca-file", &ca),
        ("--peer-cert-file", &cert),
        ("--peer-key-file", &key),
        ("--peer-trusted-ca-file", &ca),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_string(), value.clone()])
    .collect()
}

/// Makes a fresh CA (`ca.crt`; its key is not kept), a certificate per node id
/// ([`Authority::node`]), a client certificate named `client` ([`Authority::client`]) and a
/// gossip key (`gossip.key`, [`write_gossip_key`]), all in `dir` (created if missing). Returns the CA, so a test can issue more.
///
/// # Errors
/// When a certificate cannot be made or a file cannot be written.
pub fn generate(dir: &Path, node_ids: &[&str], client: &str) -> Result<(Authority, CertFiles), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write { path: dir.to_path_buf(), source })?;
    let ca = Authority::new("raftkv throwaway CA")?;
    let ca_path = dir.join("ca.crt");
    write_file(&ca_path, ca.cert_pem(), false)?;
    let mut nodes = BTreeMap::new();
    for id in node_ids {
        let (cert, key) = (dir.join(format!("{id}.crt")), dir.join(format!("{id}.key")));
        ca.node(id)?.write(&cert, &key)?;
        nodes.insert((*id).to_string(), (cert, key));
    }
    let client_files = (dir.join(format!("{client}.crt")), dir.join(format!("{client}.key")));
    ca.client(client)?.write(&client_files.0, &client_files.1)?;
    let gossip_key = dir.join("gossip.key");
    write_gossip_key(&gossip_key)?;
    Ok((ca, CertFiles { ca: ca_path, nodes, client: client_files, gossip_key }))
}

/// Writes a fresh gossip key to `path`: 32 random bytes in standard base64, mode 0600
/// (what `--gossip-key-file` reads).
///
/// # Errors
/// When the OS has no randomness or the file cannot be written.
pub fn write_gossip_key(path: &Path) -> Result<(), CertError> {
    use base64::Engine as _;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| CertError::Write { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) })?;
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    key.fill(0);
    write_file(path, &format!("{text}\n"), true)
}

/// Writes `text` to `path` through a temporary file renamed over it; mode 0600 when
/// `private`.
fn write_file(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    let err = |source| CertError::Write { path: path.to_path_buf(), source };
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_a_ca_node_certificates_and_a_private_client_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("raftkv-certs-test-{}", std::process::id()));
        let (_, files) = generate(&dir, &["n1", "n2"], "client")?;
        assert!(std::fs::read_to_string(&files.ca)?.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(files.nodes.len(), 2);
        let key = &files.nodes["n1"].1;
        assert!(std::fs::read_to_string(key)?.contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(key)?.permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&files.client.1)?.permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::metadata(&files.gossip_key)?.permissions().mode() & 0o777, 0o600);
        }
        assert!(files.node_args("n1").contains(&"--peer-trusted-ca-file".to_string()));
        assert!(files.node_args("n9").is_empty());
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
