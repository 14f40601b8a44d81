//! `tessera-client`: the Rust SDK for Tessera. Plain blocking sockets (no
//! async runtime required, usable from tokio via `spawn_blocking` or from
//! plain threads), pipelining, timeouts, typed errors, and shard-aware
//! routing: [`Client`] asks the server for its slot map (`Topology`) and
//! sends each key's request straight to the port of the shard that owns it.
//!
//! ```no_run
//! use tessera_client::Client;
//! let mut client = Client::connect("127.0.0.1:7878")?;
//! client.put("user:1", "ada")?;
//! assert_eq!(client.get("user:1")?.as_deref(), Some(&b"ada"[..]));
//! let page = client.scan("user:", Some("user;"), 100)?;
//! for (key, value) in page.rows { println!("{key:?} = {value:?}"); }
//!
//! // Pipelining: send many requests, then read the responses.
//! let conn = client.connection_for(b"user:2");
//! let ids: Vec<u64> = (0..100)
//!     .map(|i| conn.send(&tessera_client::Request::Get { key: format!("user:{i}").into() }))
//!     .collect::<Result<_, _>>()?;
//! for id in ids { let _response = conn.wait(id)?; }
//! # Ok::<(), tessera_client::Error>(())
//! ```

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_protocol::frame::{next_frame, put_frame, Limits};
use tessera_protocol::message::{decode_response, Metric};
pub use tessera_protocol::message::{BatchOp, Condition, ReadValue, TxnOutcome};
pub use tessera_protocol::{ErrorCode, Request, Response, Token, PROTOCOL_VERSION};

/// Largest response frame the client accepts.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("server error {}: {message}", code.name())]
    Server { code: ErrorCode, message: String },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    /// A request larger than the server reads in one frame: nothing was
    /// sent, and the connection stays usable.
    #[error(
        "request of {bytes} bytes exceeds the server's frame limit of {limit} bytes \
         (--frame-bytes-max); split it"
    )]
    RequestTooLarge { bytes: usize, limit: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection's socket: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// TLS for a client (the server's `--tls-cert`): the certificates it
/// trusts, and the name the server's certificate must carry.
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<rustls::ClientConfig>,
    /// The DNS name or IP address to check the certificate against
    /// [default: the IP address of the first address connected to; give
    /// the host name when connecting by name].
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file `ca` (e.g. the `ca.pem`
    /// that `tessera cert` writes).
    pub fn from_ca_file(ca: &std::path::Path) -> Result<TlsOptions> {
        use rustls::pki_types::pem::PemObject;
        let tls_error = |e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", ca.display()));
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| tls_error(&e))?;
        for cert in certs {
            roots
                .add(cert.map_err(|e| tls_error(&e))?)
                .map_err(|e| tls_error(&e))?;
        }
        if roots.is_empty() {
            return Err(tls_error(&"holds no certificate"));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TlsOptions {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// A client session for the server at `addr` (for a caller that
    /// drives its own socket, as the load generator does).
    pub fn session(&self, addr: &SocketAddr) -> Result<rustls::ClientConnection> {
        rustls::ClientConnection::new(self.config.clone(), self.name_for(addr)?)
            .map_err(|e| Error::Tls(e.to_string()))
    }

    /// The name a server at `addr` is checked against.
    fn name_for(&self, addr: &SocketAddr) -> Result<rustls::pki_types::ServerName<'static>> {
        match &self.server_name {
            Some(name) => rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|e| Error::Tls(format!("server name {name:?}: {e}"))),
            None => Ok(rustls::pki_types::ServerName::IpAddress(addr.ip().into())),
        }
    }
}

/// One connection. Requests may be pipelined: `send` many, then `wait` for
/// each id; responses arriving out of order are kept until asked for.
pub struct Connection {
    stream: Stream,
    next_id: u64,
    buf: BytesMut,
    arrived: HashMap<u64, Response>,
    addr: SocketAddr,
    /// Requests sent whose responses have not been read.
    outstanding: usize,
    /// When the connection last sent or received.
    last_used: Instant,
    /// The largest request frame the server reads: what its hello says,
    /// until then the protocol's default.
    frame_bytes_max: usize,
    /// The most operations a batch or a transaction may carry, likewise.
    batch_ops_max: usize,
}

