//! Test certificates for TLS to Redis, shared by the sidecar's and the operator's tests (each
//! includes this file with `#[path]`): a CA made for the test and a leaf for `localhost` and
//! `127.0.0.1` issued by it, written with the openssl CLI as `ca.crt`, `tls.crt` and `tls.key`.

use std::path::Path;
use std::process::Command;

/// Writes `ca.crt`, `tls.crt` and `tls.key` (and their by-products) into `dir`.
pub fn make_test_certs(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl not found: run tests/run.sh, which installs it");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=session-test-ca",
    ];
    openssl(&[&["req", "-x509"], &key[..], &ca[..]].concat());
    let csr = [
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=localhost",
    ];
    openssl(&[&["req"], &key[..], &csr[..]].concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("writing san.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ]);
}
