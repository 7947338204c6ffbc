//! HTTP to the published pages: readiness (GET) and the smoke test's vote
//! (POST, like a browser on the vote page). Requests go only to the URLs
//! the engine gives (the frontend host's address).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, COOKIE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::HostError;

/// Most bytes of a response body read (the rest is dropped).
const BODY_LIMIT: usize = 1 << 20;

/// A small HTTP/1 client with a per-request timeout.
#[derive(Clone)]
pub struct Web {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web").field("timeout", &self.timeout).finish()
    }
}

/// A voter id is sent as a cookie value: keep it to a safe alphabet.
pub fn valid_voter_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Web {
    pub fn new(timeout: Duration) -> Web {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Web { client, timeout }
    }

    fn uri(url: &str) -> Result<Uri, HostError> {
        let uri: Uri =
            url.parse().map_err(|e| HostError::Http { url: url.into(), message: format!("not a URL: {e}") })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(HostError::Http {
                url: url.into(),
                message: "only http:// URLs with a host are probed".into(),
            });
        }
        Ok(uri)
    }

    /// Sends `req`; returns the status and up to [`BODY_LIMIT`] bytes of body.
    async fn send(&self, url: &str, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), HostError> {
        let fetch = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    source = s.source();
                }
                msg
            })?;
            let status = resp.status().as_u16();
            let body = http_body_util::Limited::new(resp.into_body(), BODY_LIMIT)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, fetch).await {
            Err(_) => Err(HostError::Http {
                url: url.into(),
                message: format!("no answer within {} s", self.timeout.as_secs()),
            }),
            Ok(Err(message)) => Err(HostError::Http { url: url.into(), message }),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Status of a GET.
    pub async fn status(&self, url: &str) -> Result<u16, HostError> {
        let uri = Web::uri(url)?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header("user-agent", "votingstack-operator")
            .body(Full::new(Bytes::new()))
            .map_err(|e| HostError::Http { url: url.into(), message: e.to_string() })?;
        Ok(self.send(url, req).await?.0)
    }

    /// POSTs `vote=<vote>` as the voter with cookie `voter_id=<voter_id>`.
    pub async fn cast_vote(&self, vote_url: &str, voter_id: &str, vote: &str) -> Result<(), HostError> {
        if !valid_voter_id(voter_id) {
            return Err(HostError::Http {
                url: vote_url.into(),
                message: format!("voter id {voter_id:?} may hold only letters, digits, '-', '_' and '.'"),
            });
        }
        if vote != "a" && vote != "b" {
            return Err(HostError::Http {
                url: vote_url.into(),
                message: format!("vote must be a or b, not {vote:?}"),
            });
        }
        let uri = Web::uri(vote_url)?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("user-agent", "votingstack-operator")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(COOKIE, format!("voter_id={voter_id}"))
            .body(Full::new(Bytes::from(format!("vote={vote}"))))
            .map_err(|e| HostError::Http { url: vote_url.into(), message: e.to_string() })?;
        let (status, body) = self.send(vote_url, req).await?;
        if (200..400).contains(&status) {
            return Ok(());
        }
        let text: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        Err(HostError::Http {
            url: vote_url.into(),
            message: format!("the vote was refused with HTTP {status}: {}", text.trim()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server on 127.0.0.1 that records the request.
    async fn serve_once(reply: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len || n == 0 {
                        break;
                    }
                }
            }
            sock.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        (format!("http://{addr}/"), task)
    }

    #[tokio::test]
    async fn a_vote_is_a_form_post_with_the_voter_cookie() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
        let web = Web::new(Duration::from_secs(5));
        web.cast_vote(&url, "smoke-1", "a").await.unwrap();
        let req = server.await.unwrap();
        assert!(req.starts_with("POST / HTTP/1.1"), "{req}");
        assert!(req.contains("cookie: voter_id=smoke-1"), "{req}");
        assert!(req.contains("content-type: application/x-www-form-urlencoded"), "{req}");
        assert!(req.ends_with("vote=a"), "{req}");
    }

    #[tokio::test]
    async fn status_and_refusals_are_reported() {
        let (url, _server) =
            serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown").await;
        let web = Web::new(Duration::from_secs(5));
        assert_eq!(web.status(&url).await.unwrap(), 503);
        let (url, _server) =
            serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown").await;
        let err = web.cast_vote(&url, "v", "a").await.unwrap_err();
        assert!(err.to_string().contains("HTTP 503: down"), "{err}");
        assert!(web.cast_vote(&url, "bad id;", "a").await.is_err());
        assert!(web.status("https://127.0.0.1/").await.is_err());
    }
}