/// How long a connection may sit unused before [`Client`] checks, ahead
/// of its next request, whether the server has closed it.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// Connects to the first of `addr`'s addresses that accepts, in the
/// resolver's order, as `TcpStream::connect` does: `localhost` may
/// resolve to `::1` before `127.0.0.1`, and a server listening on one
/// of them only was refused when only the first was tried.
fn connect_any(addr: impl ToSocketAddrs, timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    let mut last = None;
    for addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(socket) => return Ok((socket, addr)),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => e.into(),
        None => Error::Protocol("address resolves to nothing".into()),
    })
}

impl Connection {
    pub fn open(addr: impl ToSocketAddrs, timeout: Duration) -> Result<Connection> {
        Connection::open_with(addr, timeout, None)
    }

    /// Opens a connection, over TLS if `tls` is given (the handshake
    /// happens with the first request).
    pub fn open_with(
        addr: impl ToSocketAddrs,
        timeout: Duration,
        tls: Option<&TlsOptions>,
    ) -> Result<Connection> {
        let (socket, addr) = connect_any(addr, timeout)?;
        socket.set_nodelay(true)?;
        socket.set_read_timeout(Some(timeout))?;
        socket.set_write_timeout(Some(timeout))?;
        let stream = match tls {
            None => Stream::Plain(socket),
            Some(tls) => Stream::Tls(Box::new(rustls::StreamOwned::new(
                tls.session(&addr)?,
                socket,
            ))),
        };
        Ok(Connection {
            stream,
            next_id: 1,
            buf: BytesMut::with_capacity(64 << 10),
            arrived: HashMap::new(),
            addr,
            outstanding: 0,
            last_used: Instant::now(),
            frame_bytes_max: Limits::default().frame_bytes_max,
            batch_ops_max: Limits::default().batch_ops_max,
        })
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The largest request frame the server reads (its hello says; the
    /// protocol's default before one). [`Connection::send`] refuses more.
    pub fn frame_bytes_max(&self) -> usize {
        self.frame_bytes_max
    }

    /// The most operations a batch or a transaction may carry (its hello
    /// says; the protocol's default before one).
    pub fn batch_ops_max(&self) -> usize {
        self.batch_ops_max
    }

    /// Whether the server has closed this idle connection (or sent it
    /// something no request asked for): checked without waiting, and only
    /// on a connection with nothing in flight that sat unused a while.
    fn closed_while_idle(&self) -> bool {
        if self.outstanding > 0
            || !self.buf.is_empty()
            || !self.arrived.is_empty()
            || self.last_used.elapsed() < IDLE_CHECK_AFTER
        {
            return false;
        }
        let socket = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        };
        if socket.set_nonblocking(true).is_err() {
            return true;
        }
        let peeked = socket.peek(&mut [0u8; 1]);
        let restored = socket.set_nonblocking(false);
        restored.is_err() || !matches!(peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends a request; returns its id.
    pub fn send(&mut self, request: &Request) -> Result<u64> {
        let id = self.next_id;
        let payload = request.encode(id);
        if payload.len() > self.frame_bytes_max {
            return Err(Error::RequestTooLarge {
                bytes: payload.len(),
                limit: self.frame_bytes_max,
            });
        }
        self.next_id += 1;
        let mut frame = Vec::new();
        put_frame(&mut frame, &payload);
        self.stream.write_all(&frame).map_err(timeout_or_io)?;
        self.stream.flush().map_err(timeout_or_io)?;
        self.outstanding += 1;
        self.last_used = Instant::now();
        Ok(id)
    }

    /// Reads the next response off the wire.
    pub fn recv(&mut self) -> Result<(u64, Response)> {
        loop {
            let frame = next_frame(&mut self.buf, RESPONSE_BYTES_MAX)
                .map_err(|e| Error::Protocol(e.to_string()))?;
            if let Some(frame) = frame {
                self.outstanding = self.outstanding.saturating_sub(1);
                self.last_used = Instant::now();
                return decode_response(&frame).map_err(|e| Error::Protocol(e.to_string()));
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.stream.read(&mut chunk).map_err(timeout_or_io)?;
            if n == 0 {
                return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Waits for the response to request `id`. Errors from the server come
    /// back as `Error::Server`.
    pub fn wait(&mut self, id: u64) -> Result<Response> {
        loop {
            if let Some(r) = self.arrived.remove(&id) {
                return server_error(r);
            }
            let (got, response) = self.recv()?;
            if got == id {
                return server_error(response);
            }
            if got == 0 {
                // The server could not read a request's id: the stream is
                // broken for every request in flight.
                return server_error(response);
            }
            self.arrived.insert(got, response);
        }
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: &Request) -> Result<Response> {
        let id = self.send(request)?;
        self.wait(id)
    }

    /// The socket and, over TLS, its session, for a caller that drives
    /// them itself (as the load generator does after
    /// [`Connection::hello`]). Refused while a response is still buffered
    /// or unclaimed.
    pub fn into_parts(self) -> Result<(TcpStream, Option<rustls::ClientConnection>)> {
        if !self.buf.is_empty() || !self.arrived.is_empty() {
            return Err(Error::Protocol(
                "responses are still unread on this connection".into(),
            ));
        }
        Ok(match self.stream {
            Stream::Plain(socket) => (socket, None),
            Stream::Tls(tls) => (tls.sock, Some(tls.conn)),
        })
    }

    /// Says hello: checks the protocol version and, for a server that
    /// requires one, presents the token. Returns the server's answer.
    pub fn hello(&mut self, client_name: &str, token: Option<&Token>) -> Result<ServerInfo> {
        match self.call(&Request::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: client_name.into(),
            token: token.cloned(),
        })? {
            Response::Hello {
                server_version,
                shards,
                retention_ms,
                frame_bytes_max,
                batch_ops_max,
                ..
            } => {
                if frame_bytes_max > 0 {
                    self.frame_bytes_max = usize::try_from(frame_bytes_max).unwrap_or(usize::MAX);
                }
                if batch_ops_max > 0 {
                    self.batch_ops_max = batch_ops_max as usize;
                }
                Ok(ServerInfo {
                    server_version,
                    shards,
                    retention_ms,
                })
            }
            other => Err(unexpected(other)),
        }
    }
}

/// One of a [`Client`]'s connections.
#[derive(Debug, Clone, Copy)]
enum Which {
    Entry,
    Shard(usize),
}

/// What a server says in answer to Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub server_version: String,
    pub shards: u32,
    /// How far back `read_at` and `scan_at` can go.
    pub retention_ms: u64,
}

/// How [`Client::connect_with`] connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// For connecting and for every response [default: 10 s].
    pub timeout: Duration,
    /// The server's token, if it requires one (`--auth-token-file`).
    pub token: Option<Token>,
    /// Sent in Hello [default: "tessera-client-rust"].
    pub client_name: String,
    /// TLS, for a server started with `--tls-cert` [default: plain TCP].
    pub tls: Option<TlsOptions>,
}

impl ConnectOptions {
    /// Environment variable [`ConnectOptions::token_from`] reads.
    pub const TOKEN_ENV: &'static str = "TESSERA_TOKEN";

    /// Sets the token: read from `file` if given (a trailing newline is not
    /// part of it), else taken from `$TESSERA_TOKEN` if set, else none.
    pub fn token_from(mut self, file: Option<&std::path::Path>) -> std::io::Result<Self> {
        self.token = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))
                })?;
                Some(Token(text.trim_end_matches(['\n', '\r']).to_string()))
            }
            None => std::env::var(Self::TOKEN_ENV).ok().map(Token),
        };
        Ok(self)
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(10),
            token: None,
            client_name: "tessera-client-rust".into(),
            tls: None,
        }
    }
}

