//! Reaching the server: the URL, tokens, source addresses, the handshake, joining,
//! in the native protocol or (with [`Proto::SocketIo`]) over Socket.IO.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt, stream};
use indicatif::ProgressBar;
use jsonwebtoken::{EncodingKey, Header};
use serde::{Deserialize, Serialize};
use switchboard_protocol::ErrorData;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::{BenchError, scan, sio, wire};

/// A bench connection: plain TCP, a WebSocket carrying the native protocol or
/// Engine.IO.
pub type Ws = WebSocketStream<TcpStream>;

/// The default URL of each protocol's endpoint.
const NATIVE_URL: &str = "ws://127.0.0.1:8080/ws";
const SOCKETIO_URL: &str = "ws://127.0.0.1:8080/socket.io/";

/// What the bench speaks to the server.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// The native protocol (`/ws`): JSON frames `{"type":..,"data":..}`.
    #[default]
    Native,
    /// Socket.IO v5 over Engine.IO v4: the token in the CONNECT packet, the server's
    /// pings answered, every send with an ack id.
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

impl Proto {
    pub fn is_native(&self) -> bool {
        *self == Proto::Native
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Native => "native",
            Proto::SocketIo => "socketio",
        }
    }
}

/// `--proto`, for the scenarios that speak Socket.IO too.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct ProtoArg {
    /// Protocol to speak. socketio: WebSocket transport only, to a Socket.IO endpoint
    /// such as Switchboard's /socket.io/ or the Node socket.io server of
    /// crates/bench/node/; `EIO=4&transport=websocket` is appended to the URL.
    #[arg(long, value_enum, default_value_t = Proto::Native)]
    pub proto: Proto,
}

/// How long a `join_room` may take to be answered.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a close handshake may take at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Lifetime of the bench's tokens: longer than any run.
const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Source addresses 127.0.0.2..=127.0.0.250: each has its own ~28k ephemeral ports.
const SPREAD_FIRST: u8 = 2;
const SPREAD_COUNT: usize = 249;

/// Where to connect and how; shared by every scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// WebSocket URL of the server's endpoint (ws:// only). Native: `token=<JWT>` is
    /// appended to its query; default ws://127.0.0.1:8080/ws. With --proto socketio:
    /// `EIO=4&transport=websocket` is appended (unless the query has `EIO=`); default
    /// ws://127.0.0.1:8080/socket.io/. Several nodes of a cluster: a comma-separated
    /// list; connections are spread over them round robin (connection i to URL
    /// i % n; in fanout, subscriber i to URL i % n and publisher j to URL j % n).
    #[arg(long)]
    pub url: Option<String>,
    /// HS256 secret that signs the bench's tokens (claims sub, username, iat, exp;
    /// one user per connection); must be the server's. The default, `dev-secret`,
    /// fits a server started with SWITCHBOARD_JWT_SECRET=dev-secret; for any other
    /// pass its secret here or in SWITCHBOARD_JWT_SECRET.
    #[arg(
        long,
        env = "SWITCHBOARD_JWT_SECRET",
        default_value = "dev-secret",
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Connection attempts in flight at once while connecting. Above the server's
    /// listen backlog, dropped SYNs show up as ~1 s connect times.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds one connection may take: TCP, upgrade and the `connected` frame.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Connect from the OS's choice of source address. By default, for a server on
    /// 127.x, connections bind 127.0.0.2-127.0.0.250 in turn, so that more than one
    /// address's ~28k ephemeral ports are available.
    #[arg(long)]
    pub no_spread: bool,
    /// The protocol: set from `--proto` by the scenarios that have it, native for the
    /// others.
    #[arg(skip)]
    pub proto: Proto,
}

impl TargetArgs {
    /// The flags' defaults with another URL and secret.
    pub fn new(url: impl Into<String>, jwt_secret: impl Into<String>) -> TargetArgs {
        TargetArgs {
            url: Some(url.into()),
            jwt_secret: jwt_secret.into(),
            connect_concurrency: 64,
            connect_timeout: 10.0,
            no_spread: false,
            proto: Proto::Native,
        }
    }

    /// The same, speaking `proto`.
    pub fn with_proto(self, proto: Proto) -> TargetArgs {
        TargetArgs { proto, ..self }
    }
}

/// The resolved servers (one, or the nodes of a cluster) and the key that signs tokens
/// for them.
#[derive(Clone)]
pub struct Target {
    /// At least one; connections go to them round robin.
    servers: Vec<Server>,
    proto: Proto,
    key: EncodingKey,
    spread: bool,
    pub concurrency: usize,
    pub connect_timeout: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    username: &'a str,
    iat: u64,
    exp: u64,
}

