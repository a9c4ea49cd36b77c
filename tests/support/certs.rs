//! Certificates made by the tests (rcgen): an authority, and the certificates it signs.

#![allow(clippy::unwrap_used)] // test support: a failed unwrap fails the test, with its location

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
};

/// A certificate authority.
#[allow(missing_debug_implementations)] // rcgen's key pair has no Debug
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    /// A new authority named `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A certificate for `names`, for a server or a client: (certificate PEM, key PEM).
    pub fn issue(&self, names: &[&str], usages: &[ExtendedKeyUsagePurpose]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = usages.to_vec();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl Ca {
    /// The authority's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }
}

/// Writes `text` to `folder/name` and returns the path.
pub fn write(folder: &Path, name: &str, text: &str) -> PathBuf {
    let path = folder.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