fn timeout_or_io(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::Timeout,
        _ => Error::Io(e),
    }
}

fn server_error(r: Response) -> Result<Response> {
    match r {
        Response::Error { code, message } => Err(Error::Server { code, message }),
        other => Ok(other),
    }
}

fn unexpected(r: Response) -> Error {
    Error::Protocol(format!("unexpected response {r:?}"))
}

/// One page of a scan; pass `next_start` as the next start to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    pub rows: Vec<(Bytes, Bytes)>,
    pub next_start: Option<Bytes>,
    /// When each row's key expires, in Unix milliseconds (0: never); empty
    /// when no row of the page was written with a TTL. See
    /// [`ScanPage::expires_at_ms`].
    pub expires_at_ms: Vec<u64>,
}

impl ScanPage {
    /// When row `i`'s key expires, in Unix milliseconds, if it was written
    /// with a TTL.
    pub fn expires_at_ms(&self, i: usize) -> Option<u64> {
        self.expires_at_ms.get(i).copied().filter(|&at| at != 0)
    }
}

/// A shard-aware client.
///
/// Connections the server closed are opened again: before a request, a
/// connection that sat unused for a second is checked and, if closed,
/// reopened (with its hello); a request that is safe to repeat (reads,
/// scans, read-only transactions, pings) and meets a closed connection
/// is sent once more on a fresh one. A write that meets one fails with
/// the I/O error, since the server may or may not have applied it; the
/// next request goes out on a fresh connection.
pub struct Client {
    entry: Connection,
    shards: Vec<Connection>,
    options: ConnectOptions,
    slot_owner: Vec<u16>,
    pub server_version: String,
    /// How far back `read_at` and `scan_at` can go, as the server says.
    pub retention_ms: u64,
}

