//! JSON over HTTPS from the identity provider (its discovery document and key set). Its
//! certificate is verified against a configured CA bundle, or the system's roots (or
//! `SSL_CERT_FILE`, as for Redis); every fetch is bounded in time by the caller.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;

/// Key sets are a few kilobytes; anything far larger is not one.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The TLS settings for the provider: the CAs in `ca_file`, else the system's roots (or
/// `SSL_CERT_FILE`).
///
/// # Errors
/// When no CA can be loaded, in words.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                format!(
                    "cannot read the identity provider's CA file {}: {e}",
                    path.display()
                )
            })?;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("{} holds no PEM certificates: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the identity provider with (the CA file, SSL_CERT_FILE or the system's roots)".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// GETs `url` (which must be `https://`) and parses the body as JSON.
///
/// # Errors
/// In words: the URL, connecting, TLS verification, the status, or the body.
pub(crate) async fn get_json(
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
) -> Result<serde_json::Value, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| format!("{url} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!(
            "{url}: the identity provider must be reached over https://"
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{url} has no host"))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let name =
        ServerName::try_from(host.clone()).map_err(|_| format!("{host} is not a server name"))?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| {
            format!(
                "TLS with {host}:{port} failed (is its certificate signed by a trusted CA?): {e}"
            )
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP with {host}:{port} failed: {e}"))?;
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, host.as_str())
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| format!("{url}: reading the answer failed: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("{url} did not answer JSON: {e}"))
}
