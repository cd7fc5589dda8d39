//! A local stand-in for the Hugging Face hub's file API, on 127.0.0.1 (port 0), answering as the
//! hub does: `HEAD`/`GET /{repo}/resolve/{rev}/{file}`; LFS files (`*.pt`, `*.model`,
//! `*.safetensors`) answer
//! with a 302 to a CDN-like `/cdn/{sha256}` carrying `X-Linked-Size`, `X-Linked-Etag` and
//! `X-Repo-Commit`; files kept in git answer 200 with their git blob sha1 as `ETag`; bodies honour
//! `Range` with 206 and `Content-Range`. It counts the body bytes it sends per file, and can cut,
//! stall, slow down or corrupt a file. One thread per connection; every thread stops when the
//! server is dropped, and the server stops by itself after [`LIFETIME`].
// Each test binary uses part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha1::Digest as _;

/// The repository the server holds.
pub const REPO: &str = "FunAudioLLM/SenseVoiceSmall";
/// The commit `main` resolves to.
pub const COMMIT: &str = "5a5e5e1c0ffee0ddba11ab1e5eed5ca1ab1e0001";
/// The server gives up on its own after this long.
pub const LIFETIME: Duration = Duration::from_secs(90);

/// What to do to one file's bytes.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// The first GET of the file closes the connection after this many body bytes.
    pub cut_first_get_at: Option<u64>,
    /// Every GET sends this many bytes, then sends nothing more (until the server stops).
    pub stall_after: Option<u64>,
    /// The body has one byte flipped (the metadata stays the real file's).
    pub corrupt: bool,
    /// Sleep this long after every 16 KiB of body.
    pub delay_per_chunk: Option<Duration>,
}

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// "HEAD" or "GET".
    pub method: String,
    /// The path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

struct FileEntry {
    name: String,
    bytes: Vec<u8>,
    sha256: String,
    git_sha1: String,
    lfs: bool,
}

struct State {
    repo: String,
    files: Vec<FileEntry>,
    quirks: HashMap<String, Quirks>,
    served: Mutex<HashMap<String, u64>>,
    gets: Mutex<HashMap<String, u32>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    port: u16,
}

/// The running server.
pub struct HubServer {
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The committed random-weight Whisper's files, as a Whisper repository holds them.
pub fn whisper_files() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/whisper/model");
    [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "model.safetensors",
    ]
    .iter()
    .map(|name| {
        let bytes = std::fs::read(dir.join(name)).expect("whisper model file");
        ((*name).to_owned(), bytes)
    })
    .collect()
}

/// The tiny test model's four release files.
pub fn tiny_files() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sensevoice/tiny");
    [
        "model.pt",
        "am.mvn",
        "chn_jpn_yue_eng_ko_spectok.bpe.model",
        "config.yaml",
    ]
    .iter()
    .map(|name| {
        let bytes = std::fs::read(dir.join(name)).expect("tiny model file");
        ((*name).to_owned(), bytes)
    })
    .collect()
}

impl HubServer {
    /// Serves `files` of [`REPO`] with `quirks` (by file name).
    pub fn start(files: Vec<(String, Vec<u8>)>, quirks: HashMap<String, Quirks>) -> Self {
        Self::start_repo(REPO, files, quirks)
    }