/// A one-shot transaction: conditions, reads and writes on any keys,
/// executed atomically at one timestamp with serializable isolation.
///
/// ```no_run
/// # use tessera_client::{Client, Txn, Retry};
/// # let mut client = Client::connect("127.0.0.1:7878")?;
/// // Move 10 from a to b if a still holds "100".
/// let txn = Txn::new().equals("a", "100").put("a", "90").put("b", "10").read("b");
/// let outcome = client.txn_with_retry(&txn, Retry::default())?;
/// assert!(outcome.committed || outcome.failed_condition == Some(0));
/// # Ok::<(), tessera_client::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub conditions: Vec<Condition>,
    pub reads: Vec<Bytes>,
    pub writes: Vec<BatchOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires `key` to have a live value.
    pub fn exists(mut self, key: impl Into<Bytes>) -> Self {
        self.conditions.push(Condition::Exists(key.into()));
        self
    }

    /// Requires `key` to have no live value.
    pub fn missing(mut self, key: impl Into<Bytes>) -> Self {
        self.conditions.push(Condition::Missing(key.into()));
        self
    }

    /// Requires `key`'s value to equal `value`.
    pub fn equals(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.conditions
            .push(Condition::Equals(key.into(), value.into()));
        self
    }

    /// Requires `key`'s newest version to have timestamp `version` (as a
    /// read returned it; 0: never written).
    pub fn version_is(mut self, key: impl Into<Bytes>, version: u64) -> Self {
        self.conditions
            .push(Condition::VersionIs(key.into(), version));
        self
    }

    pub fn read(mut self, key: impl Into<Bytes>) -> Self {
        self.reads.push(key.into());
        self
    }

    pub fn put(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.writes.push(BatchOp::put(key, value));
        self
    }

    /// A put that expires `ttl` after the transaction's timestamp (see
    /// [`Client::put_with_ttl`]).
    pub fn put_with_ttl(
        mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Self {
        self.writes.push(BatchOp::Put {
            key: key.into(),
            value: value.into(),
            ttl_ms: ttl_ms(ttl),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<Bytes>) -> Self {
        self.writes.push(BatchOp::Delete { key: key.into() });
        self
    }

    /// The request to send.
    pub fn request(&self) -> Request {
        Request::Txn {
            conditions: self.conditions.clone(),
            reads: self.reads.clone(),
            writes: self.writes.clone(),
        }
    }

    /// The key whose shard should coordinate: the first written, else the
    /// first read or checked.
    pub fn home_key(&self) -> Option<&Bytes> {
        self.writes
            .first()
            .map(BatchOp::key)
            .or(self.reads.first())
            .or(self.conditions.first().map(Condition::key))
    }
}

/// How [`Client::txn_with_retry`] retries transactions aborted by a
/// conflict: up to `attempts` tries, sleeping a random time up to `backoff`,
/// doubling each time up to `backoff_max`.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 20,
            backoff: Duration::from_micros(200),
            backoff_max: Duration::from_millis(50),
        }
    }
}

