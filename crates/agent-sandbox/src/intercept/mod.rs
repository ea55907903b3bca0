//! TLS interception for the hosts that ask for it: the hosts a secret or an
//! HTTP rule names. Every other host stays an end-to-end encrypted tunnel.
//!
//! An [`Interceptor`] holds a CA made for one sandbox (its key lives in
//! this process's memory only and goes when the interceptor is dropped),
//! the leaf certificates it minted (one per host, cached), the client
//! configuration used to reach upstreams (verified against the platform's
//! roots plus the caller's extra roots; never unverified), and the
//! sandbox's secrets. The proxy (`proxy/intercept.rs`) does the serving.
//!
//! Roots: `rustls-native-certs`, the platform's store, read once per
//! process. A library runs on its users' machines, where corporate roots
//! are installed in that store and every other tool trusts them; a baked-in
//! list (`webpki-roots`) would ignore them and age with the binary.

mod secret;

pub(crate) use secret::{scan, substitute, Scan, Secret};
pub use secret::{SecretSpec, SecretValue};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::policy::{Policy, RuleError};
use crate::Error;

/// Leaf certificates kept per interceptor (one per intercepted host name).
const MAX_LEAVES: usize = 1024;

/// The CA, leaf cache, upstream TLS settings and secrets of one sandbox.
pub struct Interceptor {
    issuer: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
    upstream: Arc<ClientConfig>,
    upstream_h1: Arc<ClientConfig>,
    pub(crate) secrets: Vec<Secret>,
}

impl std::fmt::Debug for Interceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interceptor")
            .field(
                "secrets",
                &self.secrets.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Interceptor {
    /// A new CA, the secrets (validated, each given a placeholder), and
    /// upstream verification against the platform's roots plus
    /// `extra_roots` (PEM text: corporate CAs, a test CA).
    ///
    /// # Errors
    /// [`Error::Policy`] for a bad secret, [`Error::InvalidArgument`] for
    /// PEM text with no certificate in it or a CA that cannot be made.
    pub fn new(secrets: &[SecretSpec], extra_roots: &[String]) -> Result<Interceptor, Error> {
        let nonce = random_hex(8)?;
        let secrets = validated(secrets, &nonce)?;
        let bad = |reason: String| Error::InvalidArgument {
            what: "interception".into(),
            reason,
        };
        let mut ca =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| bad(e.to_string()))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name.push(
            DnType::CommonName,
            format!("agent-sandbox per-sandbox CA {nonce}"),
        );
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(|e| bad(e.to_string()))?;
        let issuer = CertifiedIssuer::self_signed(ca, key).map_err(|e| bad(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(native_roots().iter().cloned());
        for pem in extra_roots {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| bad(format!("an extra root is not PEM: {e}")))?;
            if certs.is_empty() {
                return Err(bad("an extra root holds no certificate".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("an extra root is not a usable certificate: {e}")))?;
            }
        }
        let client = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, Error> {
            let mut c = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(c))
        };
        Ok(Interceptor {
            ca_pem: issuer.pem(),
            issuer,
            leaves: Mutex::new(HashMap::new()),
            upstream: client(&[b"h2", b"http/1.1"])?,
            upstream_h1: client(&[b"http/1.1"])?,
            secrets,
        })
    }

    /// The CA certificate, PEM (what the sandbox trusts; never the key).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The placeholders the sandbox sees: `(variable name, placeholder)`.
    pub fn placeholders(&self) -> impl Iterator<Item = (&str, &str)> {
        self.secrets
            .iter()
            .map(|s| (s.name.as_str(), s.placeholder.as_str()))
    }

    /// Whether the proxy intercepts `name`:`port` under `policy`: an HTTP
    /// rule or a secret names it.
    pub fn wants(&self, policy: &Policy, name: &str, port: u16) -> bool {
        policy.narrows(name, port) || self.secrets.iter().any(|s| s.rule.matches(name, port))
    }

    /// The TLS server settings for `host`: a leaf certificate for it,
    /// minted on first use and cached. ALPN offers h2 and HTTP/1.1.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        if let Some(c) = self.leaves.lock().ok().and_then(|l| l.get(host).cloned()) {
            return Ok(c);
        }
        let config = self.mint(host)?;
        if let Ok(mut leaves) = self.leaves.lock() {
            if leaves.len() >= MAX_LEAVES {
                leaves.clear();
            }
            leaves.insert(host.to_owned(), config.clone());
        }
        Ok(config)
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, String> {
        let mut leaf = CertificateParams::new(vec![host.to_owned()]).map_err(|e| e.to_string())?;
        leaf.distinguished_name.push(DnType::CommonName, host);
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = leaf
            .signed_by(&key, &self.issuer)
            .map_err(|e| e.to_string())?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Client settings for upstreams: h2 and HTTP/1.1, or HTTP/1.1 only
    /// (WebSocket upgrades).
    pub(crate) fn upstream(&self, h1_only: bool) -> Arc<ClientConfig> {
        if h1_only {
            self.upstream_h1.clone()
        } else {
            self.upstream.clone()
        }
    }
}

/// `specs` as secrets with placeholders ending in `nonce`: each valid,
/// no name twice.
pub(crate) fn validated(specs: &[SecretSpec], nonce: &str) -> Result<Vec<Secret>, Error> {
    let mut seen = std::collections::HashSet::new();
    specs
        .iter()
        .map(|s| {
            if !seen.insert(s.name.as_str()) {
                return Err(Error::Policy(RuleError {
                    rule: format!("secret {}", s.name),
                    reason: "two secrets with the same name".into(),
                }));
            }
            Secret::new(s, nonce).map_err(Error::Policy)
        })
        .collect()
}

/// The platform's roots, read once per process (unreadable entries skipped).
fn native_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

fn random_hex(n: usize) -> Result<String, Error> {
    let mut bytes = vec![0u8; n];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::InvalidArgument {
        what: "interception".into(),
        reason: format!("no randomness for the placeholders: {e}"),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_minted_once_per_host_and_signed_by_the_ca() {
        let i = Interceptor::new(&[], &[]).unwrap();
        let a = i.server_config("api.github.test").unwrap();
        let b = i.server_config("api.github.test").unwrap();
        assert!(Arc::ptr_eq(&a, &b), "cached");
        let c = i.server_config("other.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(i.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!i.ca_pem().contains("PRIVATE KEY"));
        let j = Interceptor::new(&[], &[]).unwrap();
        assert_ne!(i.ca_pem(), j.ca_pem(), "a CA per sandbox");
    }

    #[test]
    fn bad_extra_roots_and_duplicate_secrets_are_errors() {
        let e = Interceptor::new(&[], &["not pem".into()]).unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let s = SecretSpec {
            name: "T".into(),
            host: "a.test".into(),
            value: SecretValue::new("v"),
        };
        let e = Interceptor::new(&[s.clone(), s], &[]).unwrap_err();
        assert!(e.to_string().contains("same name"), "{e}");
    }
}
