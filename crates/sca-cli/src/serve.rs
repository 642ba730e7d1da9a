//! `sca serve`: the HTTP server of `sca-server` (same flags as the `sca-server` binary).

use anyhow::Result;

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    cfg: sca_server::ServerConfig,
}

pub fn run(a: &ServeArgs) -> Result<()> {
    sca_server::run(a.cfg.clone())?;
    Ok(())
}
