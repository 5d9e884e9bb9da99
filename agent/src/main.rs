fn main() {
    // reqwest (OTLP/HTTP, the Kubernetes API) is built with rustls but no default crypto
    // provider: without one, building any of its clients panics.
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::process::exit(flowtap::cli::main());
}
