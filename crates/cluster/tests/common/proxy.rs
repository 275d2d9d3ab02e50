//! A user-space TCP proxy for fault injection (this kernel has no netem): it forwards a loopback
//! port to a target and can add one-way delay, swallow bytes (a cut link that stays open),
//! refuse new connections, and drop every current connection.
//!
//! Every thread polls the proxy's flags at least every 50 ms and exits when the proxy is dropped;
//! every socket has read/write timeouts, so nothing here waits unboundedly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Control {
    stop: AtomicBool,
    delay_us: AtomicU64,
    blackhole: AtomicBool,
    refuse: AtomicBool,
    /// Bumped by `drop_connections`; connections from an older generation close.
    generation: AtomicU64,
    num_accepted: AtomicU64,
}

pub struct FaultProxy {
    address: SocketAddr,
    control: Arc<Control>,
    accept_thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking proxy listener");
        let address = listener.local_addr().expect("proxy address");
        let control = Arc::new(Control::default());
        let accept_thread = {
            let control = Arc::clone(&control);
            thread::spawn(move || accept_loop(&listener, target, &control))
        };
        Self {
            address,
            control,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Adds `delay` to every chunk in each direction (so a round trip gains twice `delay`).
    pub fn set_delay(&self, delay: Duration) {
        self.control
            .delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Swallows all bytes in both directions while keeping connections open.
    pub fn set_blackhole(&self, on: bool) {
        self.control.blackhole.store(on, Ordering::Relaxed);
    }

    /// Closes new connections as soon as they are accepted.
    pub fn set_refuse(&self, on: bool) {
        self.control.refuse.store(on, Ordering::Relaxed);
    }

    /// Closes every connection open now.
    pub fn drop_connections(&self) {
        self.control.generation.fetch_add(1, Ordering::Relaxed);
    }

    pub fn num_accepted(&self) -> u64 {
        self.control.num_accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::Relaxed);
        self.drop_connections();
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, control: &Arc<Control>) {
    while !control.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                control.num_accepted.fetch_add(1, Ordering::Relaxed);
                if control.refuse.load(Ordering::Relaxed) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(1))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let generation = control.generation.load(Ordering::Relaxed);
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let control = Arc::clone(control);
                    thread::spawn(move || pump(from, to, &control, generation));
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// One direction: a reader stamps chunks with their delivery time, a writer delivers them.
fn pump(from: TcpStream, to: TcpStream, control: &Arc<Control>, generation: u64) {
    let _ = from.set_nonblocking(false);
    let _ = to.set_nonblocking(false);
    let _ = from.set_read_timeout(Some(POLL));
    let _ = to.set_write_timeout(Some(Duration::from_secs(2)));
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let control = Arc::clone(control);
        let mut to = to.try_clone().expect("cloning the proxy socket");
        thread::spawn(move || {
            while alive(&control, generation) {
                let (deliver_at, chunk) = match receiver.recv_timeout(POLL) {
                    Ok(item) => item,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                };
                // Sleep in slices so a drop or stop still ends the thread promptly.
                while Instant::now() < deliver_at && alive(&control, generation) {
                    thread::sleep((deliver_at - Instant::now()).min(POLL));
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
            }
        })
    };
    let mut from = from;
    let mut buffer = vec![0u8; 64 << 10];
    while alive(control, generation) {
        match from.read(&mut buffer) {
            // A cut link does not carry the close either: hold the other side open.
            Ok(0) if control.blackhole.load(Ordering::Relaxed) => thread::sleep(POLL),
            Ok(0) => break,
            Ok(count) => {
                if control.blackhole.load(Ordering::Relaxed) {
                    continue;
                }
                let delay = Duration::from_micros(control.delay_us.load(Ordering::Relaxed));
                if sender
                    .send((Instant::now() + delay, buffer[..count].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    drop(sender);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn alive(control: &Control, generation: u64) -> bool {
    !control.stop.load(Ordering::Relaxed)
        && control.generation.load(Ordering::Relaxed) == generation
}
