//! The hub's file API, as `huggingface_hub` uses it: `HEAD {endpoint}/{repo}/resolve/{rev}/{file}`
//! without following redirects gives the commit (`X-Repo-Commit`), the size and the etag
//! (`X-Linked-Size` / `X-Linked-Etag` for LFS files, whose answer is a redirect to a CDN;
//! `Content-Length` / `ETag` otherwise); `GET` on the resolved location with a `Range` resumes.

use std::io::Read;
use std::time::Duration;

use ureq::Agent;
use ureq::http::{HeaderMap, StatusCode};

use super::StoreError;

/// What the hub says about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// The file's name in the repository.
    pub file: String,
    /// The commit the revision resolved to.
    pub commit: String,
    /// The etag: sha256 for LFS files, the git blob sha1 otherwise (quotes removed).
    pub etag: String,
    /// Bytes.
    pub size: u64,
    /// Stored in LFS (the hub sent `X-Linked-Etag`).
    pub lfs: bool,
    /// Where to GET the bytes.
    pub url: String,
}

/// One HTTP client with the store's timeouts.
pub struct Hub {
    agent: Agent,
    endpoint: String,
    repo: String,
    token: Option<String>,
}

/// An open body: the bytes from `start` on, of a file of `total` bytes.
pub struct Body {
    /// The offset the body starts at (0 unless a Range was honoured).
    pub start: u64,
    /// The reader.
    pub reader: Box<dyn Read + Send>,
}

