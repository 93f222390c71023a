//! The `switchboard` command line: `serve`, `token`, `check-config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard::auth::{TokenRequest, mint, parse_ttl};
use switchboard::{Config, Server};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Real-time communication server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Generate a throwaway JWT secret if none is configured and print a token.
        #[arg(long)]
        dev: bool,
    },
    /// Print a JWT signed with the configured HS256 secret.
    Token {
        #[command(flatten)]
        common: Common,
        /// User id (`sub`).
        #[arg(long)]
        sub: String,
        /// Display name.
        #[arg(long)]
        username: Option<String>,
        /// Avatar URL.
        #[arg(long)]
        avatar: Option<String>,
        /// Room patterns the user may join when room permissions are on (comma list).
        #[arg(long, value_delimiter = ',')]
        rooms: Option<Vec<String>>,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Validate the configuration and print it, secrets masked.
    CheckConfig {
        #[command(flatten)]
        common: Common,
    },
}

/// Flags every command takes; they override the environment, which overrides the file.
#[derive(Args)]
struct Common {
    /// TOML config file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address and port to listen on [env: SWITCHBOARD_LISTEN].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [env: SWITCHBOARD_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HS256 secret [env: SWITCHBOARD_JWT_SECRET or JWT_SECRET].
    #[arg(long)]
    jwt_secret: Option<String>,
    /// Joins a cluster through Redis: redis://host:port [env: SWITCHBOARD_REDIS_URL].
    #[arg(long)]
    redis_url: Option<String>,
    /// Stores in PostgreSQL: postgres://user@host/db [env: SWITCHBOARD_DATABASE_URL].
    #[arg(long)]
    database_url: Option<String>,
    /// This node's name in `/health`, stats and logs [env: SWITCHBOARD_NODE_ID].
    #[arg(long)]
    node_id: Option<String>,
}

impl Common {
    fn load(&self) -> Result<Config, String> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
            None => Config::default(),
        };
        cfg.apply_process_env().map_err(|e| e.to_string())?;
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = &self.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &self.jwt_secret {
            cfg.auth.jwt_secret = Some(v.clone());
        }
        if let Some(v) = &self.redis_url {
            cfg.cluster.redis_url = Some(v.clone());
        }
        if let Some(v) = &self.database_url {
            cfg.cluster.database_url = Some(v.clone());
        }
        if let Some(v) = &self.node_id {
            cfg.node_id = v.clone();
        }
        Ok(cfg)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { common, dev } => common.load().and_then(|cfg| serve(cfg, dev)),
        Command::Token {
            common,
            sub,
            username,
            avatar,
            rooms,
            ttl,
        } => common.load().and_then(|cfg| {
            let req = TokenRequest {
                sub: &sub,
                username: username.as_deref(),
                avatar: avatar.as_deref(),
                rooms,
                ttl,
            };
            let token = mint(&cfg.auth, req).map_err(|e| {
                format!("{e}: set SWITCHBOARD_JWT_SECRET, JWT_SECRET or --jwt-secret")
            })?;
            println!("{token}");
            Ok(())
        }),
        Command::CheckConfig { common } => common.load().and_then(|cfg| {
            cfg.validate().map_err(|e| e.to_string())?;
            print!("{}", cfg.to_masked_toml());
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("switchboard: {message}");
            ExitCode::from(2)
        }
    }
}

fn serve(mut cfg: Config, dev: bool) -> Result<(), String> {
    let dev_secret = dev && cfg.auth.jwt_algorithm == "HS256" && cfg.auth.jwt_secret.is_none();
    if dev_secret {
        let bytes: [u8; 32] = rand::random();
        cfg.auth.jwt_secret = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
    }
    cfg.validate().map_err(|e| e.to_string())?;
    init_logging(&cfg);
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start runtime: {e}"))?;
    runtime.block_on(async move {
        let server = Server::builder()
            .config(cfg.clone())
            .bind()
            .await
            .map_err(|e| e.to_string())?;
        let addr = server.local_addr();
        tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "listening");
        if dev {
            print_dev_banner(&cfg, addr, dev_secret);
        }
        server.run_until(shutdown_signal()).await;
        Ok(())
    })
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_dev_banner(cfg: &Config, addr: SocketAddr, generated: bool) {
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    let token = |sub: &str, name: &str| {
        mint(
            &cfg.auth,
            TokenRequest {
                sub,
                username: Some(name),
                avatar: None,
                rooms: None,
                ttl: std::time::Duration::from_secs(24 * 3600),
            },
        )
        .unwrap_or_default()
    };
    if generated {
        println!("Development mode: generated a JWT secret for this run only.");
    }
    println!("Tokens valid for 24h:");
    println!("  alice: {}", token("alice", "Alice"));
    println!("  bob:   {}", token("bob", "Bob"));
    println!("Connect and join a room (websocat takes the same URL):");
    println!(
        "  npx -y wscat -c \"ws://{host}/ws?token={}&room=general\"",
        token("alice", "Alice")
    );
    println!(
        r#"  then send: {{"type":"send_message","data":{{"roomId":"general","content":"hello"}},"ref":1}}"#
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