/// One server of a target.
#[derive(Clone, Debug)]
struct Server {
    /// Native: the URL up to the token's value. Socket.IO: the whole URL.
    base: String,
    addr: SocketAddr,
}

impl Server {
    async fn resolve(url: &str, proto: Proto) -> Result<Server, BenchError> {
        let bad = |reason: &str| BenchError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => return Err(bad("wss is not supported: run the bench over plain ws")),
            _ => return Err(bad("the scheme must be ws://")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| bad("the host does not resolve"))?;
        let sep = if url.contains('?') { '&' } else { '?' };
        let base = match proto {
            Proto::Native => format!("{url}{sep}token="),
            Proto::SocketIo if uri.query().is_some_and(|q| q.contains("EIO=")) => url.into(),
            Proto::SocketIo => format!("{url}{sep}{}", sio::QUERY),
        };
        Ok(Server { base, addr })
    }
}

impl Target {
    pub async fn resolve(args: &TargetArgs) -> Result<Target, BenchError> {
        let list = args.url.as_deref().unwrap_or(match args.proto {
            Proto::Native => NATIVE_URL,
            Proto::SocketIo => SOCKETIO_URL,
        });
        let mut servers = Vec::new();
        for url in list.split(',').map(str::trim) {
            if url.is_empty() {
                return Err(BenchError::Url {
                    url: list.to_string(),
                    reason: "an empty URL in the list".into(),
                });
            }
            servers.push(Server::resolve(url, args.proto).await?);
        }
        let timeout = Duration::try_from_secs_f64(args.connect_timeout).map_err(|_| {
            BenchError::Options("--connect-timeout must be a positive number".into())
        })?;
        Ok(Target {
            servers,
            proto: args.proto,
            key: EncodingKey::from_secret(args.jwt_secret.as_bytes()),
            spread: !args.no_spread,
            concurrency: args.connect_concurrency.max(1),
            connect_timeout: timeout,
        })
    }

    /// The address of the server, or of the first of several.
    pub fn addr(&self) -> SocketAddr {
        self.servers[0].addr
    }

    /// How many servers the connections are spread over.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Server `n` modulo their number: round robin.
    fn server(&self, n: usize) -> &Server {
        &self.servers[n % self.servers.len()]
    }

    /// Refuses a figure that only one server can give (its memory, found by `--server-pid`
    /// or its port), when connections are spread over several.
    pub fn single_server(&self, what: &str) -> Result<(), BenchError> {
        match self.servers.len() {
            1 => Ok(()),
            n => Err(BenchError::Options(format!(
                "{what} measures one server, and --url lists {n}"
            ))),
        }
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Refuses a protocol that `scenario` does not speak.
    pub fn native_only(&self, scenario: &str) -> Result<(), BenchError> {
        match self.proto {
            Proto::Native => Ok(()),
            other => Err(BenchError::Options(format!(
                "{scenario} speaks the native protocol only, not {}",
                other.name()
            ))),
        }
    }

    /// An HS256 token for user `user` (its username too).
    pub fn token(&self, user: &str) -> Result<String, BenchError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user,
            username: user,
            iat: now,
            exp: now + TOKEN_TTL_SECS,
        };
        Ok(jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &self.key,
        )?)
    }

    /// The source address of connection `index` to `server`, when spreading applies.
    fn source(&self, server: &Server, index: usize) -> Option<SocketAddr> {
        match server.addr.ip() {
            IpAddr::V4(ip) if self.spread && ip.is_loopback() => {
                let last = SPREAD_FIRST + (index % SPREAD_COUNT) as u8;
                Some(SocketAddr::from((Ipv4Addr::new(127, 0, 0, last), 0)))
            }
            _ => None,
        }
    }

    /// Opens connection `index` as `user`, to server `index` modulo their number, and
    /// reads its `connected` frame (Socket.IO: the open packet, the CONNECT and its
    /// answer, then `connected`). `read_buffer` is tungstenite's eagerly allocated read
    /// buffer: small for idle connections (its default, 128 KiB, would be 2 GB at 15k
    /// connections).
    pub async fn connect(
        &self,
        index: usize,
        user: &str,
        read_buffer: usize,
    ) -> Result<Ws, BenchError> {
        self.connect_to(index, index, user, read_buffer).await
    }

    /// [`Target::connect`] to server `server` modulo their number, whatever `index`.
    pub async fn connect_to(
        &self,
        server: usize,
        index: usize,
        user: &str,
        read_buffer: usize,
    ) -> Result<Ws, BenchError> {
        tokio::time::timeout(
            self.connect_timeout,
            self.handshake(self.server(server), index, user, read_buffer),
        )
        .await
        .map_err(|_| BenchError::Timeout("the connection to open"))?
    }

    async fn handshake(
        &self,
        server: &Server,
        index: usize,
        user: &str,
        read_buffer: usize,
    ) -> Result<Ws, BenchError> {
        let token = self.token(user)?;
        let socket = if server.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = self.source(server, index) {
            bind_address_no_port(&socket);
            socket.bind(source)?;
        }
        let stream = socket.connect(server.addr).await?;
        // Latency is the measurement: no Nagle delay on small frames.
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(read_buffer);
        let url = match self.proto {
            Proto::Native => format!("{}{token}", server.base),
            Proto::SocketIo => server.base.clone(),
        };
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        match self.proto {
            Proto::Native => wait_for(&mut ws, "connected").await?,
            Proto::SocketIo => sio::open(&mut ws, &token).await?,
        }
        Ok(ws)
    }

    /// Joins `room` in this target's protocol (keeping other rooms) and waits for
    /// `room_joined`.
    pub async fn join(&self, ws: &mut Ws, room: &str) -> Result<(), BenchError> {
        match self.proto {
            Proto::Native => join(ws, room).await,
            Proto::SocketIo => {
                ws.send(Message::text(sio::join_room(room))).await?;
                tokio::time::timeout(JOIN_TIMEOUT, sio::wait_for(ws, "room_joined"))
                    .await
                    .map_err(|_| BenchError::Timeout("room_joined"))?
            }
        }
    }
}

