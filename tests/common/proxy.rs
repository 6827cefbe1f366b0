//! A TCP proxy the test controls, between the relay and a service: forward, refuse new
//! connections, black-hole (accept and hold, forward nothing), or cut every connection.

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

#[derive(Debug, Clone, Copy)]
struct Control {
    mode: Mode,
    /// Bumped to reset every open connection.
    generation: u64,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let (control, _) = watch::channel(Control {
            mode: Mode::Forward,
            generation: 0,
        });
        let control = Arc::new(control);
        let open = Arc::new(AtomicUsize::new(0));
        let accepting = tokio::spawn({
            let control = control.clone();
            let open = open.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let state = *control.borrow();
                    if state.mode == Mode::Refuse {
                        reset(client);
                        continue;
                    }
                    open.fetch_add(1, Ordering::SeqCst);
                    let piped = pipe(client, upstream, control.subscribe(), state.generation);
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

async fn pipe(
    client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    generation: u64,
) {
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
        let state = *control.borrow();
        if state.generation != generation {
            break;
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
                Ok(n) => if client_write.write_all(&down[..n]).await.is_err() { break },
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
