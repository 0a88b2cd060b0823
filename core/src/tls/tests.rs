//! Tests of the TLS helpers.

use super::*;

#[test]
fn certificate_errors_are_told_by_kind() {
    let wrap = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    assert!(is_certificate_error(&wrap(
        rustls::Error::NoCertificatesPresented
    )));
    assert!(is_certificate_error(&wrap(
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    )));
    assert!(!is_certificate_error(&wrap(rustls::Error::DecryptError)));
    let plain = std::io::Error::other("invalid peer certificate");
    assert!(!is_certificate_error(&plain), "text alone does not count");
}

#[test]
fn self_signed_is_created_once_and_reused() {
    let dir = std::env::temp_dir().join(format!("tunneld-tls-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let a = ServerIdentity::self_signed(&dir, &names).expect("first");
    let b = ServerIdentity::self_signed(&dir, &names).expect("second");
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(
        common_name(&a.chain[1]).as_deref(),
        Some("tunneld local CA")
    );
    let c = ServerIdentity::self_signed(&dir, &["example.test".to_string()]).expect("renamed");
    assert_ne!(a.fingerprint(), c.fingerprint());
    assert_eq!(a.chain[1], c.chain[1], "the CA stays");
    server_config(&c, &ClientAuth::None, &[b"x"]).expect("server config");
    client_config(&ClientTrust::CaFile(dir.join("ca.pem")), None, &[]).expect("client config");
    assert!(client_config(&ClientTrust::Pin("sha256:abc".into()), None, &[]).is_err());
    #[cfg(unix)]
    for key in ["ca.key", "server.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(key))
            .expect(key)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} is {mode:o}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