/// Lets the kernel pick the source port at `connect`, by the whole 4-tuple, rather
/// than at `bind`, where a port must be free for every destination.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int
    // that outlives the call, and its size is passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) {}

/// Joins `room` (keeping other rooms) and waits for `room_joined`.
pub async fn join(ws: &mut Ws, room: &str) -> Result<(), BenchError> {
    ws.send(Message::text(wire::join_room(room))).await?;
    tokio::time::timeout(JOIN_TIMEOUT, wait_for(ws, "room_joined"))
        .await
        .map_err(|_| BenchError::Timeout("room_joined"))?
}

/// Sends a close frame and waits briefly for the server's, so the server sees a
/// clean close rather than a reset.
pub async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

/// Reads until a frame of type `kind`. Others are skipped: while many connections
/// join one room, each may first hear of the others joining.
async fn wait_for(ws: &mut Ws, kind: &'static str) -> Result<(), BenchError> {
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(text) => match scan::kind(&text).as_deref() {
                Some(k) if k == kind => return Ok(()),
                Some("error") => return Err(BenchError::Server(error_message(&text))),
                _ => {}
            },
            Message::Close(frame) => return Err(closed(frame)),
            _ => {}
        }
    }
    Err(closed(None))
}

pub(crate) fn closed(frame: Option<CloseFrame>) -> BenchError {
    match frame {
        Some(f) => BenchError::Closed {
            code: f.code.into(),
            reason: f.reason.to_string(),
        },
        None => BenchError::Closed {
            code: 1006,
            reason: "the connection ended without a close frame".into(),
        },
    }
}

/// `message (code)` of an `error` frame, or the frame itself if it has another shape.
pub(crate) fn error_message(frame: &str) -> String {
    #[derive(Deserialize)]
    struct ErrorFrame {
        data: ErrorData,
    }
    match serde_json::from_str::<ErrorFrame>(frame) {
        Ok(e) => format!("{} ({})", e.data.message, e.data.code),
        Err(_) => frame.to_string(),
    }
}

