//! `gpuscribe-worker`: the process that owns a candle device and SenseVoice's weights.
//!
//! Started by the app's engine, one per device; reads JSON-line requests on stdin and writes
//! events on stdout (see `gpuscribe::engine::protocol` and `gpuscribe::worker`). It is the only executable that links the
//! CUDA libraries in a `cuda` build.

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            // The MP3 reader warns once per header it skips: thousands in a file made of
            // concatenated MP3s. Decoding problems reach the user as the job's warning.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,symphonia=error")),
        )
        .init();
    gpuscribe::worker::sensevoice::worker_main()
}
