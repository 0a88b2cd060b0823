//! Client certificates for mTLS tests.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::path::{Path, PathBuf};

/// Writes a client CA (`client-ca.pem`) and, per common name, a certificate and key
/// (`c<i>.pem`, `c<i>.key`) signed by it. Returns the CA path and the (cert, key) pairs.
pub fn client_pki(dir: &Path, cns: &[&str]) -> (PathBuf, Vec<(PathBuf, PathBuf)>) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test client CA");
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let ca_path = dir.join("client-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).expect("write");
    let leaves = cns
        .iter()
        .enumerate()
        .map(|(i, cn)| {
            let key = KeyPair::generate().expect("key");
            let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
            leaf.distinguished_name.push(DnType::CommonName, *cn);
            let cert = leaf.signed_by(&key, &issuer).expect("leaf");
            let (c, k) = (dir.join(format!("c{i}.pem")), dir.join(format!("c{i}.key")));
            std::fs::write(&c, cert.pem()).expect("write");
            std::fs::write(&k, key.serialize_pem()).expect("write");
            (c, k)
        })
        .collect();
    (ca_path, leaves)
}

/// Writes a CA (`<tag>-ca.pem`) and a server certificate for `names` signed by it
/// (`<tag>.pem`, `<tag>.key`), the way a local service or a wildcard deployment holds one.
/// Returns (CA path, certificate path, key path).
pub fn server_pki(dir: &Path, tag: &str, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("{tag} test CA"));
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .expect("params");
    leaf.distinguished_name
        .push(DnType::CommonName, format!("{tag} local service"));
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let paths = (
        dir.join(format!("{tag}-ca.pem")),
        dir.join(format!("{tag}.pem")),
        dir.join(format!("{tag}.key")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}