/// Runs `open(i)` for every `i` in `0..total`, `concurrency` at a time, ticking `bar`.
/// All must succeed: a scenario missing members would measure something else.
pub async fn open_all<T, F, Fut>(
    role: &'static str,
    total: usize,
    concurrency: usize,
    bar: &ProgressBar,
    open: F,
) -> Result<Vec<T>, BenchError>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, BenchError>>,
{
    let mut results = stream::iter(0..total)
        .map(open)
        .buffer_unordered(concurrency.max(1));
    let mut opened = Vec::with_capacity(total);
    let mut failed = 0;
    let mut first = None;
    while let Some(result) = results.next().await {
        bar.inc(1);
        match result {
            Ok(t) => opened.push(t),
            Err(e) => {
                failed += 1;
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
    match first {
        None => Ok(opened),
        Some(first) => Err(BenchError::Setup {
            role,
            failed,
            total,
            first,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn urls_and_sources() {
        let t = Target::resolve(&TargetArgs::new("ws://127.0.0.1:9/ws", "s"))
            .await
            .unwrap();
        assert_eq!(t.server(0).base, "ws://127.0.0.1:9/ws?token=");
        assert_eq!(
            t.source(t.server(0), 0),
            Some("127.0.0.2:0".parse().unwrap())
        );
        assert_eq!(
            t.source(t.server(0), 248),
            Some("127.0.0.250:0".parse().unwrap())
        );
        assert_eq!(
            t.source(t.server(0), 249),
            Some("127.0.0.2:0".parse().unwrap())
        );

        let t = Target::resolve(&TargetArgs::new("ws://127.0.0.1:9/ws?x=1", "s"))
            .await
            .unwrap();
        assert_eq!(t.server(0).base, "ws://127.0.0.1:9/ws?x=1&token=");

        let sio = |url: &str| TargetArgs::new(url, "s").with_proto(Proto::SocketIo);
        let t = Target::resolve(&sio("ws://127.0.0.1:9/socket.io/"))
            .await
            .unwrap();
        assert_eq!(
            t.server(0).base,
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(t.proto(), Proto::SocketIo);
        let t = Target::resolve(&sio(
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket",
        ))
        .await
        .unwrap();
        assert_eq!(
            t.server(0).base,
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket"
        );
        let defaults = |proto| TargetArgs {
            url: None,
            proto,
            ..TargetArgs::new("", "s")
        };
        let t = Target::resolve(&defaults(Proto::SocketIo)).await.unwrap();
        assert_eq!(
            t.server(0).base,
            "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket"
        );
        assert!(t.native_only("echo").is_err());
        let t = Target::resolve(&defaults(Proto::Native)).await.unwrap();
        assert_eq!(t.server(0).base, "ws://127.0.0.1:8080/ws?token=");
        assert!(t.native_only("echo").is_ok());

        let mut args = TargetArgs::new("ws://127.0.0.1:9/ws", "s");
        args.no_spread = true;
        let t = Target::resolve(&args).await.unwrap();
        assert_eq!(t.source(t.server(0), 0), None);

        for bad in ["http://127.0.0.1/ws", "wss://127.0.0.1/ws", "nope"] {
            assert!(matches!(
                Target::resolve(&TargetArgs::new(bad, "s")).await,
                Err(BenchError::Url { .. })
            ));
        }
    }

    #[tokio::test]
    async fn a_list_of_urls_is_served_round_robin() {
        let t = Target::resolve(&TargetArgs::new(
            "ws://127.0.0.1:9/ws,ws://127.0.0.1:10/ws?x=1, ws://127.0.0.1:11/ws",
            "s",
        ))
        .await
        .unwrap();
        assert_eq!(t.servers(), 3);
        assert!(t.single_server("--server-pid").is_err());
        let bases: Vec<_> = (0..4).map(|i| t.server(i).base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "ws://127.0.0.1:9/ws?token=",
                "ws://127.0.0.1:10/ws?x=1&token=",
                "ws://127.0.0.1:11/ws?token=",
                "ws://127.0.0.1:9/ws?token=",
            ]
        );
        let ports: Vec<_> = (0..7).map(|i| t.server(i).addr.port()).collect();
        assert_eq!(ports, [9, 10, 11, 9, 10, 11, 9]);
        assert_eq!(t.addr().port(), 9);
        // Source addresses follow the connection, whichever server it goes to.
        assert_eq!(t.source(t.server(1), 1), t.source(t.server(0), 1));

        let t = Target::resolve(
            &TargetArgs::new(
                "ws://127.0.0.1:9/socket.io/,ws://127.0.0.1:10/socket.io/",
                "s",
            )
            .with_proto(Proto::SocketIo),
        )
        .await
        .unwrap();
        assert_eq!(
            t.server(1).base,
            "ws://127.0.0.1:10/socket.io/?EIO=4&transport=websocket"
        );

        let one = Target::resolve(&TargetArgs::new("ws://127.0.0.1:9/ws", "s"))
            .await
            .unwrap();
        assert_eq!(one.servers(), 1);
        assert!(one.single_server("--server-pid").is_ok());
        assert_eq!(one.server(5).addr.port(), 9);

        for bad in [
            "ws://127.0.0.1:9/ws,",
            "ws://127.0.0.1:9/ws,,ws://127.0.0.1:10/ws",
            "ws://127.0.0.1:9/ws,http://127.0.0.1:10/ws",
        ] {
            assert!(
                matches!(
                    Target::resolve(&TargetArgs::new(bad, "s")).await,
                    Err(BenchError::Url { .. })
                ),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn tokens_carry_the_claims_the_server_needs() {
        let t = Target::resolve(&TargetArgs::new("ws://127.0.0.1:9/ws", "secret"))
            .await
            .unwrap();
        let token = t.token("sub-7").unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["sub", "exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"secret"),
            &v,
        )
        .unwrap();
        assert_eq!(data.claims["sub"], "sub-7");
        assert_eq!(data.claims["username"], "sub-7");
        assert!(data.claims["iat"].as_u64().unwrap() < data.claims["exp"].as_u64().unwrap());
    }
}
