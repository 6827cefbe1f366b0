//! A TCP proxy the test controls, between the relay and a service: forward, refuse new
//! connections, black-hole (accept and hold, forward nothing), or cut every connection.
//! An AMQP proxy ([`Proxy::start_amqp`]) can also slip a frame of its own between the
//! broker's frames, as the broker would send it ([`Proxy::inject`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways.
    Forward,
    /// Reset new connections at once and cut the current ones: the service is down.
    Refuse,
    /// Hold connections open and pass nothing: a silent network. A new connection is
    /// accepted and never answered; an established one goes half-open (no reset, no
    /// bytes either way) until the mode changes back.
    Blackhole,
}

#[derive(Debug, Clone)]
struct Control {
    mode: Mode,
    /// Bumped to reset every open connection.
    generation: u64,
    /// Bumped with each frame to send to the clients of an AMQP proxy.
    injected: u64,
    frame: Arc<Vec<u8>>,
}

pub struct Proxy {
    pub port: u16,
    control: Arc<watch::Sender<Control>>,
    /// Connections accepted and not yet ended.
    open: Arc<AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_framed(upstream, false).await
    }

    /// A proxy for AMQP 0-9-1: it passes the broker's frames whole, so that
    /// [`Proxy::inject`] can add one between them.
    pub async fn start_amqp(upstream: SocketAddr) -> Self {
        Self::start_framed(upstream, true).await
    }

    async fn start_framed(upstream: SocketAddr, amqp: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (control, _) = watch::channel(Control {
            mode: Mode::Forward,
            generation: 0,
            injected: 0,
            frame: Arc::new(Vec::new()),
        });
        let control = Arc::new(control);
        let open = Arc::new(AtomicUsize::new(0));
        let accepting = tokio::spawn({
            let control = control.clone();
            let open = open.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let state = control.borrow().clone();
                    if state.mode == Mode::Refuse {
                        reset(client);
                        continue;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    let piped = pipe(client, upstream, control.subscribe(), state, amqp);
                    let open = open.clone();
                    tokio::spawn(async move {
                        piped.await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Self {
            port,
            control,
            open,
            accepting,
        }
    }

    pub fn set(&self, mode: Mode) {
        self.control.send_modify(|control| {
            if mode == Mode::Refuse {
                control.generation += 1;
            }
            control.mode = mode;
        });
    }

    /// Connections through the proxy now open (accepted, not yet ended by either side).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Sends `frame` to every client of an AMQP proxy, between two of the broker's frames.
    pub fn inject(&self, frame: Vec<u8>) {
        self.control.send_modify(|control| {
            control.injected += 1;
            control.frame = Arc::new(frame);
        });
    }

    /// Resets every open connection (new ones are accepted as the mode says).
    pub fn cut(&self) {
        self.control.send_modify(|control| control.generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

fn reset(stream: TcpStream) {
    // Linger 0: closing sends RST, as a dropped connection would.
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// The end of the first whole AMQP frame in `buffer` (type, channel, size, payload,
/// 0xCE), if it holds one.
fn frame_end(buffer: &[u8]) -> Option<usize> {
    let size = u32::from_be_bytes(buffer.get(3..7)?.try_into().ok()?) as usize;
    let end = 7 + size + 1;
    (buffer.len() >= end).then_some(end)
}

/// An AMQP method frame on channel 0: class, method, arguments.
pub fn connection_method(class: u16, method: u16, arguments: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class.to_be_bytes());
    payload.extend_from_slice(&method.to_be_bytes());
    payload.extend_from_slice(arguments);
    let mut frame = vec![1, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(0xCE);
    frame
}

/// `connection.blocked` with `reason`, as RabbitMQ sends it during a resource alarm.
pub fn connection_blocked(reason: &str) -> Vec<u8> {
    let mut arguments = vec![reason.len() as u8];
    arguments.extend_from_slice(reason.as_bytes());
    connection_method(10, 60, &arguments)
}

/// `connection.unblocked`, sent when the alarm clears.
pub fn connection_unblocked() -> Vec<u8> {
    connection_method(10, 61, &[])
}

async fn pipe(
    client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    start: Control,
    amqp: bool,
) {
    let generation = start.generation;
    let mut injected = start.injected;
    // The broker's bytes not yet passed on: the start of a frame (AMQP proxies only).
    let mut partial: Vec<u8> = Vec::new();
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    loop {
        let state = control.borrow().clone();
        if state.generation != generation {
            break;
        }
        if state.injected != injected {
            injected = state.injected;
            if client_write.write_all(&state.frame).await.is_err() {
                break;
            }
        }
        let forwarding = state.mode == Mode::Forward;
        tokio::select! {
            changed = control.changed() => if changed.is_err() { break },
            read = client_read.read(&mut up), if forwarding => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => if server_write.write_all(&up[..n]).await.is_err() { break },
            },
            read = server_read.read(&mut down), if forwarding => match read {
                Ok(0) | Err(_) => break,
                Ok(n) if !amqp => if client_write.write_all(&down[..n]).await.is_err() { break },
                Ok(n) => {
                    partial.extend_from_slice(&down[..n]);
                    // Whole frames only (after the 8-byte protocol header, which the
                    // broker never sends: only clients do).
                    let mut whole = 0;
                    while let Some(end) = frame_end(&partial[whole..]) {
                        whole += end;
                    }
                    if client_write.write_all(&partial[..whole]).await.is_err() { break }
                    partial.drain(..whole);
                }
            },
        }
    }
    if let (Ok(client), Ok(server)) = (
        client_read.reunite(client_write),
        server_read.reunite(server_write),
    ) {
        reset(client);
        reset(server);
    }
}