impl Client {
    /// Connects with a 10 s timeout.
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, &ConnectOptions::default())
    }

    pub fn connect_with_timeout(addr: impl ToSocketAddrs, timeout: Duration) -> Result<Client> {
        Client::connect_with(
            addr,
            &ConnectOptions {
                timeout,
                ..ConnectOptions::default()
            },
        )
    }

    /// Says hello, fetches the topology and connects to every shard (each
    /// connection says hello too, with the token if there is one).
    pub fn connect_with(addr: impl ToSocketAddrs, options: &ConnectOptions) -> Result<Client> {
        let timeout = options.timeout;
        let open = |addr: &[SocketAddr]| -> Result<(Connection, ServerInfo)> {
            let mut connection = Connection::open_with(addr, timeout, options.tls.as_ref())?;
            let info = connection.hello(&options.client_name, options.token.as_ref())?;
            Ok((connection, info))
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
        let (mut entry, info) = open(&addrs[..])?;
        let (slot_owner, addresses) = match entry.call(&Request::Topology)? {
            Response::Topology {
                slot_owner, shards, ..
            } => (slot_owner, shards),
            other => return Err(unexpected(other)),
        };
        let mut shards = Vec::with_capacity(addresses.len());
        for (_, address) in &addresses {
            let resolved: Vec<SocketAddr> = address.as_str().to_socket_addrs()?.collect();
            if resolved.is_empty() {
                return Err(Error::Protocol(format!(
                    "shard address {address} resolves to nothing"
                )));
            }
            shards.push(open(&resolved[..])?.0);
        }
        if slot_owner.iter().any(|&o| o as usize >= shards.len()) {
            return Err(Error::Protocol(
                "topology names a shard it does not list".into(),
            ));
        }
        Ok(Client {
            entry,
            shards,
            options: options.clone(),
            slot_owner,
            server_version: info.server_version,
            retention_ms: info.retention_ms,
        })
    }

    /// Opens connection `which` again, with its hello.
    fn reopen(&mut self, which: Which) -> Result<()> {
        let addr = self.connection(which).addr;
        let mut fresh =
            Connection::open_with(addr, self.options.timeout, self.options.tls.as_ref())?;
        fresh.hello(&self.options.client_name, self.options.token.as_ref())?;
        *self.connection(which) = fresh;
        Ok(())
    }

    fn connection(&mut self, which: Which) -> &mut Connection {
        match which {
            Which::Entry => &mut self.entry,
            Which::Shard(i) => &mut self.shards[i],
        }
    }

    /// Sends `request` on connection `which` and waits for its response,
    /// reopening the connection as the type's documentation says.
    fn call(&mut self, which: Which, request: &Request, repeatable: bool) -> Result<Response> {
        if self.connection(which).closed_while_idle() {
            self.reopen(which)?;
        }
        match self.connection(which).call(request) {
            Err(Error::Io(e)) => {
                // The stream is gone: the next request gets a fresh one.
                self.reopen(which)?;
                if !repeatable {
                    return Err(Error::Io(e));
                }
                self.connection(which).call(request)
            }
            other => other,
        }
    }

    /// The shard that owns `key`.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        self.slot_owner[tessera_protocol::slot_of(key) as usize] as usize
    }

    /// The connection to shard `shard` (for pipelining).
    pub fn shard(&mut self, shard: usize) -> &mut Connection {
        &mut self.shards[shard]
    }

    /// The connection to the shard owning `key` (for pipelining).
    pub fn connection_for(&mut self, key: &[u8]) -> &mut Connection {
        let shard = self.shard_of(key);
        &mut self.shards[shard]
    }

    /// The connection to the shared port (for requests not tied to a key).
    pub fn entry(&mut self) -> &mut Connection {
        &mut self.entry
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn get(&mut self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        Ok(self.get_with_expiry(key)?.map(|(value, _)| value))
    }

    /// The value of `key` and, if it was written with a TTL, when it
    /// expires (Unix milliseconds).
    pub fn get_with_expiry(
        &mut self,
        key: impl Into<Bytes>,
    ) -> Result<Option<(Bytes, Option<u64>)>> {
        let key = key.into();
        let shard = Which::Shard(self.shard_of(&key));
        value_of(self.call(shard, &Request::Get { key }, true)?)
    }

    /// Stores `value`; returns the commit timestamp.
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        self.put_request(key.into(), value.into(), 0)
    }

    /// Stores `value` until `ttl` after the write's timestamp (rounded up
    /// to whole milliseconds); returns the timestamp. From then on reads
    /// find no value, and reads at a timestamp see the state of theirs.
    pub fn put_with_ttl(
        &mut self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<u64> {
        self.put_request(key.into(), value.into(), ttl_ms(ttl))
    }

    fn put_request(&mut self, key: Bytes, value: Bytes, ttl_ms: u64) -> Result<u64> {
        let shard = Which::Shard(self.shard_of(&key));
        written(self.call(shard, &Request::Put { key, value, ttl_ms }, false)?)
    }

    pub fn delete(&mut self, key: impl Into<Bytes>) -> Result<u64> {
        let key = key.into();
        let shard = Which::Shard(self.shard_of(&key));
        written(self.call(shard, &Request::Delete { key }, false)?)
    }

    /// Applies `ops` atomically at one timestamp, returned; keys on several
    /// shards commit through a transaction.
    pub fn batch(&mut self, ops: Vec<BatchOp>) -> Result<u64> {
        let Some(first) = ops.first() else {
            return Err(Error::Protocol("empty batch".into()));
        };
        let shard = self.shard_of(first.key());
        written(self.call(Which::Shard(shard), &Request::Batch { ops }, false)?)
    }

    /// Keys in `[start, end)`, at most `limit`, in key order.
    pub fn scan(
        &mut self,
        start: impl Into<Bytes>,
        end: Option<impl Into<Bytes>>,
        limit: u32,
    ) -> Result<ScanPage> {
        self.scan_at(start, end, limit, None)
    }

    /// Like [`Client::scan`], as of timestamp `ts` (`None`: newest).
    pub fn scan_at(
        &mut self,
        start: impl Into<Bytes>,
        end: Option<impl Into<Bytes>>,
        limit: u32,
        ts: Option<u64>,
    ) -> Result<ScanPage> {
        let request = Request::Scan {
            start: start.into(),
            end: end.map(Into::into),
            limit,
            ts,
        };
        match self.call(Which::Entry, &request, true)? {
            Response::Scan {
                rows,
                next_start,
                expires_at_ms,
            } => Ok(ScanPage {
                rows,
                next_start,
                expires_at_ms,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `key` as of timestamp `ts` (inside the retention
    /// window, [`Client::retention_ms`]).
    pub fn read_at(&mut self, key: impl Into<Bytes>, ts: u64) -> Result<Option<Bytes>> {
        let key = key.into();
        Ok(self.read_at_with_expiry(key, ts)?.map(|(value, _)| value))
    }

    /// Like [`Client::read_at`], with when the key expires if it was
    /// written with a TTL (Unix milliseconds).
    pub fn read_at_with_expiry(
        &mut self,
        key: impl Into<Bytes>,
        ts: u64,
    ) -> Result<Option<(Bytes, Option<u64>)>> {
        let key = key.into();
        let shard = Which::Shard(self.shard_of(&key));
        value_of(self.call(shard, &Request::ReadAt { key, ts }, true)?)
    }

    /// Runs a transaction once. A conflict comes back as
    /// `Error::Server { code: ErrorCode::Conflict, .. }`; a failed condition
    /// as an outcome with `committed == false`.
    pub fn txn(&mut self, txn: &Txn) -> Result<TxnOutcome> {
        let Some(home) = txn.home_key() else {
            return Err(Error::Protocol("empty transaction".into()));
        };
        let shard = self.shard_of(home);
        // A transaction that writes nothing may be sent again.
        let repeatable = txn.writes.is_empty();
        match self.call(Which::Shard(shard), &txn.request(), repeatable)? {
            Response::Txn(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a transaction, retrying conflicts with randomized exponential
    /// backoff per `retry`.
    pub fn txn_with_retry(&mut self, txn: &Txn, retry: Retry) -> Result<TxnOutcome> {
        let mut backoff = retry.backoff;
        let mut attempt = 1;
        loop {
            match self.txn(txn) {
                Err(Error::Server {
                    code: ErrorCode::Conflict,
                    ..
                }) if attempt < retry.attempts => {
                    let nanos = backoff.as_nanos().max(1) as u64;
                    std::thread::sleep(Duration::from_nanos(rand::Rng::gen_range(
                        &mut rand::thread_rng(),
                        0..nanos,
                    )));
                    backoff = (backoff * 2).min(retry.backoff_max);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A timestamp after every write any shard acknowledged before this
    /// call: the largest of one read-only transaction's timestamp per shard,
    /// each from that shard's clock. Scanning every page at it
    /// ([`Client::scan_at`]) reads one moment across shards, however long
    /// the pages take: each read at it holds it for at least half the
    /// retention window more.
    pub fn snapshot_ts(&mut self) -> Result<u64> {
        let mut ts = 0;
        for shard in 0..self.shards.len() {
            // A shard that owns no slot holds no key to be after.
            if !self.slot_owner.iter().any(|&o| o as usize == shard) {
                continue;
            }
            // A transaction is coordinated by the shard of its first key.
            let key = (0u32..)
                .map(|i| Bytes::from(format!("\0tessera-snapshot-{i}")))
                .find(|k| self.shard_of(k) == shard)
                .expect("a shard that owns a slot owns some key");
            ts = ts.max(self.txn(&Txn::new().read(key))?.ts);
        }
        Ok(ts)
    }

    pub fn stats(&mut self) -> Result<Vec<Metric>> {
        match self.call(Which::Entry, &Request::Stats, true)? {
            Response::Stats(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub fn ping(&mut self) -> Result<()> {
        match self.call(Which::Entry, &Request::Ping, true)? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }
}

/// A TTL in whole milliseconds, rounded up: a TTL under a millisecond,
/// zero too, is one, not 0, which would mean no expiry.
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A Get's or ReadAt's value and expiry.
fn value_of(r: Response) -> Result<Option<(Bytes, Option<u64>)>> {
    match r {
        Response::Get {
            value,
            expires_at_ms,
        } => Ok(value.map(|value| (value, expires_at_ms))),
        other => Err(unexpected(other)),
    }
}

fn written(r: Response) -> Result<u64> {
    match r {
        Response::Written { ts } => Ok(ts),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every resolved address is tried in turn, as for a `localhost` that
    /// resolves to `::1` first with the server on `127.0.0.1` only.
    #[test]
    fn a_connection_tries_each_address_until_one_accepts() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = closed.local_addr().unwrap();
        drop(closed);
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let accepting = open.local_addr().unwrap();
        let (_, reached) = connect_any(&[refused, accepting][..], Duration::from_secs(5)).unwrap();
        assert_eq!(reached, accepting);
        let err = connect_any(&[refused][..], Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        let none: &[SocketAddr] = &[];
        assert!(connect_any(none, Duration::from_secs(5)).is_err());
    }
}
