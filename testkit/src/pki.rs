//! Certificates made at test time: a throw-away CA and a server certificate for loopback.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate clients should trust.
    pub ca_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: String,
}

/// The names every test server certificate is valid for.
pub fn loopback_names() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

impl TestPki {
    /// Generates a fresh CA whose common name is `ca_name` and a server certificate it
    /// signed for [`loopback_names`]. Fails only if key generation or signing fails.
    pub fn ca_signed(ca_name: &str) -> Result<Self, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(loopback_names())?.signed_by(&key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_signed_pki_holds_three_distinct_pem_blocks() {
        let pki = TestPki::ca_signed("testkit CA").expect("pki");
        assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.key_pem.contains("PRIVATE KEY"));
        assert_ne!(pki.ca_pem, pki.cert_pem);
    }
}
