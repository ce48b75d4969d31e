//! A plain HTTP/1.1 client for the command-line tools. Prometheus and the session service are
//! reached over `http://` (a port-forward, or a pod's IP from inside the cluster network), one
//! request per connection, each bounded in time so a command never hangs on a silent peer.

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};

/// How long connecting, and then the whole answer, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One answer: its status and body.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Sends one request to `url`, with a bearer token and a JSON body when given.
///
/// # Errors
/// When the URL is not `http://host[:port]/…`, or connecting or answering fails or times out.
pub(crate) async fn request(
    method: Method,
    url: &str,
    bearer: Option<&str>,
    json: Option<&serde_json::Value>,
) -> anyhow::Result<Answer> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "{url}: only http:// URLs are supported (use a port-forward for others)"
    );
    let host = uri.host().with_context(|| format!("{url} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect((host, port)))
        .await
        .with_context(|| format!("connecting to {host}:{port} timed out after 5 s"))?
        .with_context(|| format!("cannot connect to {host}:{port}"))?;
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{host}:{port}"));
        if let Some(token) = bearer {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match json {
            Some(value) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(value)?)
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Answer { status, body })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| format!("{host}:{port} did not answer within 5 s"))?
}
