//! A loopback HTTP/1.1 server for the download tests: fixed bodies by path, `Range: bytes=N-`
//! (206 + Content-Range, 416 past the end), a dropped connection mid-body on the first
//! request of a route, extra headers (the hub's `ETag` / `X-Repo-Commit`), and a log of what
//! it was asked. One connection at a time, `Connection: close` on every answer.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the server answers on one path.
#[derive(Clone, Debug, Default)]
pub struct Route {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    drop_first_after: Option<usize>,
    ignore_range: bool,
}

impl Route {
    pub fn new(body: Vec<u8>) -> Self {
        Self {
            body,
            ..Self::default()
        }
    }

    /// The first GET sends the full Content-Length but only `n` body bytes, then closes.
    pub fn drop_first_after(mut self, n: usize) -> Self {
        self.drop_first_after = Some(n);
        self
    }

    /// Answers 200 with the whole body even when a range is asked for.
    pub fn ignore_range(mut self) -> Self {
        self.ignore_range = true;
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
}

pub struct Server {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(routes: Vec<(&str, Route)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let routes: HashMap<String, Route> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut served: HashMap<String, usize> = HashMap::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let _ = handle(conn, &routes, &log2, &mut served);
            }
        });
        Self {
            addr,
            log,
            stop,
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn handle(
    conn: TcpStream,
    routes: &HashMap<String, Route>,
    log: &Mutex<Vec<Logged>>,
    served: &mut HashMap<String, usize>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(_method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    if let Ok(mut l) = log.lock() {
        l.push(Logged {
            path: path.clone(),
            range: range.clone(),
        });
    }
    let mut out = conn;
    let Some(route) = routes.get(&path) else {
        write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    };
    let n = served.entry(path.clone()).or_insert(0);
    *n += 1;
    let first = *n == 1;
    let len = route.body.len();
    let mut head = String::new();
    let (start, end) = match range.as_deref().and_then(parse_range) {
        Some((s, e)) if !route.ignore_range => {
            if s >= len {
                write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                )?;
                return Ok(());
            }
            let e = e.unwrap_or(len - 1).min(len - 1);
            head.push_str("HTTP/1.1 206 Partial Content\r\n");
            head.push_str(&format!("Content-Range: bytes {s}-{e}/{len}\r\n"));
            (s, e + 1)
        }
        _ => {
            head.push_str("HTTP/1.1 200 OK\r\n");
            (0, len)
        }
    };
    head.push_str(&format!(
        "Content-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
        end - start
    ));
    for (k, v) in &route.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    let body = &route.body[start..end];
    match route.drop_first_after {
        Some(k) if first => {
            out.write_all(&body[..k.min(body.len())])?;
            out.flush()?;
            out.shutdown(Shutdown::Both)?;
        }
        _ => {
            out.write_all(body)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `bytes=S-` or `bytes=S-E`.
fn parse_range(v: &str) -> Option<(usize, Option<usize>)> {
    let (s, e) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((s.parse().ok()?, e.parse().ok()))
}
