//! `switchboard-bench`: the command line over the scenarios of the library.

use clap::{Args, Parser, Subcommand};
use switchboard_bench::connect::ConnectOptions;
use switchboard_bench::durable::DurableOptions;
use switchboard_bench::echo::EchoOptions;
use switchboard_bench::fanout::FanoutOptions;
use switchboard_bench::rooms::RoomsOptions;
use switchboard_bench::{
    ProtoArg, Report, Target, TargetArgs, connect, durable, echo, fanout, rlimit, rooms,
};

/// Load generator for a server speaking the Switchboard native WebSocket protocol
/// (connect and fanout: or Socket.IO, with --proto socketio).
///
/// Tokens are minted from --jwt-secret (default "dev-secret"; or
/// SWITCHBOARD_JWT_SECRET), one user per connection. Progress goes to stderr, the
/// summary (or with --json one JSON line) to stdout.
#[derive(Parser)]
#[command(name = "switchboard-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Open N idle authenticated connections and hold them: connect rate, failures,
    /// and the server's RSS before, after and per connection.
    Connect {
        #[command(flatten)]
        opts: ConnectOptions,
        #[command(flatten)]
        proto: ProtoArg,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        output: Output,
    },
    /// N subscribers and P publishers in one room: sent, delivered, lost (expected =
    /// sent x subscribers; publishers' own copies are not counted), deliveries/s and
    /// end-to-end latency. --max finds the peak with a window of messages in flight.
    Fanout {
        #[command(flatten)]
        opts: FanoutOptions,
        #[command(flatten)]
        proto: ProtoArg,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Ping/pong round trips over N connections, one in flight on each: pings/s and
    /// round-trip time.
    Echo {
        #[command(flatten)]
        opts: EchoOptions,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Acknowledged sends (send_message with a ref, answered by ack once durable):
    /// P publishers in rooms of their own, a window each: acks/s and ack latency.
    Durable {
        #[command(flatten)]
        opts: DurableOptions,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        output: Output,
    },
    /// Fill one big room, then many small ones: setup time, frames and bytes the
    /// server sends per join (replies and announcements), largest frame, RSS per
    /// connection.
    Rooms {
        #[command(flatten)]
        opts: RoomsOptions,
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Args)]
struct Output {
    /// Print one JSON line with every figure on stdout instead of the summary.
    #[arg(long)]
    json: bool,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Err(e) = rlimit::raise_open_files_limit() {
        eprintln!("warning: cannot raise the open-files limit: {e}");
    }
    let (report, output) = match cli.scenario {
        Scenario::Connect {
            opts,
            proto,
            target,
            output,
        } => {
            let target = Target::resolve(&target.with_proto(proto.proto)).await?;
            let r = connect::run(&target, &opts, !output.json && !output.quiet).await?;
            (Report::Connect(r), output)
        }
        Scenario::Fanout {
            opts,
            proto,
            target,
            output,
        } => {
            let target = Target::resolve(&target.with_proto(proto.proto)).await?;
            let r = fanout::run(&target, &opts, !output.json && !output.quiet).await?;
            (Report::Fanout(r), output)
        }
        Scenario::Echo {
            opts,
            target,
            output,
        } => {
            let target = Target::resolve(&target).await?;
            let r = echo::run(&target, &opts, !output.json && !output.quiet).await?;
            (Report::Echo(r), output)
        }
        Scenario::Durable {
            opts,
            target,
            output,
        } => {
            let target = Target::resolve(&target).await?;
            let r = durable::run(&target, &opts, !output.json && !output.quiet).await?;
            (Report::Durable(r), output)
        }
        Scenario::Rooms {
            opts,
            target,
            output,
        } => {
            let target = Target::resolve(&target).await?;
            let r = rooms::run(&target, &opts, !output.json && !output.quiet).await?;
            (Report::Rooms(r), output)
        }
    };
    if output.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    Ok(())
}
