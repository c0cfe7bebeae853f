//! `streamdit serve`: an HTTP server (axum on tokio) with a page that shows the stream live
//! and steers it with prompts, a WebSocket and an MJPEG transport, and JSON endpoints.
//!
//! Files: `api.rs` the routes and steering, `transport.rs` the WebSocket and MJPEG,
//! `session.rs` streams and viewers, `worker.rs` and `pacer.rs` a stream's two threads,
//! `limits.rs` what is accepted from the network, `page.html` and `page.js` the page.

mod api;
mod limits;
mod pacer;
mod session;
mod transport;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Args;
use streamdit::{BackendKind, DecoderKind, Error, Result};

use crate::common::ModelArgs;
use session::{Config, Hub};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (port 0: any free port, printed at start). Anything but a
    /// loopback address exposes the server to the network: use `--token` then.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Streams running at once, one per connection (default: 2 on the CPU, 1 on a GPU, where
    /// each stream holds its own backend).
    #[arg(long)]
    max_streams: Option<usize>,
    /// One stream that every viewer watches and anyone can steer.
    #[arg(long)]
    shared: bool,
    /// Require this token: `Authorization: Bearer TOKEN`, or `?token=TOKEN` on the page,
    /// the WebSocket and `/stream.mjpg`.
    #[arg(long)]
    token: Option<String>,
    /// Viewers (WebSocket and MJPEG connections) at once.
    #[arg(long, default_value_t = 16)]
    max_viewers: usize,
    /// The prompt of a stream whose connection names none.
    #[arg(long, default_value = "a red fox running through snow")]
    prompt: String,
    /// The negative prompt (used when guidance is not 1).
    #[arg(long)]
    negative_prompt: Option<String>,
    /// Noise seed of a stream whose connection names none (default: the profile's).
    #[arg(long)]
    seed: Option<u64>,
    /// Classifier-free guidance scale (default: the profile's; 1 disables CFG).
    #[arg(long)]
    guidance: Option<f32>,
    /// Show the cheap latent preview instead of decoding with the TAE decoder.
    #[arg(long)]
    preview: bool,
    /// JPEG quality, 1 to 100.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    jpeg_quality: u8,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    if args.max_streams == Some(0) || args.max_viewers == 0 {
        return Err(Error::Invalid(
            "--max-streams and --max-viewers: expected at least 1".into(),
        ));
    }
    if args.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
        return Err(Error::Invalid("--token: expected a non-empty token".into()));
    }
    let engine = Arc::new(args.model.engine()?);
    let guidance = args.guidance.unwrap_or(engine.profile().run.guidance);
    limits::check_guidance(guidance).map_err(|e| Error::Invalid(format!("--{}", e.message)))?;
    let kind = engine.backend_choice().0;
    let max_streams = args.max_streams.unwrap_or(match kind {
        BackendKind::Cuda => 1,
        _ => 2,
    });
    let gpu = match kind {
        BackendKind::Cuda => crate::telemetry::Telemetry::open(engine.cuda_device_uuid())
            .map_err(|e| eprintln!("streamdit: no GPU memory figure: {e}"))
            .ok(),
        _ => None,
    };
    let config = Config {
        max_streams,
        max_viewers: args.max_viewers,
        shared: args.shared,
        token: args.token,
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        seed: args.seed,
        guidance,
        decoder: if args.preview {
            DecoderKind::Preview
        } else {
            DecoderKind::Tae
        },
        jpeg_quality: args.jpeg_quality,
    };
    if !args.listen.ip().is_loopback() && config.token.is_none() {
        eprintln!(
            "streamdit: WARNING: listening on {} without --token: anyone who can reach it can \
             watch and steer, and use this machine's compute",
            args.listen
        );
    }
    let hub = Arc::new(Hub::new(engine, config, gpu));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("serve-io")
        .build()
        .map_err(|e| Error::Invalid(format!("starting the async runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Error::Invalid(format!("--listen {}: {e}", args.listen)))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("--listen {}: {e}", args.listen)))?;
        let token = match &hub.config.token {
            Some(_) => "?token=TOKEN",
            None => "",
        };
        let mode = if hub.config.shared {
            "one shared stream".to_string()
        } else {
            format!(
                "a stream per connection, at most {}",
                hub.config.max_streams
            )
        };
        eprintln!(
            "streamdit: serving http://{addr}/{token} (profile {}, {mode}, {} decoder)",
            hub.engine.profile().name,
            if args.preview { "preview" } else { "TAE" },
        );
        axum::serve(listener, api::router(hub))
            .await
            .map_err(|e| Error::Invalid(format!("serving on {addr}: {e}")))
    })
}
