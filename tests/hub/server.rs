//! The throwaway HTTP server on 127.0.0.1 the hub tests download from: fixed replies by path,
//! honest and hostile.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub enum Reply {
    /// 200 with the file's bytes and extra headers.
    File(&'static str, Vec<(&'static str, String)>),
    /// 302 to a path on this server, with extra headers.
    Redirect(&'static str, Vec<(&'static str, String)>),
    Status(u16),
    /// Announces the whole file's length, sends half of it, then closes.
    Truncated(&'static str),
    /// 200 with these bytes (an HTML error page, say).
    Body(&'static [u8]),
    /// 200 without a length, then zeros until the client hangs up.
    Endless,
    /// 200 announcing a megabyte, then one byte every 50 ms.
    Slow,
    /// 200 without a length, then one byte per interval until the client hangs up.
    Trickle(Duration),
}

/// Serves fixed replies by path, one request per connection, and counts requests. It stops
/// when dropped, and by itself after a deadline so a failing test cannot leave it running.
pub struct Server {
    pub addr: String,
    hits: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(routes: Vec<(&'static str, Reply)>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let routes: HashMap<String, Reply> = routes
            .into_iter()
            .map(|(p, r)| (p.to_string(), r))
            .collect();
        let hits = Arc::new(AtomicUsize::new(0));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, p, s) = (hits.clone(), paths.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = serve(stream, &routes, &p);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            addr,
            hits,
            paths,
            stop,
            thread: Some(thread),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    stream: TcpStream,
    routes: &HashMap<String, Reply>,
    paths: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
    }
    paths.lock().unwrap().push(path.clone());
    let mut out = stream;
    let head = |status: &str, len: usize, extra: &[(&str, String)]| {
        let mut s = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (k, v) in extra {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s + "\r\n"
    };
    match routes.get(&path) {
        Some(Reply::File(file, extra)) => {
            let body = fs::read(file)?;
            out.write_all(head("200 OK", body.len(), extra).as_bytes())?;
            out.write_all(&body)?;
        }
        Some(Reply::Redirect(to, extra)) => {
            let mut extra = extra.clone();
            extra.push(("Location", to.to_string()));
            out.write_all(head("302 Found", 0, &extra).as_bytes())?;
        }
        Some(Reply::Status(code)) => {
            let body = b"boom";
            out.write_all(head(&format!("{code} Oops"), body.len(), &[]).as_bytes())?;
            out.write_all(body)?;
        }
        Some(Reply::Truncated(file)) => {
            let body = fs::read(file)?;
            out.write_all(head("200 OK", body.len(), &[]).as_bytes())?;
            out.write_all(&body[..body.len() / 2])?;
        }
        Some(Reply::Body(body)) => {
            out.write_all(head("200 OK", body.len(), &[]).as_bytes())?;
            out.write_all(body)?;
        }
        Some(Reply::Endless) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![0u8; 1 << 16];
            // Bounded so that a client that never stops reading still ends the test.
            for _ in 0..(1 << 14) {
                out.write_all(&chunk)?;
            }
        }
        Some(Reply::Slow) => {
            out.write_all(head("200 OK", 1 << 20, &[]).as_bytes())?;
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                out.write_all(b"x")?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Some(Reply::Trickle(every)) => {
            out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until {
                out.write_all(b"x")?;
                out.flush()?;
                std::thread::sleep(*every);
            }
        }
        None => {
            out.write_all(head("404 Not Found", 0, &[]).as_bytes())?;
        }
    }
    out.flush()?;
    out.shutdown(std::net::Shutdown::Both)
}
