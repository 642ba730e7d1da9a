//! `sca-server`: the same server as `sca serve`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "sca-server",
    version,
    about = "Segment and Caption Anything over HTTP: /v1/embed, /v1/predict, the page, the bundles"
)]
struct Cli {
    #[command(flatten)]
    cfg: sca_server::ServerConfig,
}

fn main() {
    sca_server::init_logging();
    let cli = Cli::parse();
    if let Err(e) = sca_server::run(cli.cfg).map_err(anyhow::Error::from) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