    /// Serves `files` as repository `repo`.
    pub fn start_repo(
        repo: &str,
        files: Vec<(String, Vec<u8>)>,
        quirks: HashMap<String, Quirks>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let files = files
            .into_iter()
            .map(|(name, bytes)| {
                let sha256 = hex(&sha2::Sha256::digest(&bytes));
                let mut git = sha1::Sha1::new();
                git.update(format!("blob {}\0", bytes.len()).as_bytes());
                git.update(&bytes);
                let lfs = name.ends_with(".pt")
                    || name.ends_with(".model")
                    || name.ends_with(".safetensors");
                FileEntry {
                    name,
                    sha256,
                    git_sha1: hex(&git.finalize()),
                    bytes,
                    lfs,
                }
            })
            .collect();
        let state = Arc::new(State {
            repo: repo.to_owned(),
            files,
            quirks,
            served: Mutex::default(),
            gets: Mutex::default(),
            seen: Mutex::default(),
            stop: AtomicBool::new(false),
            port,
        });
        let shared = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("hub-server".to_owned())
            .spawn(move || accept_loop(&listener, &shared))
            .expect("spawn hub-server");
        Self {
            state,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port>`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.state.port)
    }

    /// Body bytes sent for `file` so far (all requests).
    pub fn served(&self, file: &str) -> u64 {
        self.state
            .served
            .lock()
            .expect("lock")
            .get(file)
            .copied()
            .unwrap_or(0)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// The sha256 the server announces for `file`.
    pub fn sha256(&self, file: &str) -> String {
        self.state
            .files
            .iter()
            .find(|f| f.name == file)
            .map(|f| f.sha256.clone())
            .expect("known file")
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    let started = Instant::now();
    let mut handlers = Vec::new();
    while !state.stop.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
        match listener.accept() {
            Ok((stream, _)) => {
                let state = Arc::clone(state);
                let handler = std::thread::Builder::new()
                    .name("hub-conn".to_owned())
                    .spawn(move || {
                        stream.set_nonblocking(false).ok();
                        stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
                        serve(stream, &state);
                    });
                if let Ok(h) = handler {
                    handlers.push(h);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    state.stop.store(true, Ordering::Relaxed);
    for h in handlers {
        h.join().ok();
    }
}

fn serve(stream: TcpStream, state: &State) {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_owned());
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let path = parts.next().unwrap_or("").to_owned();
    state.seen.lock().expect("lock").push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
    });
    respond(stream, state, &method, &path, range.as_deref());
}

fn head_only(stream: &mut TcpStream, status: &str, headers: &[(String, String)]) {
    let mut text = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("Connection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).ok();
}

fn respond(mut stream: TcpStream, state: &State, method: &str, path: &str, range: Option<&str>) {
    let commit = ("X-Repo-Commit".to_owned(), COMMIT.to_owned());
    if let Some(rest) = path.strip_prefix(&format!("/{}/resolve/", state.repo)) {
        let Some((rev, name)) = rest.split_once('/') else {
            return head_only(&mut stream, "400 Bad Request", &[]);
        };
        let is_hash = rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
        let commit = if is_hash {
            ("X-Repo-Commit".to_owned(), rev.to_owned())
        } else {
            commit
        };
        if rev != "main" && !is_hash {
            return head_only(
                &mut stream,
                "404 Not Found",
                &[
                    ("X-Error-Code".into(), "RevisionNotFound".into()),
                    ("Content-Length".into(), "0".into()),
                ],
            );
        }
        let Some(file) = state.files.iter().find(|f| f.name == name) else {
            return head_only(
                &mut stream,
                "404 Not Found",
                &[
                    ("X-Error-Code".into(), "EntryNotFound".into()),
                    commit,
                    ("Content-Length".into(), "0".into()),
                ],
            );
        };
        if file.lfs {
            let location = format!("http://127.0.0.1:{}/cdn/{}", state.port, file.sha256);
            return head_only(
                &mut stream,
                "302 Found",
                &[
                    ("Location".into(), location),
                    ("X-Linked-Etag".into(), format!("\"{}\"", file.sha256)),
                    ("X-Linked-Size".into(), file.bytes.len().to_string()),
                    ("ETag".into(), format!("\"{}\"", file.git_sha1)),
                    commit,
                    ("Content-Length".into(), "0".into()),
                ],
            );
        }
        let etag = ("ETag".to_owned(), format!("\"{}\"", file.git_sha1));
        return body(stream, state, file, method, range, vec![etag, commit]);
    }
    if let Some(sha) = path.strip_prefix("/cdn/")
        && let Some(file) = state.files.iter().find(|f| f.sha256 == sha)
    {
        return body(stream, state, file, method, range, Vec::new());
    }
    head_only(
        &mut stream,
        "404 Not Found",
        &[("Content-Length".into(), "0".into())],
    );
}

fn body(
    mut stream: TcpStream,
    state: &State,
    file: &FileEntry,
    method: &str,
    range: Option<&str>,
    mut headers: Vec<(String, String)>,
) {
    let len = file.bytes.len() as u64;
    let start = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<u64>().ok());
    headers.push(("Accept-Ranges".into(), "bytes".into()));
    let (status, from) = match start {
        Some(s) if s >= len => {
            headers.push(("Content-Range".into(), format!("bytes */{len}")));
            headers.push(("Content-Length".into(), "0".into()));
            return head_only(&mut stream, "416 Range Not Satisfiable", &headers);
        }
        Some(s) => {
            headers.push((
                "Content-Range".into(),
                format!("bytes {s}-{}/{len}", len - 1),
            ));
            ("206 Partial Content", s)
        }
        None => ("200 OK", 0),
    };
    headers.push(("Content-Length".into(), (len - from).to_string()));
    head_only(&mut stream, status, &headers);
    if method != "GET" {
        return;
    }
    let quirks = state.quirks.get(&file.name).cloned().unwrap_or_default();
    let nth_get = {
        let mut gets = state.gets.lock().expect("lock");
        let n = gets.entry(file.name.clone()).or_insert(0);
        *n += 1;
        *n
    };
    let mut bytes = file.bytes.clone();
    if quirks.corrupt
        && let Some(b) = bytes.get_mut(file.bytes.len() / 2)
    {
        *b ^= 0x5a;
    }
    let mut end = len;
    if nth_get == 1
        && let Some(cut) = quirks.cut_first_get_at
    {
        end = end.min(cut.max(from));
    }
    let stall = quirks.stall_after.map(|s| (from + s).min(len));
    if let Some(s) = stall {
        end = end.min(s);
    }
    let mut at = from;
    while at < end {
        if state.stop.load(Ordering::Relaxed) {
            return;
        }
        let to = (at + 16 * 1024).min(end);
        let chunk = &bytes[usize::try_from(at).unwrap_or(0)..usize::try_from(to).unwrap_or(0)];
        if stream.write_all(chunk).is_err() {
            return;
        }
        *state
            .served
            .lock()
            .expect("lock")
            .entry(file.name.clone())
            .or_insert(0) += to - at;
        at = to;
        if let Some(d) = quirks.delay_per_chunk {
            std::thread::sleep(d);
        }
    }
    stream.flush().ok();
    if stall.is_some() {
        // Keep the connection open and silent until the server stops.
        let until = Instant::now() + Duration::from_secs(20);
        while !state.stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    stream.shutdown(std::net::Shutdown::Write).ok();
}