impl Hub {
    /// A client for `repo` at `endpoint`.
    pub fn new(
        endpoint: &str,
        repo: &str,
        token: Option<String>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Self {
        let agent: Agent = Agent::config_builder()
            .timeout_connect(Some(connect_timeout))
            .timeout_recv_response(Some(read_timeout))
            .timeout_per_read(Some(read_timeout))
            .http_status_as_error(false)
            // Bytes on disk must be the file's bytes: no transparent decompression.
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .user_agent(concat!("gpuscribe/", env!("CARGO_PKG_VERSION")))
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build()
            .into();
        Self {
            agent,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            repo: repo.to_owned(),
            token,
        }
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub fn resolve_url(&self, revision: &str, file: &str) -> String {
        format!("{}/{}/resolve/{revision}/{file}", self.endpoint, self.repo)
    }

    fn net_err(&self, file: &str, message: String) -> StoreError {
        StoreError::Network {
            repo: self.repo.clone(),
            file: file.to_owned(),
            endpoint: self.endpoint.clone(),
            message,
        }
    }

    fn status_err(&self, file: &str, revision: &str, status: StatusCode, url: &str) -> StoreError {
        if status == StatusCode::NOT_FOUND {
            StoreError::NotFound {
                repo: self.repo.clone(),
                file: file.to_owned(),
                revision: revision.to_owned(),
                url: url.to_owned(),
            }
        } else {
            StoreError::Status {
                repo: self.repo.clone(),
                file: file.to_owned(),
                status: status.as_u16(),
                url: url.to_owned(),
            }
        }
    }

    /// The hub's metadata of `file` at `revision` (relative redirects of renamed repositories
    /// are followed; an absolute one is where the bytes live).
    pub fn meta(&self, revision: &str, file: &str) -> Result<FileMeta, StoreError> {
        let mut url = self.resolve_url(revision, file);
        for _ in 0..4 {
            let mut request = self.agent.head(&url);
            if let Some(token) = &self.token {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request
                .call()
                .map_err(|e| self.net_err(file, describe(&e)))?;
            let status = response.status();
            let headers = response.headers();
            let location = header(headers, "location");
            if status.is_redirection()
                && header(headers, "x-linked-etag").is_none()
                && let Some(loc) = location.as_deref().filter(|l| l.starts_with('/'))
            {
                url = format!("{}{loc}", origin(&self.endpoint));
                continue;
            }
            if !(status.is_success() || status.is_redirection()) {
                return Err(self.status_err(file, revision, status, &url));
            }
            return self.meta_from_headers(file, revision, headers, status, &url, location);
        }
        Err(self.net_err(file, format!("too many redirects from {url}")))
    }

    fn meta_from_headers(
        &self,
        file: &str,
        revision: &str,
        headers: &HeaderMap,
        status: StatusCode,
        url: &str,
        location: Option<String>,
    ) -> Result<FileMeta, StoreError> {
        let missing = |what: &str| StoreError::Metadata {
            repo: self.repo.clone(),
            file: file.to_owned(),
            url: url.to_owned(),
            message: format!("the answer has no {what} header"),
        };
        let commit = header(headers, "x-repo-commit")
            .or_else(|| super::cache::is_commit_hash(revision).then(|| revision.to_owned()))
            .ok_or_else(|| missing("X-Repo-Commit"))?;
        let linked_etag = header(headers, "x-linked-etag");
        let lfs = linked_etag.is_some();
        let etag = linked_etag
            .or_else(|| header(headers, "etag"))
            .map(|e| clean_etag(&e))
            .filter(|e| !e.is_empty())
            .ok_or_else(|| missing("ETag"))?;
        let size = header(headers, "x-linked-size")
            .or_else(|| header(headers, "content-length"))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| missing("X-Linked-Size or Content-Length"))?;
        let url = match location {
            Some(loc) if status.is_redirection() && loc.starts_with('/') => {
                format!("{}{loc}", origin(&self.endpoint))
            }
            Some(loc) if status.is_redirection() => loc,
            _ => url.to_owned(),
        };
        if etag.contains('/') || etag.contains("..") {
            return Err(StoreError::Metadata {
                repo: self.repo.clone(),
                file: file.to_owned(),
                url,
                message: format!("the etag {etag:?} cannot name a cache file"),
            });
        }
        Ok(FileMeta {
            file: file.to_owned(),
            commit,
            etag,
            size,
            lfs,
            url,
        })
    }

    /// GETs `meta.url` from byte `from` on (following redirects), checking the status; `None`
    /// when the server says the range cannot be satisfied (the partial file is no good).
    pub fn open(
        &self,
        meta: &FileMeta,
        from: u64,
        revision: &str,
    ) -> Result<Option<Body>, StoreError> {
        let mut url = meta.url.clone();
        for _ in 0..6 {
            let mut request = self.agent.get(&url);
            if from > 0 {
                request = request.header("Range", format!("bytes={from}-"));
            }
            if let Some(token) = &self.token
                && url.starts_with(&self.endpoint)
            {
                request = request.header("Authorization", format!("Bearer {token}"));
            }
            let response = request
                .call()
                .map_err(|e| self.net_err(&meta.file, describe(&e)))?;
            let status = response.status();
            if status.is_redirection() {
                let Some(loc) = header(response.headers(), "location") else {
                    return Err(self.status_err(&meta.file, revision, status, &url));
                };
                url = if loc.starts_with('/') {
                    format!("{}{loc}", origin(&url))
                } else {
                    loc
                };
                continue;
            }
            let start = match status.as_u16() {
                200 => 0,
                206 => content_range_start(response.headers()).unwrap_or(u64::MAX),
                416 => return Ok(None),
                _ => return Err(self.status_err(&meta.file, revision, status, &url)),
            };
            if start != 0 && start != from {
                return Err(self.net_err(
                    &meta.file,
                    format!(
                        "asked for bytes from {from} and got a range that does not start there"
                    ),
                ));
            }
            let reader = response.into_body().into_reader();
            return Ok(Some(Body {
                start,
                reader: Box::new(reader),
            }));
        }
        Err(self.net_err(&meta.file, format!("too many redirects from {url}")))
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `W/"abc"` → `abc`.
fn clean_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_owned()
}

/// `https://host:port` of a URL.
fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    url[..end].to_owned()
}

/// The first byte of `Content-Range: bytes a-b/n`.
fn content_range_start(headers: &HeaderMap) -> Option<u64> {
    let value = header(headers, "content-range")?;
    let range = value.trim().strip_prefix("bytes")?.trim();
    range.split('-').next()?.trim().parse().ok()
}

/// A ureq error in words ("timed out", "connection refused").
fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(t) => format!("timed out ({t})"),
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_lose_quotes_and_weakness() {
        assert_eq!(clean_etag("W/\"abc\""), "abc");
        assert_eq!(clean_etag("\"abc\""), "abc");
    }

    #[test]
    fn origin_of_urls() {
        assert_eq!(origin("http://127.0.0.1:8/a/b"), "http://127.0.0.1:8");
        assert_eq!(origin("https://hf.co"), "https://hf.co");
    }
}
