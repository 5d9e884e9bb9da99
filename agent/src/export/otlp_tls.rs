//! OTLP over HTTPS: the collector's CA and a client certificate from the standard
//! `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`, `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY`
//! variables (the `TRACES_` one first), for gRPC (tonic) and HTTP (reqwest), with rustls on ring.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot read {variable}={path}: {source}")]
    Read {
        variable: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a client certificate needs both OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY (or their TRACES_ variants)"
    )]
    HalfIdentity,
    #[error("cannot use the OTLP TLS files: {0}")]
    Http(#[source] reqwest::Error),
}

/// The PEM files the environment names.
#[derive(Debug, Default)]
pub(crate) struct TlsFiles {
    ca: Option<Vec<u8>>,
    /// Client certificate and key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    pub(crate) fn from_env() -> Result<Self, TlsError> {
        let ca = read_variable("CERTIFICATE")?;
        let identity = match (
            read_variable("CLIENT_CERTIFICATE")?,
            read_variable("CLIENT_KEY")?,
        ) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            (None, None) => None,
            _ => return Err(TlsError::HalfIdentity),
        };
        Ok(Self { ca, identity })
    }

    /// tonic's TLS settings: the system's roots, the given CA, the client identity.
    pub(crate) fn grpc(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &self.ca {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((certificate, key)) = &self.identity {
            config = config.identity(Identity::from_pem(certificate, key));
        }
        config
    }

    /// A reqwest client with the given CA (alone) and client identity; None when neither is
    /// given, leaving the exporter's default client.
    pub(crate) fn http(&self) -> Result<Option<reqwest::Client>, TlsError> {
        if self.ca.is_none() && self.identity.is_none() {
            return Ok(None);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let certificates = reqwest::Certificate::from_pem_bundle(ca).map_err(TlsError::Http)?;
            builder = builder.tls_certs_only(certificates);
        }
        if let Some((certificate, key)) = &self.identity {
            let pem = [certificate.as_slice(), b"\n", key.as_slice()].concat();
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(TlsError::Http)?);
        }
        builder.build().map(Some).map_err(TlsError::Http)
    }
}

/// The file `OTEL_EXPORTER_OTLP_TRACES_<NAME>` or `OTEL_EXPORTER_OTLP_<NAME>` names, read only
/// when the user could read it (flowtap may hold capabilities they do not).
fn read_variable(name: &str) -> Result<Option<Vec<u8>>, TlsError> {
    let found = [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .into_iter()
    .find_map(|variable| {
        let value = std::env::var_os(&variable).filter(|value| !value.is_empty())?;
        Some((variable, PathBuf::from(value)))
    });
    let Some((variable, path)) = found else {
        return Ok(None);
    };
    let error = |source| TlsError::Read {
        variable: variable.clone(),
        path: path.clone(),
        source,
    };
    if Path::new(&path).exists() && !crate::invoker::may_read(&path) {
        return Err(error(std::io::ErrorKind::PermissionDenied.into()));
    }
    std::fs::read(&path).map(Some).map_err(error)
}
