//! A small JSON-over-HTTP/1.1 client for the driver (hyper-util's pooled client).

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A pooled HTTP client; clones share the pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

/// Status and body of an answer.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    /// The status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body parsed as JSON.
    ///
    /// # Errors
    /// When the body is not the expected JSON.
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "unexpected response body ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client with `TCP_NODELAY` and a keep-alive pool.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new()).build(connector);
        HttpClient { inner }
    }

    /// `GET url`.
    ///
    /// # Errors
    /// Connection and protocol errors (any status is a success here).
    pub async fn get(&self, url: &str) -> anyhow::Result<HttpResponse> {
        self.send(Method::GET, url, Bytes::new()).await
    }

    /// `POST url` with a JSON body.
    ///
    /// # Errors
    /// Connection and protocol errors (any status is a success here).
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
    ) -> anyhow::Result<HttpResponse> {
        let body = serde_json::to_vec(body).context("encode the request body")?;
        self.send(Method::POST, url, Bytes::from(body)).await
    }

    async fn send(&self, method: Method, url: &str, body: Bytes) -> anyhow::Result<HttpResponse> {
        let mut request = Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(body))
            .with_context(|| format!("bad request URL {url}"))?;
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self
            .inner
            .request(request)
            .await
            .with_context(|| format!("request to {url}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("read the response from {url}"))?
            .to_bytes();
        Ok(HttpResponse { status, body })
    }
}
