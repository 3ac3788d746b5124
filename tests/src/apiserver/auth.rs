//! What a client must trust and present, made fresh for every server as a real cluster's
//! are at install time: a CA, a server certificate it signed for the address clients dial
//! (rustls, like client-go, refuses a CA certificate as a server's own), and the bearer token
//! every request must carry.

use std::{fs, io::Read, net::IpAddr, path::Path, sync::Arc};

use base64::Engine;
use hyper::{header, http::HeaderValue};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::{
    rustls::{
        crypto::ring,
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
        ServerConfig,
    },
    TlsAcceptor,
};

use crate::{error::io_context, Error, Result};

/// Name of the service account token file, as the kubelet mounts it.
pub const TOKEN_FILE: &str = "token";
/// Name of the CA bundle file, as the kubelet mounts it.
pub const CA_FILE: &str = "ca.crt";
/// Name of the namespace file, as the kubelet mounts it.
pub const NAMESPACE_FILE: &str = "namespace";

/// How a request presented itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header without the server's bearer token.
    Rejected,
    /// `Authorization: Bearer <the server's token>`.
    Token,
}

/// A server's CA, its TLS configuration and its token.
pub struct Credentials {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    acceptor: TlsAcceptor,
    token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// A new CA, a certificate it signed with `ips` as its subject alternative names, and a
    /// random token.
    pub fn new(ips: &[IpAddr]) -> Result<Credentials> {
        let failed = |e: rcgen::Error| Error::Certificates(e.to_string());
        let ca_key = KeyPair::generate().map_err(failed)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "lb-tests-kubernetes-ca");
        ca.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().map_err(failed)?;
        let names = ips.iter().map(IpAddr::to_string).collect::<Vec<_>>();
        let mut server = CertificateParams::new(names).map_err(failed)?;
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.use_authority_key_identifier_extension = true;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer).map_err(failed)?;

        let chain = vec![server_cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let tls = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
            .map_err(|e| Error::Certificates(e.to_string()))?;
        Ok(Credentials {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            token: random_token()?,
        })
    }

    /// Accepts TLS connections with the server certificate.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate, DER (for a client's root store).
    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The CA certificate as a kubeconfig's `certificate-authority-data`.
    pub fn ca_data(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.ca_pem)
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// What the `Authorization` header of a request presents.
    pub fn check(&self, headers: &hyper::HeaderMap<HeaderValue>) -> Credential {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Credential::Missing;
        };
        // As the API server's bearer token authenticator: scheme case-insensitive, then the
        // token exactly.
        let presented = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
        match presented {
            Some(token) if token == self.token => Credential::Token,
            _ => Credential::Rejected,
        }
    }

    /// Writes `token`, `ca.crt` and `namespace` into `dir`, as the kubelet mounts a pod's
    /// service account.
    pub fn write_service_account(&self, dir: &Path) -> Result<()> {
        for (name, contents) in [
            (TOKEN_FILE, self.token.as_str()),
            (CA_FILE, self.ca_pem.as_str()),
            (NAMESPACE_FILE, "kube-system"),
        ] {
            let path = dir.join(name);
            fs::write(&path, contents)
                .map_err(io_context(format!("cannot write {}", path.display())))?;
        }
        Ok(())
    }
}

/// 32 random hex digits.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_context("cannot read /dev/urandom for a token"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
